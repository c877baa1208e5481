"""Stock-architecture export: each variant a stock class represents loads where normgpt is not installed, without
trust_remote_code, with the same logits and greedy tokens; every other variant says why and keeps remote code; a
failed check writes nothing."""

import json
import textwrap

import pytest
import torch
from tiny_models import fixed_ids, run_elsewhere, save_with_tokenizer, tiny_config, trained_model

from train.publish import command, stock
from train.publish.export import TOLERANCE, export_model_dir, read_export_info
from train.publish.stock import ExportError, stock_target

# (config overrides, the class the export must be, a note it must carry)
STOCK_VARIANTS = {
    "rms-swiglu": ({"norm_type": "rms"}, "LlamaForCausalLM", None),
    "rms-gelu": ({"norm_type": "rms", "hidden_act": "gelu"}, "ArceeForCausalLM", None),
    "rms-qknorm": ({"norm_type": "rms", "qk_norm": True}, "Qwen3ForCausalLM", None),
    "layer-swiglu": ({"norm_type": "layer"}, "StableLmForCausalLM", None),
    "layer-gelu": ({"norm_type": "layer", "hidden_act": "gelu"}, "Starcoder2ForCausalLM", None),
    "noaffine-olmo": ({"norm_type": "layer_noaffine", "rms_norm_eps": 1e-5}, "OlmoForCausalLM", None),
    "nobias-swiglu": ({"norm_type": "layer_nobias"}, "StableLmForCausalLM", "biases stored as zeros"),
    "noaffine-gelu": ({"norm_type": "layer_noaffine", "hidden_act": "gelu"}, "Starcoder2ForCausalLM", "gains"),
}

# Runs where the project cannot be imported (as on a machine with only transformers), for every export at once.
LOAD_ELSEWHERE = textwrap.dedent(
    """
    import builtins, importlib.abc, json, logging, sys, torch

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("model", "train"):
                raise ModuleNotFoundError(name)
    sys.meta_path.insert(0, Block())
    prompts, heard = [], []
    builtins.input = lambda question="": prompts.append(question) or "n"  # transformers' "run the custom code?"

    class Heard(logging.Handler):
        def emit(self, record):
            heard.append(record.getMessage())
    from transformers import AutoModelForCausalLM, AutoTokenizer
    logging.getLogger("transformers").addHandler(Heard(logging.WARNING))  # every transformers logger ends here

    results = []
    for job in json.loads(sys.stdin.read()):
        # The README's lines: no flag for a stock export, trust_remote_code=True on both for normgpt's remote code.
        flags = {"trust_remote_code": True} if job["remote"] else {}
        model = AutoModelForCausalLM.from_pretrained(job["dir"], **flags).eval()
        before = len(heard), len(prompts)
        tokenizer = AutoTokenizer.from_pretrained(job["dir"], **flags)
        said = heard[before[0]:] + prompts[before[1]:]
        ids = torch.tensor(job["ids"])
        with torch.no_grad():
            logits = model(ids).logits
        gen = model.generate(ids[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
        results.append({
            "class": type(model).__name__, "module": type(model).__module__, "logits": logits.tolist(),
            "gen": gen.tolist(), "padding_side": tokenizer.padding_side, "ids": tokenizer("The kalo")["input_ids"],
            "tokenizer_said": said,
        })
    print(json.dumps(results))
    """
)


def load_elsewhere(jobs: list[dict], tmp_path) -> list[dict]:
    return run_elsewhere(LOAD_ELSEWHERE, tmp_path, stdin=json.dumps(jobs))


