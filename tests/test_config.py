"""Run configuration: precedence CLI > YAML > defaults, and one clear line for every bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.config import DEFAULT_CONFIG, REPO_ROOT, ConfigError, parse_args, save_run_config
from train.train import main


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_preset_is_tiny_and_cli_wins_over_yaml(tmp_path):
    run = parse_args([])
    assert run.config_file == str(DEFAULT_CONFIG)
    tiny = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert run.model.hidden_size == tiny["model"]["hidden_size"]
    assert run.training.max_steps == tiny["training"]["max_steps"]

    preset = write_yaml(
        tmp_path / "p.yaml",
        {"model": {"hidden_size": 96, "num_attention_heads": 4}, "training": {"learning_rate": "1e-3", "seed": 3}},
    )
    run = parse_args(["--config", str(preset), "--learning_rate", "5e-4", "--norm", "layer"])
    assert run.model.hidden_size == 96  # from YAML
    assert run.training.seed == 3  # from YAML
    assert run.training.learning_rate == 5e-4  # CLI beats YAML
    assert run.model.norm_type == "layer"  # --norm is the alias of --norm_type
    assert run.training.max_steps == 300  # dataclass default, neither in YAML nor CLI
    assert run.model.num_hidden_layers is None  # unset: the model config's own default applies
    assert run.model_config().num_hidden_layers == 12


def test_resolved_config_round_trips(tmp_path):
    run = parse_args(["--norm", "layer", "--max_steps", "17", "--block_size", "64"])
    save_run_config(run, tmp_path / "run_config.yaml")
    again = parse_args(["--config", str(tmp_path / "run_config.yaml")])
    assert again.to_yaml_dict() == run.to_yaml_dict()


def test_bool_flags():
    run = parse_args(["--torch_compile", "--tie_word_embeddings", "false"])
    assert run.training.torch_compile is True
    assert run.model.tie_word_embeddings is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--norm", "batch"], "--norm: invalid choice: 'batch' (choose from 'rms', 'layer', 'layer_nobias',"),
        (["--not_a_flag", "3"], "unrecognized arguments: --not_a_flag 3"),
        (["--learning_rate", "-1"], "learning_rate must be > 0, got -1.0"),
        (["--learning_rate", "fast"], "--learning-rate: invalid float value: 'fast'"),
        (["--max_steps", "0"], "max_steps must be > 0"),
        (["--hidden_size", "100", "--num_attention_heads", "3"], "num_attention_heads (3) must divide hidden_size"),
        (["--report_to", "mlflow"], "invalid choice: 'mlflow'"),
        (["--config", "configs/nope.yaml"], "config file 'configs/nope.yaml' does not exist; presets in configs/"),
        (["--learn", "0.1"], "unrecognized arguments: --learn 0.1"),  # no silent prefix matching
        (["--config", "configs"], "config file 'configs' is a directory; pass a YAML file; presets in configs/"),
    ],
)
def test_bad_flags_are_one_clear_line(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("model: [unclosed", "is not valid YAML at line 1"),
        ("- a\n- b\n", "must be a mapping with keys model, data, training"),
        ("optim:\n  lr: 1\n", "unknown section 'optim'; valid: model, data, training"),
        ("training:\n  lr: 1\n", "unknown key 'lr' in section 'training'; valid: output_dir,"),
        ("model:\n  hidden_size: 12.5\n", "model.hidden_size must be int, got 12.5"),
        ("model:\n  norm_type: batch\n", "unknown norm_type 'batch'; valid: rms, layer"),
        ("training:\n  learning_rate: -0.1\n", "learning_rate must be > 0"),
        ("model: 5\n", "section 'model' must be a mapping of field: value"),
        # A "billion laughs": ten lines of nested aliases expand to 10^9 strings; refused before anything expands.
        (
            "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
            + "".join(f"{x}: &{x} [{', '.join([f'*{y}'] * 10)}]\n" for y, x in zip("abcdefgh", "bcdefghi", strict=True))
            + "training:\n  seed: *i\n",
            "uses a YAML alias (*a) at line 2; anchors and aliases are not read",
        ),
        ("training:\n  seed: " + "[" * 50_000 + "]" * 50_000 + "\n", "is nested too deeply to read"),
        # A value of the wrong type is quoted cut short, however long it is.
        ("training:\n  seed: [" + "1234567, " * 100_000 + "1]\n", "training.seed must be int, got [1234567, 1234567"),
    ],
)
def test_bad_config_files_are_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        parse_args(["--config", str(path)])
    assert message in str(err.value)
    assert len(str(err.value)) < 2000 and "\n" not in str(err.value)  # the long value is 900 kB


def test_a_replayed_run_config_never_aims_at_the_run_it_records(tmp_path):
    """run_config.yaml records where its run went (a resumed, overwritten, uploaded run's, here); `--config` takes
    none of it: replaying it trains a new run in a new directory, and the command line still says where."""
    recorded = parse_args(["--norm", "layer", "--max_steps", "17", "--seed", "3"]).to_yaml_dict()
    where = {
        "output_dir": str(tmp_path / "run"),
        "overwrite_output_dir": True,
        "resume_from_checkpoint": "latest",
        "push_to_hub": True,
        "hub_model_id": "me/run",
    }
    recorded["training"] |= where
    write_yaml(tmp_path / "run_config.yaml", recorded)
    again = parse_args(["--config", str(tmp_path / "run_config.yaml"), "--seed", "5"])
    assert sorted(again.not_replayed) == sorted(where)
    training = again.training
    assert (training.output_dir, training.overwrite_output_dir, training.resume_from_checkpoint) == (None, False, None)
    assert (training.push_to_hub, training.hub_model_id) == (False, None)
    assert (again.model.norm_type, training.max_steps, training.seed) == ("layer", 17, 5)  # everything else replays
    flagged = parse_args(["--config", str(tmp_path / "run_config.yaml"), "--output_dir", str(tmp_path / "new")])
    assert flagged.training.output_dir == str(tmp_path / "new")


def test_block_size_beyond_positions_fails_before_any_data_work(capsys, tmp_path):
    argv = ["--block_size", "256", "--max_position_embeddings", "128", "--dataset", str(tmp_path / "never-read")]
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "train.py: error: block_size (256) exceeds max_position_embeddings (128)"


def test_bad_dataset_with_overwrite_leaves_the_old_run_and_creates_nothing(capsys, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    missing = tmp_path / "missing.txt"
    assert main(["--dataset", str(missing), "--output_dir", str(old), "--overwrite_output_dir"]) == 2
    assert (old / "metrics.jsonl").read_text() == '{"step": 1, "loss": 3.0}\n'
    assert main(["--dataset", str(missing), "--output_dir", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
    assert capsys.readouterr().err.count("train.py: error: dataset path") == 2


def test_main_reports_one_line_and_exit_code_2(capsys):
    assert main(["--norm", "batch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: argument --norm_type/--norm-type/--norm: invalid choice: 'batch'")
    assert len(err.splitlines()) == 1


def test_cli_bad_input_has_no_traceback_and_touches_nothing(tmp_path):
    """Through the real entry point: a bad flag exits 2 with one line, and an existing run is left as it was."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    for argv in (["--output_dir", str(out)],):  # the other bad inputs are checked in-process above
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "train" / "train.py"), *argv],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("train.py: error:"), proc.stderr
    assert "already holds a run" in lines[0]
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before


def test_the_speed_options_are_flags_with_their_choices(capsys):
    """--loss_impl (a runtime option of the model section, like --rms_impl: never in config.json, never compared on
    resume) and --torch_compile_mode, which implies --torch_compile; a bad value is one line naming the choices."""
    run = parse_args(["--loss_impl", "full", "--torch_compile_mode", "reduce-overhead"])
    assert run.model.loss_impl == "full" and "loss_impl" not in run.model.config_kwargs()
    assert run.training.torch_compile and run.training.torch_compile_mode == "reduce-overhead"
    default = parse_args([])
    assert default.model.loss_impl == "chunked" and not default.training.torch_compile
    for flag, value, choices in (
        ("--loss_impl", "fused", "'full', 'chunked'"),
        ("--torch_compile_mode", "fast", "'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'"),
    ):
        assert main([flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("train.py: error: argument") and f"invalid choice: '{value}'" in err and choices in err
        assert len(err.splitlines()) == 1
