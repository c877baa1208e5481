"""A norm registered at runtime is a first-class citizen: a script that calls `register_norm` before the trainer gets
a `--norm` choice, a valid config, a trained run that finishes `completed`, a card, and the export its registry entry
declares: remote code with "no stock export" when it declares no stock layer, a verified stock class when it declares
one (both trained through the trainer's in-process entry point), and never a LayerNorm (or a failed run) when its
declaration does not fit.

The toy is ScaleNorm: RMSNorm with one gain shared by every feature (a weight of shape [1]), so it computes what
Llama's RMSNorm computes once that gain is spread over the features (`stock_state_dict`)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from tiny_models import save_with_tokenizer, tiny_config
from torch import nn
from trainer_runs import TINY

from model import NORMS, NormGPTForCausalLM, NormSpec, register_norm
from model.norms import Norm
from train.config import parse_args
from train.publish.export import export_model_dir, read_export_info
from train.run_directory import Summary


class ScaleNorm(Norm):
    numerics = "RMS in float32, normalized value cast back to the input dtype, times one gain shared by all features"

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.hidden_size, self.eps = hidden_size, eps
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def stock_state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.detach().expand(self.hidden_size).clone()}


class UnmappedScaleNorm(ScaleNorm):
    """Declares a stock RMSNorm but keeps its [1]-shaped gain: the export cannot map it (the bug the issue found)."""

    def stock_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict()


def build(cls):
    return lambda config: cls(config.hidden_size, config.rms_norm_eps)


TOYS = {
    "scale": NormSpec(build(ScaleNorm), "ScaleNorm", "scalenorm"),
    "scale_rms": NormSpec(build(ScaleNorm), "ScaleNorm (exported as RMSNorm)", "scalenorm", stock="rms"),
    "scale_unmapped": NormSpec(build(UnmappedScaleNorm), "ScaleNorm (unmapped)", "scalenorm", stock="rms"),
}


@pytest.fixture(scope="module")
def toys():
    for name, spec in TOYS.items():
        register_norm(name, spec)
    yield
    for name in TOYS:
        NORMS.pop(name)


def train_in_process(norm: str, out, corpus, cache) -> Summary:
    """Three steps through the trainer's own entry point, in this process (where the toy norms are registered)."""
    from train.train import main

    args = {**TINY, "max_steps": 3, "eval_steps": 0, "save_steps": 0, "dataset": corpus, "cache_dir": cache}
    argv = [item for k, v in args.items() for item in (f"--{k}", str(v))]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv, "--norm", norm, "--output_dir", str(out)]) == 0
    return Summary.read(out)


def test_registration_is_checked():
    with pytest.raises(ValueError, match="norm_type 'rms' is already registered"):
        register_norm("rms", TOYS["scale"])
    with pytest.raises(ValueError, match="unknown stock layer 'batch' for norm_type 'x'; valid: rms, layer"):
        register_norm("x", TOYS["scale"]._replace(stock="batch"))
    assert "x" not in NORMS


def test_the_cli_and_the_config_read_the_registry_when_used(toys):
    assert parse_args(["--norm", "scale"]).model_config().norm_type == "scale"
    NORMS.pop("scale")
    try:
        with pytest.raises(ValueError, match="invalid choice: 'scale'"):
            parse_args(["--norm", "scale"])
    finally:
        register_norm("scale", TOYS["scale"])


def test_a_norm_without_a_stock_layer_trains_and_keeps_remote_code(toys, corpus, tmp_path):
    summary = train_in_process("scale", tmp_path / "run", corpus, tmp_path / "cache")
    assert summary.status.value == "completed" and summary.steps == 3
    assert summary.export["format"] == "remote_code" and summary.export["verified"]
    assert summary.export["note"].startswith("no stock export: norm_type=scale: its registry entry declares no")
    assert summary.model["norm_eps"] == 1e-6 and "one gain shared by all features" in summary.model["norm_numerics"]
    export = read_export_info(tmp_path / "run")
    assert any("registered at runtime" in note for note in export.notes)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "ScaleNorm (`norm_type=scale`)" in card and "- scalenorm" in card


def test_a_norm_that_declares_a_stock_layer_trains_and_exports_as_it(toys, corpus, tmp_path):
    summary = train_in_process("scale_rms", tmp_path / "run", corpus, tmp_path / "cache")
    assert summary.status.value == "completed"
    assert summary.export == {"format": "stock", "architecture": "LlamaForCausalLM", "verified": True, "note": None}
    from transformers import AutoModelForCausalLM

    llama = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert type(llama).__name__ == "LlamaForCausalLM"
    gain = llama.model.layers[0].input_layernorm.weight  # the trained scalar gain, spread over the features
    assert gain.shape == (TINY["hidden_size"],) and torch.equal(gain, gain[:1].expand_as(gain)) and gain[0] != 1


def test_a_declaration_that_does_not_fit_is_an_export_error_and_keeps_remote_code(toys, tmp_path):
    """Where the gain does not map onto the stock layer, the stock export fails with an ExportError (not a
    RuntimeError from load_state_dict), and the final-model step keeps verified remote code, saying why."""
    torch.manual_seed(0)
    model = NormGPTForCausalLM(tiny_config(norm_type="scale_unmapped")).eval()
    src = save_with_tokenizer(model, tmp_path / "src")
    result = export_model_dir(src, tmp_path / "out", fallback=True)
    assert result.format == "remote_code" and result.verified
    assert result.note.startswith("no stock export: the state dict does not map onto LlamaForCausalLM")
    assert "of another shape ['model.layers.0.input_layernorm.weight'" in result.note
