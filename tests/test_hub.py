"""The Hub upload sends exactly the model files of a directory (never a checkpoint, pickle, log or stray file),
checked offline against a fake HfApi that applies upload_folder's own pattern filter."""

import json
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from train.publish import hub
from train.publish.hub import HubError, push_to_hub
from train.run_directory import model_files

MODEL = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
CARD = ["LICENSE", "README.md", "loss_curve.png", "run-f32.gguf"]
REMOTE_CODE = ["configuration_normgpt.py", "modeling_normgpt.py", "norms.py", "rmsnorm_triton.py"]
NOT_MODEL = [
    "metrics.jsonl",
    "summary.json",
    "run_config.yaml",
    "data_info.json",
    "export.json",
    "sample.txt",
    "notes.py",  # a stray script: not imported by the model code
    ".model.safetensors.tmp",
    "checkpoint-100/model.safetensors",
    "checkpoint-100/optimizer.bin",
    "checkpoint-100/random_states_0.pkl",
    "checkpoint-200/scheduler.bin",
    "tensorboard/events.out.tfevents.1",
]


def make_run(root: Path, remote_code: bool) -> Path:
    for name in MODEL + CARD + NOT_MODEL + (REMOTE_CODE if remote_code else []):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    config = {"model_type": "normgpt" if remote_code else "llama"}
    if remote_code:
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_normgpt.NormGPTForCausalLM"}
        (root / "modeling_normgpt.py").write_text("from .configuration_normgpt import X\nfrom .norms import Y\n")
        (root / "norms.py").write_text("from .rmsnorm_triton import Z\n")
        (root / "configuration_normgpt.py").write_text("from .norms import Y\n")
    (root / "config.json").write_text(json.dumps(config))
    return root


class FakeHfApi:
    """Records the calls and answers which files upload_folder would send, with the Hub client's own filter."""

    def __init__(self, fail: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, folder_path, allow_patterns, **kwargs):
        if self.fail is not None:
            raise self.fail
        root = Path(folder_path)
        everything = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        self.sent = list(filter_repo_objects(everything, allow_patterns=allow_patterns))
        self.calls.append(("upload_folder", {"folder_path": folder_path, **kwargs}))


@pytest.mark.parametrize("remote_code", [False, True], ids=["stock", "remote-code"])
def test_upload_sends_exactly_the_model_files(tmp_path, remote_code):
    run = make_run(tmp_path, remote_code)
    expected = sorted(MODEL + CARD + (REMOTE_CODE if remote_code else []))
    assert model_files(run) == expected
    api = FakeHfApi()
    url = push_to_hub(run, "me/normgpt-tiny", private=True, api=api)
    assert url == "https://huggingface.co/me/normgpt-tiny"
    assert sorted(api.sent) == expected
    assert not [name for name in api.sent if "checkpoint" in name or name.endswith((".pkl", ".bin", ".jsonl"))]
    (kind, create), (_, upload) = api.calls
    assert kind == "create_repo" and create == {
        "repo_id": "me/normgpt-tiny",
        "repo_type": "model",
        "private": True,
        "exist_ok": True,
    }
    assert upload["repo_id"] == "me/normgpt-tiny" and upload["folder_path"] == str(run)


def test_a_directory_without_a_model_is_refused_before_any_call(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "model.safetensors").write_text("x")
    api = FakeHfApi()
    with pytest.raises(HubError, match="holds no model to upload"):
        push_to_hub(tmp_path, "me/x", api=api)
    assert api.calls == []


def test_planted_remote_code_is_never_uploaded(tmp_path, capsys):
    """A model folder whose config.json names a planted module (it writes a file when imported): the upload and its
    dry run refuse it in one line, the Hub is never called, and the file never appears."""
    run = make_run(tmp_path, remote_code=True)
    config = json.loads((run / "config.json").read_text())
    config["auto_map"]["AutoConfig"] = "evil.C"
    (run / "config.json").write_text(json.dumps(config))
    marker = tmp_path.parent / f"{tmp_path.name}-PWNED"
    (run / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    assert "evil.py" not in model_files(run)
    api = FakeHfApi()
    with pytest.raises(HubError, match=r"names code normgpt did not write \(evil.py\); refusing to upload it"):
        push_to_hub(run, "me/x", api=api)
    assert hub.main([str(run), "--hub_model_id", "me/x", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.py" in err
    assert api.calls == [] and not marker.exists()


def test_a_failed_upload_is_one_line(tmp_path):
    run = make_run(tmp_path, remote_code=False)
    with pytest.raises(HubError, match="upload to 'me/x' failed: 401 Unauthorized: bad token") as err:
        push_to_hub(run, "me/x", api=FakeHfApi(fail=RuntimeError("401 Unauthorized:\n bad token")))
    assert "\n" not in str(err.value)


def test_the_command_lists_what_would_go_up(tmp_path, capsys):
    run = make_run(tmp_path, remote_code=False)
    assert hub.main([str(run), "--hub_model_id", "me/x", "--dry_run"]) == 0
    assert capsys.readouterr().out.split() == sorted(MODEL + CARD)
    assert hub.main([str(tmp_path / "nothing"), "--hub_model_id", "me/x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_bare_repo_name_resolves_to_the_users_namespace():
    class Api:
        def whoami(self):
            return {"name": "alice"}

    class Offline:
        def whoami(self):
            raise OSError("no connection\nto huggingface.co")

    assert hub.resolve_repo_id("normgpt-tiny", Api()) == "alice/normgpt-tiny"
    assert hub.resolve_repo_id("bob/normgpt-tiny", Offline()) == "bob/normgpt-tiny"  # no call needed
    with pytest.raises(HubError, match="cannot resolve 'x' to user/x: no connection to huggingface.co"):
        hub.resolve_repo_id("x", Offline())


def test_training_with_push_to_hub_uploads_the_model_and_no_checkpoint(tmp_path, monkeypatch):
    """--push_to_hub through the real trainer (in-process, the Hub faked): the card names the repo, and what goes
    up is the model directory's whitelist, never checkpoint-<step>/ or the run's bookkeeping."""
    import huggingface_hub
    from synthetic_corpus import write_corpus
    from trainer_runs import TINY

    from train.train import main

    api = FakeHfApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)
    out = tmp_path / "run"
    args = {**TINY, "max_steps": 6, "dataset": write_corpus(tmp_path / "corpus"), "cache_dir": tmp_path / "cache"}
    argv = [item for k, v in args.items() for item in (f"--{k}", str(v))]
    assert main([*argv, "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "me/tiny"]) == 0
    assert api.calls[0] == (
        "create_repo",
        {"repo_id": "me/tiny", "repo_type": "model", "private": None, "exist_ok": True},
    )
    assert (out / "checkpoint-6").is_dir() and not any(name.startswith("checkpoint") for name in api.sent)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "LICENSE"} <= set(api.sent)
    assert not {"metrics.jsonl", "summary.json", "run_config.yaml", ".normgpt.lock"} & set(api.sent)
    assert 'from_pretrained("me/tiny")' in (out / "README.md").read_text()
