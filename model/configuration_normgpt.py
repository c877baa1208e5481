"""Configuration of a NormGPT model: a decoder-only pre-norm transformer with a pluggable norm layer.

Field names follow Hugging Face conventions (`hidden_size`, `rms_norm_eps`, ...) so that tools which read Llama-style
configs understand ours. This file is copied next to every saved checkpoint (remote code), so it imports only its
same-directory siblings from this project.
"""

import math

from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .norms import NORMS

NORM_PLACEMENTS = ("pre", "post", "peri")
HIDDEN_ACTS = ("silu", "gelu")  # silu -> SwiGLU MLP, gelu -> plain GELU MLP
ROPE_TYPES = ("default", *ROPE_INIT_FUNCTIONS)
# The model's sizes: positive integers, and what a stock architecture's config takes over unchanged.
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)


class NormGPTConfig(PreTrainedConfig):
    r"""
    Args:
        vocab_size: size of the token vocabulary (rows of the tied embedding / output matrix).
        hidden_size: width of the residual stream.
        intermediate_size: width of the MLP's hidden layer. `None` picks 4 * hidden_size for `gelu`, and for `silu`
            (SwiGLU, which has three matrices instead of two) 8/3 * hidden_size rounded up to a multiple of 64, so
            both MLPs cost the same parameters and FLOPs.
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: query heads; must divide `hidden_size`.
        num_key_value_heads: key/value heads for grouped-query attention; must divide `num_attention_heads`.
            `None` means multi-head attention (as many KV heads as query heads).
        max_position_embeddings: longest sequence the model is trained for (RoPE itself has no hard limit).
        rope_parameters: the rotary position embedding, as every transformers 5 model describes it: `rope_theta`
            (the base of the frequencies, default 10000) and `rope_type` (`default`, or a scaling for longer
            contexts: `linear`, `dynamic`, `yarn`, `llama3`, `longrope`, ... with their own keys, such as `factor`).
            A top-level `rope_theta`, as configs written before transformers 5 carry, is moved into it.
        hidden_act: `silu` (SwiGLU MLP) or `gelu` (GELU MLP).
        norm_type: the normalization layer, by its name in the norm registry (norms.py, read when the config is
            checked, so a norm registered at runtime with `register_norm` is valid): `rms` (RMSNorm), `layer`
            (LayerNorm with gain and bias), `layer_nobias` (LayerNorm with gain only), `layer_noaffine` (LayerNorm
            without learnable parameters, as in OLMo 1), `prms` (partial RMSNorm: the RMS of the first
            `prms_fraction` of the features), `dyt` (Dynamic Tanh, `weight * tanh(alpha * x) + bias` with a learnable
            scalar alpha; see the `dyt_*` fields) or `none` (identity: the negative control).
        norm_placement: where the norms sit in a block: `pre` (`h + f(norm(h))`, GPT-2/Llama), `post`
            (`norm(h + f(h))`, the original Transformer) or `peri` (`h + norm(f(norm(h)))`, Gemma 2 / Peri-LN).
        qk_norm: RMSNorm over each head's queries and keys before RoPE (OLMo 2, Wortsman et al. 2023).
        z_loss: coefficient of the auxiliary loss `z_loss * mean(logsumexp(logits)^2)` (PaLM); 0 disables it.
        prms_fraction: share of the features whose RMS `prms` uses (Zhang & Sennrich 2019 found 6.25% enough).
        dyt_alpha_init: initial value of DyT's alpha in every DyT layer but the one before attention (Zhu et al. 2025
            use 0.5 by default; for LLMs they tune it per position and shrink it with the width).
        dyt_attention_alpha_init: initial alpha of the DyT layer whose output the attention reads (pre- and
            peri-norm's `input_layernorm`). `None`: `dyt_alpha_init`. Zhu et al.'s LLaMA recipe starts it 4x higher
            than the others (0.8 and 0.2 at width 4096; post-norm has no norm before attention).
        dyt_bias: whether DyT has its per-feature bias (`+ bias`); Zhu et al.'s LLaMA code has none.
        embedding_scale: multiply the embedding output by a learnable scalar before the first block (Zhu et al.'s
            LLaMA recipe for DyT, which has no norm to rescale embeddings of std `initializer_range`).
        embedding_scale_init: initial value of that scalar. `None`: sqrt(hidden_size), as Zhu et al. use.
        rms_norm_eps: epsilon of every norm layer, whatever `norm_type` is (the HF name is kept for compatibility).
        tie_word_embeddings: share the input embedding with the output projection.
        initializer_range: standard deviation of the normal init of every matrix; the residual output projections
            are further scaled by 1/sqrt(2 * num_hidden_layers) (GPT-2).
    """

    model_type = "normgpt"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 50304
    hidden_size: int = 768
    intermediate_size: int | None = None
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 1024
    rope_parameters: dict | None = None
    hidden_act: str = "silu"
    norm_type: str = "rms"
    norm_placement: str = "pre"
    qk_norm: bool = False
    z_loss: float = 0.0
    prms_fraction: float = 0.0625
    dyt_alpha_init: float = 0.5
    dyt_attention_alpha_init: float | None = None
    dyt_bias: bool = True
    embedding_scale: bool = False
    embedding_scale_init: float | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        # Configs written by earlier versions carry the RMSNorm kernel choice, which is a runtime option of the
        # machine (`NormGPTPreTrainedModel.set_rms_impl`), never part of the model: it is dropped, not kept.
        kwargs.pop("rms_impl", None)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            if self.hidden_act == "silu":
                self.intermediate_size = 64 * -(-(8 * self.hidden_size // 3) // 64)  # ceil to a multiple of 64
            else:
                self.intermediate_size = 4 * self.hidden_size
        # Resolved here, so that config.json and run_config.yaml hold the value a model was built with.
        if self.dyt_attention_alpha_init is None:
            self.dyt_attention_alpha_init = self.dyt_alpha_init
        if self.embedding_scale_init is None and isinstance(self.hidden_size, int) and self.hidden_size > 0:
            self.embedding_scale_init = math.sqrt(self.hidden_size)
        # The library moves a legacy top-level `rope_theta` (or `rope_scaling`) into `rope_parameters` here.
        super().__post_init__(**kwargs)
        self._check()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def _check(self) -> None:
        """Reject impossible configurations with one message that names the field and what it may be."""
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head dimension hidden_size/num_attention_heads = {self.head_dim} must be even for RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name, value, valid in (
            ("norm_type", self.norm_type, tuple(NORMS)),  # the registry as it is now: runtime entries included
            ("norm_placement", self.norm_placement, NORM_PLACEMENTS),
            ("hidden_act", self.hidden_act, HIDDEN_ACTS),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not 0 < self.prms_fraction <= 1:
            raise ValueError(f"prms_fraction must be in (0, 1], got {self.prms_fraction!r}")
        for name in ("dyt_alpha_init", "dyt_attention_alpha_init", "embedding_scale_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not self.z_loss >= 0:
            raise ValueError(f"z_loss must be >= 0, got {self.z_loss!r}")
        self._check_rope()
        if not self.initializer_range > 0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range!r}")

    def _check_rope(self) -> None:
        rope = self.rope_parameters
        if rope["rope_type"] not in ROPE_TYPES:
            raise ValueError(f"unknown rope_parameters rope_type {rope['rope_type']!r}; valid: {', '.join(ROPE_TYPES)}")
        theta = rope.get("rope_theta")
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {theta!r}")
        try:
            self.validate_rope()  # the library's check of the keys each rope_type needs
        except KeyError as err:
            raise ValueError(err.args[0]) from None


__all__ = ["NormGPTConfig"]