def test_every_variant_loads_without_normgpt_with_the_same_logits_tokens_and_a_quiet_tokenizer(tmp_path):
    """Each stock export loads with no flag as its class; a remote-code export loads with trust_remote_code=True. The
    tokenizer loads with the README's line for each, with no prompt and no warning: its files name no code (the
    remote-code export's config.json does, which is why AutoTokenizer takes the same flag there)."""
    ids = fixed_ids()
    jobs, expected = [], {}
    variants = {**STOCK_VARIANTS, "post-remote-code": ({"norm_placement": "post"}, "NormGPTForCausalLM", None)}
    for i, (name, (overrides, architecture, note)) in enumerate(variants.items()):
        model = trained_model(seed=i, **overrides)
        result = export_model_dir(save_with_tokenizer(model, tmp_path / f"{name}-src"), tmp_path / name)
        remote = result.format == "remote_code"
        assert (result.format, result.architecture) == ("remote_code" if remote else "stock", architecture), name
        assert remote == (name == "post-remote-code"), name
        assert result.verification["max_abs_logit_diff"] <= TOLERANCE and result.verification["greedy_identical"]
        assert note is None or any(note in n for n in result.notes), (name, result.notes)
        written = sorted(p.name for p in (tmp_path / name).iterdir())
        assert remote or not [n for n in written if n.endswith(".py")], written  # a stock export carries no code
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert ("auto_map" in config) == remote and config["architectures"] == [architecture]
        tokenizer_config = json.loads((tmp_path / name / "tokenizer_config.json").read_text())
        assert not {"is_local", "local_files_only", "auto_map"} & tokenizer_config.keys()
        with torch.no_grad():
            logits = model(ids).logits
        gen = model.generate(ids[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
        expected[name] = (architecture, logits, gen.tolist())
        jobs.append({"dir": str(tmp_path / name), "ids": ids.tolist(), "remote": remote})

    for name, got in zip(expected, load_elsewhere(jobs, tmp_path), strict=True):
        architecture, logits, gen = expected[name]
        home = "transformers_modules" if name == "post-remote-code" else "transformers.models."
        assert got["class"] == architecture and got["module"].startswith(home), (name, got["module"])
        diff = (torch.tensor(got["logits"]) - logits).abs().max().item()
        assert diff <= TOLERANCE, (name, diff)
        assert got["gen"] == gen, name
        assert got["padding_side"] == "left" and got["ids"], name
        assert got["tokenizer_said"] == [], (name, got["tokenizer_said"])


@pytest.mark.parametrize(
    "overrides, feature",
    [
        ({"norm_placement": "post"}, "norm_placement=post"),
        ({"norm_placement": "peri"}, "norm_placement=peri"),
        ({"norm_type": "prms"}, "norm_type=prms"),
        ({"norm_type": "dyt"}, "norm_type=dyt"),
        ({"norm_type": "dyt", "dyt_bias": False, "embedding_scale": True}, "norm_type=dyt"),
        ({"embedding_scale": True}, "embedding_scale: no stock class"),
        ({"norm_type": "none"}, "norm_type=none"),
        ({"norm_type": "layer", "qk_norm": True}, "qk_norm with norm_type=layer"),
        ({"norm_type": "rms", "qk_norm": True, "hidden_act": "gelu"}, "qk_norm with norm_type=rms and hidden_act=gelu"),
        ({"norm_type": "layer", "norm_placement": "post"}, "norm_placement=post"),
    ],
)
def test_variants_without_a_stock_class_name_the_feature_in_one_line(overrides, feature):
    reason = stock_target(tiny_config(**overrides))
    assert isinstance(reason, str) and reason.startswith(feature) and "\n" not in reason


def test_no_stock_class_keeps_remote_code_and_records_why(tmp_path):
    model = trained_model(norm_type="dyt", steps=2)
    result = export_model_dir(save_with_tokenizer(model, tmp_path / "src"), tmp_path / "out")
    assert result.format == "remote_code" and result.reason.startswith("norm_type=dyt")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_normgpt.NormGPTForCausalLM"
    assert (tmp_path / "out" / "modeling_normgpt.py").is_file() and (tmp_path / "out" / "norms.py").is_file()
    recorded = read_export_info(tmp_path / "out")
    assert recorded.reason == result.reason and recorded.source["norm_type"] == "dyt"
    assert "trust_remote_code=True" in recorded.describe() and result.reason in recorded.describe()


def test_a_failed_check_writes_nothing_and_the_command_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    src = save_with_tokenizer(trained_model(steps=2), tmp_path / "src")
    real = stock.stock_state_dict

    def corrupted(reference, stock, target):  # a mapping bug: one weight off by a little
        state, notes = real(reference, stock, target)
        state = dict(state)
        state["model.norm.weight"] = state["model.norm.weight"] + 1e-2
        return state, notes

    monkeypatch.setattr(stock, "stock_state_dict", corrupted)
    with pytest.raises(ExportError, match="LlamaForCausalLM export failed its check: max |logit difference|"):
        export_model_dir(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no staging left behind

    capsys.readouterr()
    assert command.main([str(src), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed its check" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_an_occupied_destination_is_refused_and_left_alone(tmp_path):
    src = save_with_tokenizer(trained_model(steps=1), tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export_model_dir(src, tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ExportError, match="holds no model"):
        export_model_dir(tmp_path / "out", tmp_path / "elsewhere")
    (tmp_path / "out" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ExportError, match="is not a normgpt model"):
        export_model_dir(tmp_path / "out", tmp_path / "elsewhere")


def test_the_command_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    assert command.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "holds no model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        command.main([str(tmp_path), str(tmp_path / "out"), "--gguf", "q4_k"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown type 'q4_k'; valid: f32, f16, q8_0" in err


# ---------------------------------------------------------------------------------------------------------------------
# The export command: where it writes, what it copies, what it claims


@pytest.fixture(scope="module")
def stock_root(tmp_path_factory):
    """A directory whose root is a verified stock export with its export.json, as a finished run's root is."""
    tmp = tmp_path_factory.mktemp("stock_root")
    root = tmp / "root"
    export_model_dir(save_with_tokenizer(trained_model(steps=1), tmp / "src"), root)
    return root


def export_line(capsys, argv: list[str], code: int) -> str:
    """The command's first line of output (its only one, on stderr, for a refusal), with exit code `code`."""
    capsys.readouterr()
    assert command.main(argv) == code
    captured = capsys.readouterr()
    lines = (captured.err if code else captured.out).strip().splitlines()
    assert code == 0 or len(lines) == 1, captured.err
    return lines[0]


def test_a_destination_that_cannot_be_made_is_one_line(stock_root, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    line = export_line(capsys, [str(stock_root), str(tmp_path / "file" / "out")], 2)
    out, parent = tmp_path / "file" / "out", tmp_path / "file"
    assert line == f"export: error: out_dir '{out}' cannot be created: '{parent}' is not a directory"
    assert (tmp_path / "file").read_text() == "mine"


def test_copying_a_stock_export_says_whose_check_it_carries(stock_root, tmp_path, capsys):
    """The copy checks nothing, so it must not print "verified" as if it had."""
    line = export_line(capsys, [str(stock_root), str(tmp_path / "out")], 0)
    assert line == (
        f"export: {tmp_path / 'out'}: LlamaForCausalLM (stock transformers class, no trust_remote_code); copied from "
        f"'{stock_root}', whose export.json says verified when written (not checked again)"
    )
    assert read_export_info(tmp_path / "out").copied_from == str(stock_root)


def test_planted_remote_code_is_never_copied_run_or_called_stock(stock_root, tmp_path, capsys):
    """A folder that claims to be a stock export but names a planted module in config.json's auto_map: the module
    writes a file when imported, and the file never appears."""
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(stock_root, hostile)
    config = json.loads((hostile / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M"}
    (hostile / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "PWNED"
    (hostile / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nC = M = None\n")
    line = export_line(capsys, [str(hostile), str(tmp_path / "out")], 2)
    assert line == (
        f"export: error: '{hostile}/config.json' names remote code (auto_map) although '{hostile}' holds no normgpt "
        "model; refusing to copy it as a stock model"
    )
    assert not (tmp_path / "out").exists() and not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile"]  # no staging left either


def test_a_gguf_that_cannot_be_written_is_refused_before_the_export(tmp_path, capsys, monkeypatch):
    src = save_with_tokenizer(trained_model(steps=1, norm_placement="post"), tmp_path / "post")
    monkeypatch.setattr(command, "export_model_dir", lambda *a, **k: pytest.fail("the export ran"))
    line = export_line(capsys, [str(src), str(tmp_path / "out"), "--gguf", "f32"], 2)
    assert line.startswith(
        f"export: error: no GGUF for '{src}': a remote-code model has no llama.cpp architecture (no stock class "
        "computes it): norm_placement=post"
    )
    assert ".tmp" not in line and sorted(p.name for p in tmp_path.iterdir()) == ["post"]


def test_two_exports_into_one_new_directory_the_second_to_finish_is_one_line(stock_root, tmp_path, capsys, monkeypatch):
    """The other export publishes while this one runs: this one's rename finds the directory taken."""
    out = tmp_path / "out"
    real = command.write_gguf

    def meanwhile(*args, **kwargs):
        out.mkdir()
        (out / "config.json").write_text("the other export's")
        return real(*args, **kwargs)

    monkeypatch.setattr(command, "write_gguf", meanwhile)
    line = export_line(capsys, [str(stock_root), str(out), "--gguf", "f32"], 2)
    assert line == f"export: error: '{out}' was written by another export meanwhile; nothing written here"
    assert [p.name for p in out.iterdir()] == ["config.json"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_what_a_killed_export_left_is_removed_by_the_next_and_a_live_ones_is_not(stock_root, tmp_path, capsys):
    from filelock import FileLock

    from train.atomic_io import STAGING_LOCK

    stale, live, mine = (tmp_path / f".out.{name}.tmp" for name in ("k1ll3d00", "l1v3w1p0", "notes"))
    for staging in (stale, live):
        (staging / "model").mkdir(parents=True)
        (staging / "model" / "out-q8_0.gguf").write_bytes(b"GGUF half written")
        (staging / STAGING_LOCK).touch()
    mine.mkdir()  # a user's folder that merely looks like one: no staging lock in it
    held = FileLock(str(live / STAGING_LOCK))
    held.acquire()
    try:
        export_line(capsys, [str(stock_root), str(tmp_path / "out")], 0)
    finally:
        held.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, mine.name, "out"]
