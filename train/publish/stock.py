"""Which stock transformers class computes what a normgpt model computes, and its config and state dict.

normgpt's parameter names are Llama's, so for every variant a stock architecture represents exactly, the export is a
rename of the state dict and a new config.json. The norm's registry entry (`NormSpec.stock` in model/norms.py) says
which stock layer computes it; with pre-norm placement (the only one stock classes have):

    stock layer of the norm     SwiGLU MLP (silu)          GELU MLP (gelu)
    rms                         LlamaForCausalLM           ArceeForCausalLM
    rms + qk_norm               Qwen3ForCausalLM           -
    layer                       StableLmForCausalLM (*)    Starcoder2ForCausalLM (*)
    layer, no parameters,       OlmoForCausalLM            Starcoder2ForCausalLM (*)
      eps=1e-5
    none                        -                          -

(*) the stock LayerNorm has a gain and a bias where a normgpt norm may have neither: they are stored as ones and
zeros, which computes the same value (x * 1 + 0 is exact). OLMo's non-parametric LayerNorm hard-codes eps=1e-5.

A norm the registry does not know, or one whose entry declares no stock layer, never becomes any of these: the export
keeps normgpt's remote-code format and says in one line why (`stock_target` returns the reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from model.configuration_normgpt import SIZE_FIELDS
from model.norms import NORMS, Norm, build_norm

OLMO_EPS = 1e-5  # OlmoLayerNorm's eps is a constant, not a config field


class ExportError(ValueError):
    """An export that cannot be written or failed its check; the message is one line."""


@dataclass(frozen=True)
class StockTarget:
    """A stock transformers class and how a normgpt config becomes its config and state dict."""

    architecture: str
    model_type: str
    eps_field: str | None  # the config field of the norm eps; None: the class hard-codes OLMO_EPS
    fixed: dict[str, Any] = field(default_factory=dict)  # fields that switch off what normgpt does not have
    renames: tuple[tuple[str, str], ...] = ()  # parameter-name parts that differ from normgpt's (Llama's) names
    head_dim: bool = True  # the config takes head_dim (the others derive hidden_size // num_attention_heads)
    rope_extra: dict[str, Any] = field(default_factory=dict)


LLAMA = StockTarget("LlamaForCausalLM", "llama", "rms_norm_eps", {"attention_bias": False, "mlp_bias": False})
ARCEE = StockTarget("ArceeForCausalLM", "arcee", "rms_norm_eps", {"attention_bias": False, "mlp_bias": False})
QWEN3 = StockTarget("Qwen3ForCausalLM", "qwen3", "rms_norm_eps", {"attention_bias": False, "use_sliding_window": False})
STABLELM = StockTarget(
    "StableLmForCausalLM",
    "stablelm",
    "layer_norm_eps",
    {"use_qkv_bias": False, "qk_layernorm": False, "use_parallel_residual": False},
    head_dim=False,
    rope_extra={"partial_rotary_factor": 1.0},  # its default, 0.25, rotates only a quarter of each head
)
STARCODER2 = StockTarget(
    "Starcoder2ForCausalLM",
    "starcoder2",
    "norm_epsilon",
    {"use_bias": False, "sliding_window": None},
    renames=((".mlp.up_proj.", ".mlp.c_fc."), (".mlp.down_proj.", ".mlp.c_proj.")),
    head_dim=False,
)
OLMO = StockTarget("OlmoForCausalLM", "olmo", None, {"attention_bias": False, "clip_qkv": None}, head_dim=False)
STOCK_TARGETS = (LLAMA, ARCEE, QWEN3, STABLELM, STARCODER2, OLMO)

NO_STOCK_PLACEMENT = {
    "post": "norm_placement=post (norm(h + f(h)), no final norm): no stock class normalizes the residual stream itself",
    "peri": "norm_placement=peri: only Gemma 2/3 have sandwich norms, and they store the gain as 1 + w, multiply it "
    "in float32 (normgpt: in the input dtype) and scale the embeddings by sqrt(hidden_size)",
}


def stock_target(config: Any) -> StockTarget | str:
    """The stock class that computes exactly what a NormGPTConfig computes, or the one-line reason there is none."""
    if config.norm_placement != "pre":
        return NO_STOCK_PLACEMENT.get(config.norm_placement, f"norm_placement={config.norm_placement}")
    spec = NORMS.get(config.norm_type)
    if spec is None:
        return f"norm_type={config.norm_type}: not a registered norm"
    if spec.stock is None:
        return f"norm_type={config.norm_type}: {spec.no_stock}"
    if getattr(config, "embedding_scale", False):  # Gemma's sqrt(hidden_size) is a constant, and Gemma differs more
        return "embedding_scale: no stock class multiplies its embeddings by a learnable scalar"
    swiglu = config.hidden_act == "silu"
    if config.qk_norm:
        if spec.stock == "rms" and swiglu:
            return QWEN3
        return (
            f"qk_norm with norm_type={config.norm_type} and hidden_act={config.hidden_act}: the one stock class with a "
            "per-head RMSNorm on queries and keys before RoPE (Qwen3) has RMSNorm blocks and a SwiGLU MLP"
        )
    if spec.stock == "rms":
        return LLAMA if swiglu else ARCEE
    if not swiglu:
        return STARCODER2
    parameterless = not any(True for _ in build_norm(config).parameters())
    return OLMO if parameterless and config.rms_norm_eps == OLMO_EPS else STABLELM


def rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE in the transformers `rope_parameters` format, from either config generation (`rope_theta` field)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return {"rope_type": "default", **params}
    return {"rope_type": "default", "rope_theta": float(config.rope_theta)}


def stock_config(config: Any, target: StockTarget):
    """The stock class's config for the same model: every size, id and eps carried over, everything else off."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {
        name: getattr(config, name)
        for name in (
            *SIZE_FIELDS,
            "hidden_act",
            "initializer_range",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
    }
    kwargs["rope_parameters"] = {**rope_parameters(config), **target.rope_extra}
    if target.eps_field is not None:
        kwargs[target.eps_field] = config.rms_norm_eps
    if target.head_dim:
        kwargs["head_dim"] = config.hidden_size // config.num_attention_heads
    return AutoConfig.for_model(target.model_type, **kwargs, **target.fixed)


