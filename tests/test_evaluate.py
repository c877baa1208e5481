"""`normgpt evaluate` (train/evaluate.py): lm-evaluation-harness on a local text task, offline, gives the bits per
byte computed by hand from the model's own log-probabilities."""

import json
import math

import pytest
import torch
from tiny_models import save_with_tokenizer, trained_model

from train import evaluate

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (the `eval` extra)")

TEXTS = ["The kalo mit the sune. The lopo tari the ne!\n", "The big suta kamit with 3 lotas?\n"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from train.publish.export import export_model_dir

    root = tmp_path_factory.mktemp("eval")
    src = save_with_tokenizer(trained_model(steps=6), root / "src")
    export_model_dir(src, root / "model")
    return root / "model"


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
    for i, text in enumerate(TEXTS):
        (tmp_path / "held_out" / f"doc{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "held_out" / f"doc{i}.txt").write_text(text)
    output = tmp_path / "results.json"
    assert evaluate.main([str(model_dir), "--text", str(tmp_path / "held_out"), "--output", str(output)]) == 0
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
