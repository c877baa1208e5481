"""`normgpt evaluate` (train/evaluate.py): lm-evaluation-harness on a local text task, offline, gives the bits per
byte computed by hand from the model's own log-probabilities; code in a model folder never runs unless asked; every
bad input is one line and exit code 2 before a model loads or a download starts."""

import contextlib
import json
import logging
import math
import shutil

import pytest
import torch
from tiny_models import save_with_tokenizer, trained_model

from train import commands, evaluate

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (the `eval` extra)")

TEXTS = ["The kalo mit the sune. The lopo tari the ne!\n", "The big suta kamit with 3 lotas?\n"]


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """A normgpt save (remote-code format: model_type normgpt, auto_map and the modeling .py files)."""
    return save_with_tokenizer(trained_model(steps=6), tmp_path_factory.mktemp("eval") / "src")


@pytest.fixture(scope="module")
def model_dir(saved_dir):
    """Its verified stock export (LlamaForCausalLM)."""
    from train.publish.export import export_model_dir

    export_model_dir(saved_dir, saved_dir.parent / "model")
    return saved_dir.parent / "model"


def plant_remote_code(model_dir, tmp_path, model_type: str):
    """A copy of `model_dir` whose config.json names evil.py in its auto_map, a module that writes a file (the
    returned path) when it is imported."""
    planted = tmp_path / f"planted_{model_type}"
    shutil.copytree(model_dir, planted)
    config = json.loads((planted / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (planted / "config.json").write_text(json.dumps(config))
    ran = tmp_path / f"evil_ran_{model_type}"
    (planted / "evil.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    return planted, ran


@contextlib.contextmanager
def recorded(*loggers: str):
    """The messages the named loggers let through (their filters run before any handler) while the block runs."""
    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    try:
        yield messages
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)


def write_texts(tmp_path):
    for i, text in enumerate(TEXTS):
        (tmp_path / "held_out" / f"doc{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "held_out" / f"doc{i}.txt").write_text(text)
    return tmp_path / "held_out"


def bits_per_byte_by_hand(model_dir, texts: list[str]) -> float:
    """What lm-eval's rolling log-likelihood is for texts shorter than the context: each text scored after the
    end-of-text token, the log-likelihoods summed over texts, divided by their UTF-8 bytes, in bits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total = 0.0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) < model.config.max_position_embeddings  # one window
        inputs = torch.tensor([[tokenizer.eos_token_id, *ids[:-1]]])
        with torch.no_grad():
            logprobs = model(inputs).logits[0].double().log_softmax(-1)
        total += logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum().item()
    return -total / sum(len(t.encode()) for t in texts) / math.log(2)


def test_local_text_bits_per_byte_offline_match_the_model(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache: nothing could come from it
    output = tmp_path / "results.json"
    assert evaluate.main([str(model_dir), "--text", str(write_texts(tmp_path)), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"{evaluate.LOCAL_TASK}: " in printed and "bits_per_byte" in printed
    metrics = json.loads(output.read_text())["results"][evaluate.LOCAL_TASK]
    assert metrics["bits_per_byte,none"] == pytest.approx(bits_per_byte_by_hand(model_dir, TEXTS), rel=1e-5)
    assert metrics["byte_perplexity,none"] == pytest.approx(2 ** metrics["bits_per_byte,none"], rel=1e-6)


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path), "--text", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("x")
    assert evaluate.main([str(tmp_path), "--text", str(tmp_path / "a.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no model" in err


def test_remote_code_in_a_model_folder_never_runs_unless_asked(saved_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # transformers would copy the module there to run it
    # A model of a type transformers does not know, whose config names code: refused in one line, nothing imported.
    foreign, ran = plant_remote_code(saved_dir, tmp_path, "evilgpt")
    assert evaluate.main([str(foreign), "--text", str(write_texts(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.py" in err and "--trust_remote_code" in err
    assert not ran.exists()
    # A normgpt model whose auto_map was pointed at evil.py loads through the installed normgpt, and evaluates.
    normgpt_dir, ran = plant_remote_code(saved_dir, tmp_path, "normgpt")
    texts = write_texts(tmp_path)
    (texts / "long.txt").write_text(" ".join(TEXTS) * 8)  # longer than the 64-token context: lm-eval windows it
    with recorded("transformers.tokenization_utils_base", "lm_eval.api.task") as messages:
        assert evaluate.main([str(normgpt_dir), "--text", str(texts)]) == 0
    assert f"{evaluate.LOCAL_TASK}: " in capsys.readouterr().out
    assert not ran.exists()
    # Quiet: the metrics declare their aggregation (lm-eval warned twice per metric otherwise), and the long document
    # draws no "indexing errors" warning (hidden where evaluate calls lm-eval).
    assert not [m for m in messages if "aggregation is not" in m or "higher_is_better" in m or "indexing errors" in m]
    # --trust_remote_code is what lets lm-eval run a folder's code, and nothing else does.
    assert evaluate.model_arguments(foreign, "cpu", 1, trust_remote_code=True)["trust_remote_code"] is True
    assert evaluate.model_arguments(normgpt_dir, "cpu", 1)["trust_remote_code"] is False


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evaluate: error: "), err
    return err


def test_bad_devices_sizes_and_tasks_are_one_line_before_the_model_loads(model_dir, tmp_path, monkeypatch, capsys):
    import lm_eval.tasks

    text = ["--text", str(write_texts(tmp_path))]
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, on any machine
    assert evaluate.main([str(model_dir), *text, "--device", absent]) == 2
    assert f"--device {absent}:" in one_error_line(capsys)
    assert evaluate.main([str(model_dir), *text, "--device", "gpu7"]) == 2
    assert "is not a device" in one_error_line(capsys)
    for flag in ("--batch_size", "--limit"):  # argparse's refusals, through the front door that returns its code
        assert commands.main(["evaluate", str(model_dir), *text, flag, "0"]) == 2
        assert f"argument {flag}: 0 is not at least 1" in one_error_line(capsys)
    # Task names are checked against lm-eval's index (here one with a single task) before anything loads.
    index = tmp_path / "tasks"
    index.mkdir()
    (index / "hellaswag.yaml").write_text("task: hellaswag\ndataset_path: text\noutput_type: loglikelihood\n")
    real_manager = lm_eval.tasks.TaskManager
    monkeypatch.setattr(evaluate, "hub_problem", lambda: None)
    small_index = lambda **_: real_manager(include_path=str(index), include_defaults=False)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", small_index)
    assert evaluate.main([str(model_dir), "--tasks", "hellaswag,helaswag,arc_easy"]) == 2
    assert "unknown lm-eval task helaswag, arc_easy; did you mean hellaswag?" in one_error_line(capsys)


def test_tasks_offline_fail_in_one_line_without_retrying(model_dir, monkeypatch, capsys):
    """With the Hub unreachable (here: a closed local port), `--tasks` stops after one request, before lm-eval builds
    its task index or datasets retries the download for about a minute."""
    import huggingface_hub.constants
    import lm_eval.tasks

    for name in evaluate.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")

    def no_index(**_):
        raise AssertionError("the task index was built although the Hub cannot be reached")

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", no_index)
    assert evaluate.main([str(model_dir), "--tasks", "hellaswag"]) == 2
    assert "http://127.0.0.1:9 cannot be reached" in one_error_line(capsys)
