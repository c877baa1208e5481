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
