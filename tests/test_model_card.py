"""The model card renders every field from a real run directory (a short trainer run), with Hub metadata; the export
command turns the run into a complete, publishable directory (model, card, LICENSE, loss curve, GGUF)."""

import json
from pathlib import Path

import pytest
import yaml
from synthetic_corpus import write_corpus
from tiny_models import save_with_tokenizer, trained_model
from trainer_runs import command, run

from train.atomic_io import read_json
from train.hardware import describe_hardware
from train.publish import command as export
from train.publish.export import export_model_dir, read_export_info
from train.publish.license import license_text
from train.publish.model_card import NOT_RECORDED, write_model_card
from train.run_directory import CARD_MARKER, load_run, model_files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    out = root / "run"
    run(command(write_corpus(root / "corpus"), root / "cache", out, logging_steps=4, sample_max_new_tokens=8))
    return out


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_renders_every_field_from_the_run(run_dir, tmp_path):
    target = run_dir
    if read_export_info(run_dir) is None:  # the run's root holds normgpt's own format: export it first
        target = tmp_path / "model"
        export_model_dir(run_dir, target)
    card_path = write_model_card(run_dir, target, model_id="me/normgpt-card")
    card = card_path.read_text()
    assert CARD_MARKER in card and NOT_RECORDED not in card, [
        line for line in card.splitlines() if NOT_RECORDED in line
    ]
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"
    assert {"normgpt", "rmsnorm", "pre-norm", "llama"} <= set(meta["tags"])
    assert "datasets" not in meta  # a local corpus is not a Hub dataset

    run = load_run(run_dir)
    summary, info = run.summary, read_json(run_dir / "data_info.json")
    # The card shows what the summary recorded, re-deriving nothing: tokens, tokens per step, hardware, the norm.
    assert summary.tokens == summary.steps * summary.tokens_per_step == run.train_rows()[-1]["tokens"]
    assert summary.model["norm_eps"] == 1e-6 and summary.hardware["cpu_cores"] >= 1
    for expected in (
        summary.model["norm_numerics"],  # norm, placement, eps, where float32 is used
        "RMSNorm (`norm_type=rms`)",
        "pre-norm, `h + f(norm(h))`",
        "| eps | 1e-06 |",
        f"{summary.steps} of {summary.max_steps}",
        f"{summary.final_val_loss:.4f}",
        f"{summary.best_val_loss:.4f}",
        f"{summary.init_val_loss:.4f}",
        f"| Training tokens | {summary.tokens / 1e3:.2f}K ({summary.tokens:,}) |",
        f"| Tokens per step | {summary.tokens_per_step:,} |",
        f"{summary.num_parameters:,}",
        f"| Hardware | {describe_hardware(summary.hardware)} |",
        info["fingerprint"],
        f"{info['train_tokens']:,}",
        "| `learning_rate` | 0.003 |",
        "| `block_size` | 32 |",
        "![Training and validation loss](loss_curve.png)",
        'AutoModelForCausalLM.from_pretrained("me/normgpt-card")',
        "LlamaForCausalLM (stock transformers class, no trust_remote_code)",
        "normgpt train --config run_config.yaml",
        (run_dir / "sample.txt").read_text().strip()[:40],
    ):
        assert expected in card, expected
    assert "trust_remote_code" not in card.split("## How to use")[1].split("```")[1]
    assert (target / "LICENSE").read_text() == license_text()
    assert license_text().lstrip().startswith("Apache License") and "Version 2.0, January 2004" in license_text()
    assert (target / "loss_curve.png").is_file()


def test_a_remote_code_model_gets_a_card_that_says_why(run_dir, tmp_path):
    src = save_with_tokenizer(trained_model(norm_type="dyt", steps=1), tmp_path / "src")
    export_model_dir(src, tmp_path / "model")
    card = write_model_card(run_dir, tmp_path / "model", model_id="me/dyt").read_text()
    assert "custom_code" in front_matter(card)["tags"] and "dyt" in front_matter(card)["tags"]
    assert 'from_pretrained("me/dyt", trust_remote_code=True)' in card
    assert "no stock export: norm_type=dyt: no stock class has a DyT layer (Dynamic Tanh)" in card
    assert "| eps | none (this norm has no eps) |" in card  # the registry says so: DyT has no eps


def test_a_card_written_by_someone_else_is_kept(run_dir, tmp_path):
    (tmp_path / "README.md").write_text("# my own card\n")
    (tmp_path / "LICENSE").write_text("MIT\n")
    assert write_model_card(run_dir, tmp_path) is None
    assert (tmp_path / "README.md").read_text() == "# my own card\n"
    assert (tmp_path / "LICENSE").read_text() == "MIT\n"


def test_the_export_command_writes_a_complete_model_directory(run_dir, tmp_path, capsys):
    out = tmp_path / "normgpt-tiny"
    assert export.main([str(run_dir), str(out), "--gguf", "f32,q8_0"]) == 0
    printed = capsys.readouterr().out
    assert "LlamaForCausalLM (stock transformers class" in printed and "normgpt-tiny-q8_0.gguf" in printed
    names = sorted(p.name for p in out.iterdir())
    for name in ("README.md", "LICENSE", "loss_curve.png", "config.json", "model.safetensors", "tokenizer.json"):
        assert name in names, name
    assert not [n for n in names if n.startswith("checkpoint") or n.endswith((".pkl", ".bin"))]
    info = json.loads((out / "export.json").read_text())
    assert [(g["file"], g["type"]) for g in info["gguf"]] == [
        ("normgpt-tiny-f32.gguf", "f32"),
        ("normgpt-tiny-q8_0.gguf", "q8_0"),
    ]
    assert set(model_files(out)) == set(names) - {"export.json"}
    card = (out / "README.md").read_text()
    assert "gguf" in front_matter(card)["tags"] and "llama-cli -m normgpt-tiny-q8_0.gguf" in card
    assert export.main([str(run_dir), str(out)]) == 2  # never over an existing directory


def test_a_legacy_run_still_exports_with_what_it_recorded(tmp_path, capsys):
    """tests/data/legacy_run, written before summaries held tokens, hardware or the norm's eps (and whose config.json
    still carries rms_impl), exports as the same verified Llama, with a card that shows its tokens (the run-directory
    module reads them from its metrics) and the eps the norm registry gives."""
    legacy = Path(__file__).parent / "data" / "legacy_run"
    out = tmp_path / "legacy"
    assert export.main([str(legacy), str(out)]) == 0
    assert "LlamaForCausalLM (stock transformers class" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    for expected in ("| Training tokens | 1.54K (1,536) |", "| Tokens per step | 128 |", "| eps | 1e-06 |"):
        assert expected in card, expected
    assert "rms_impl" not in json.loads((out / "config.json").read_text())