def normgpt_state_dict(reference: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each norm's parameters as its stock layer stores them (`Norm.stock_state_dict`)."""
    state = dict(reference.state_dict())
    for name, module in reference.named_modules():
        if isinstance(module, Norm):
            for key in module.state_dict():
                state.pop(f"{name}.{key}")
            state |= {f"{name}.{key}": value for key, value in module.stock_state_dict().items()}
    return state


def stock_state_dict(reference: nn.Module, stock: nn.Module, target: StockTarget) -> tuple[dict, list[str]]:
    """normgpt's state dict under the stock class's names, and notes on what had to be added. A stock LayerNorm
    parameter that normgpt's norm does not have gets its identity value (gain 1, bias 0)."""
    state = {}
    for name, tensor in normgpt_state_dict(reference).items():
        for old, new in target.renames:
            name = name.replace(old, new)
        state[name] = tensor
    expected = stock.state_dict()
    filled: set[str] = set()
    for name in sorted(expected.keys() - state.keys()):
        module_name, _, kind = name.rpartition(".")
        if isinstance(stock.get_submodule(module_name), nn.LayerNorm) and kind in ("weight", "bias"):
            state[name] = (torch.ones_like if kind == "weight" else torch.zeros_like)(expected[name])
            filled.add(kind)
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [k for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        where = f"missing {missing[:3]}, unexpected {unexpected[:3]}, of another shape {wrong[:3]}"
        raise ExportError(f"the state dict does not map onto {target.architecture}: {where}")
    notes = [
        f"LayerNorm {'gains' if kind == 'weight' else 'biases'} stored as {'ones' if kind == 'weight' else 'zeros'} "
        f"(the trained norm has none; the value computed is the same)"
        for kind in sorted(filled, reverse=True)
    ]
    return state, notes
