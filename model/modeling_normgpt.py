"""NormGPT: a decoder-only pre-norm transformer whose normalization layer is a config string.

Reads top to bottom: norms (and their registry) -> rotary embedding -> attention -> MLP -> block -> model.
The parameter names follow Llama's (`input_layernorm`, `post_attention_layernorm`, `q_proj`, ..., `down_proj`,
`model.norm`), so a `norm_type="rms"`, `hidden_act="silu"` checkpoint maps one to one onto a Llama state dict.

This file is copied next to every saved checkpoint (remote code): it imports only the library, torch and its two
same-directory siblings.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_normgpt import NormGPTConfig
from .rmsnorm_triton import HAS_TRITON, fused_add_rms_norm, fused_rms_norm, rms_norm_reference, triton_can_run

# ----------------------------------------------------------------------------------------------------------------------
# Norms


class Norm(nn.Module):
    """A norm layer of the residual stream. `add_forward` is the residual add followed by the norm; subclasses that can
    fuse the two (RMSNorm on the Triton path) override it, so the block never branches on the norm type.
    `numerics` says in one sentence where the statistics are computed and in which dtype: reports quote it."""

    numerics = ""

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (norm(x + residual), x + residual)."""
        hidden = x + residual
        return self(hidden), hidden


class RMSNorm(Norm):
    """Root-mean-square norm (Zhang & Sennrich 2019) with Llama numerics.

    `y = weight * (x * rsqrt(mean(x^2, -1) + eps)).to(x.dtype)`:
    - the mean of squares and the rsqrt are computed in float32 whatever the input dtype, because squaring bf16/fp16
      activations loses most of their mantissa (and overflows fp16 near 256);
    - eps sits inside the square root, so rows of zeros give zeros, not NaN;
    - the normalized value is cast back to the input dtype *before* the weight multiply (as in Llama/HF), so a bf16
      model multiplies in bf16; the result has the input's dtype.
    There is no mean subtraction and no bias: that is the whole difference from LayerNorm.

    `impl` picks the kernel, never the numerics: `auto` runs the fused Triton kernel for CUDA tensors when Triton is
    installed and PyTorch otherwise, `triton` forces the kernel (an error where it cannot run), `torch` forces PyTorch.
    """

    numerics = (
        "mean of squares and rsqrt in float32, normalized value cast back to the input dtype before the weight "
        "multiply (Llama); eps inside the square root"
    )

    def __init__(self, hidden_size: int, eps: float = 1e-6, impl: str = "auto") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.impl = impl

    def _use_triton(self, x: torch.Tensor) -> bool:
        if self.impl == "torch":
            return False
        if self.impl == "auto":
            return HAS_TRITON and x.is_cuda
        if not triton_can_run(x):
            raise RuntimeError(
                f"rms_impl='triton' cannot run on a {x.device.type} tensor here: it needs Triton and a CUDA device "
                "(or TRITON_INTERPRET=1 on CPU); use rms_impl='auto' or 'torch'"
            )
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_triton(x):
            return fused_rms_norm(x, self.weight, self.eps)
        return rms_norm_reference(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One pass over memory instead of three (read x and residual, write the sum, read it again to normalize).
        if self._use_triton(x):
            return fused_add_rms_norm(x, residual, self.weight, self.eps)
        return super().add_forward(x, residual)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, impl={self.impl}"


class LayerNorm(Norm):
    """LayerNorm (Ba et al. 2016): `(x - mean) / sqrt(var + eps) * weight + bias`. The constructor follows
    `nn.LayerNorm`: `elementwise_affine=False` drops both parameters (OLMo 1's non-parametric LayerNorm), `bias=False`
    keeps only the gain."""

    numerics = (
        "F.layer_norm: mean and variance in float32 for half-precision inputs, result and affine in the input dtype; "
        "eps inside the square root"
    )

    def __init__(self, hidden_size: int, eps: float = 1e-6, elementwise_affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.normalized_shape = (hidden_size,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if elementwise_affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        affine = f"weight={self.weight is not None}, bias={self.bias is not None}"
        return f"{self.normalized_shape[0]}, eps={self.eps}, {affine}"


class PartialRMSNorm(Norm):
    """pRMSNorm (Zhang & Sennrich 2019): the RMS is estimated from the first `ceil(fraction * d)` features only and
    scales all of them; otherwise the numerics of RMSNorm above."""

    numerics = (
        "RMS of the first p*d features in float32, normalized value cast back to the input dtype before the weight "
        "multiply; eps inside the square root"
    )

    def __init__(self, hidden_size: int, fraction: float = 0.0625, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.k = max(1, math.ceil(fraction * hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf[..., : self.k].pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (xf * rstd).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, k={self.k}, eps={self.eps}"


class DyT(Norm):
    """Dynamic Tanh (Zhu et al. 2025): `weight * tanh(alpha * x) + bias` with a learnable scalar alpha. No statistics
    at all, so no reduction over the features and no eps: it squashes outliers instead of rescaling rows."""

    numerics = "no statistics and no eps: tanh(alpha * x) in the input dtype, then the affine"

    def __init__(self, hidden_size: int, alpha_init: float = 0.5) -> None:
        super().__init__()
        self.alpha_init = alpha_init
        self.alpha = nn.Parameter(torch.full((1,), alpha_init))
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, alpha_init={self.alpha_init}"


class Identity(Norm):
    """No normalization: the negative control of an ablation."""

    numerics = "no normalization"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


NORMS = {
    "rms": lambda config: RMSNorm(config.hidden_size, config.rms_norm_eps, config.rms_impl),
    "layer": lambda config: LayerNorm(config.hidden_size, config.rms_norm_eps),
    "layer_nobias": lambda config: LayerNorm(config.hidden_size, config.rms_norm_eps, bias=False),
    "layer_noaffine": lambda config: LayerNorm(config.hidden_size, config.rms_norm_eps, elementwise_affine=False),
    "prms": lambda config: PartialRMSNorm(config.hidden_size, config.prms_fraction, config.rms_norm_eps),
    "dyt": lambda config: DyT(config.hidden_size, config.dyt_alpha_init),
    "none": lambda config: Identity(),
}


def build_norm(config: NormGPTConfig) -> Norm:
    """The one place a norm name becomes a module."""
    if config.norm_type not in NORMS:
        raise ValueError(f"unknown norm_type {config.norm_type!r}; valid: {', '.join(NORMS)}")
    return NORMS[config.norm_type](config)


def describe_norms(config: NormGPTConfig) -> str:
    """Everything a report must say about normalization, in one line: which norm, where, eps, and the numerics."""
    numerics = type(build_norm(config)).numerics
    eps = "no eps" if config.norm_type in ("dyt", "none") else f"eps={config.rms_norm_eps:g}"
    qk = f"; qk_norm: RMSNorm per head, eps={config.rms_norm_eps:g}" if config.qk_norm else ""
    z = f"; z_loss={config.z_loss:g}" if config.z_loss else ""
    return f"{config.norm_type} norm, {config.norm_placement} placement, {eps} ({numerics}){qk}{z}"


# ----------------------------------------------------------------------------------------------------------------------
# Rotary position embedding


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021) in the "rotate half" layout used by Llama/HF, so weights port across."""

    def __init__(self, config: NormGPTConfig) -> None:
        super().__init__()
        self.config = config
        # Not persistent: it is a function of the config, so checkpoints do not carry it and `_init_weights`
        # recomputes it after `from_pretrained` materialises the model from the meta device.
        self.register_buffer("inv_freq", self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config: NormGPTConfig) -> torch.Tensor:
        dim = config.head_dim
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in float32: positions of a few thousand times inv_freq lose whole radians in bf16.
        freqs = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, T, D]; cos/sin: [B, T, D] -> broadcast over heads
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


# ----------------------------------------------------------------------------------------------------------------------
# Attention


class Attention(nn.Module):
    """Causal self-attention through `F.scaled_dot_product_attention`, with grouped-query attention (fewer key/value
    heads than query heads) and a key/value cache through the transformers Cache API."""

    def __init__(self, config: NormGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.o_proj.is_residual_projection = True
        # QK-norm bounds the attention logits, whose growth is a known instability (Dehghani et al. 2023)
        qk_norm = (lambda: RMSNorm(self.head_dim, config.rms_norm_eps, config.rms_impl)) if config.qk_norm else Identity
        self.q_norm, self.k_norm = qk_norm(), qk_norm()

    def queries_and_keys(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries [B, H, T, D] and keys [B, Hkv, T, D]; also what stability probes read the logits from."""
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k = self.queries_and_keys(x, cos, sin)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, Hkv, S, D], S = past + T
        # With no explicit mask the queries and keys are the same positions, and SDPA's own causal mask is right.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None, enable_gqa=self.num_kv_heads != self.num_heads
        )  # [B, H, T, D]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


# ----------------------------------------------------------------------------------------------------------------------
# MLP


class SwiGLUMLP(nn.Module):
    """`down(silu(gate(x)) * up(x))` (Shazeer 2020), as in Llama."""

    def __init__(self, config: NormGPTConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GELUMLP(nn.Module):
    """`down(gelu(up(x)))`, the GPT-2 MLP without biases."""

    def __init__(self, config: NormGPTConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


MLPS = {"silu": SwiGLUMLP, "gelu": GELUMLP}


# ----------------------------------------------------------------------------------------------------------------------
# Block and model


class PreNormBlock(nn.Module):
    """Pre-norm (GPT-2, Llama): `h = h + attn(norm(h)); h = h + mlp(norm(h))`. The residual stream itself is never
    normalized, which keeps an identity path from the embedding to the final norm (Xiong et al. 2020: trains without
    warm-up)."""

    final_norm = True

    def __init__(self, config: NormGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = build_norm(config)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = build_norm(config)
        self.mlp = MLPS[config.hidden_act](config)

    def forward(self, hidden, cos, sin, attn_mask, cache) -> torch.Tensor:
        attn_out = self.self_attn(self.input_layernorm(hidden), cos, sin, attn_mask, cache)
        # residual add and second norm in one call: fused into one kernel on the Triton path
        normed, hidden = self.post_attention_layernorm.add_forward(attn_out, hidden)
        return hidden + self.mlp(normed)


class PostNormBlock(nn.Module):
    """Post-norm (the original Transformer, BERT): `h = norm(h + attn(h)); h = norm(h + mlp(h))`. Every residual path
    goes through a norm, so gradients near the output are large at init and the model needs warm-up (Xiong et al.
    2020); there is no final norm because the stream leaving the last block is already normalized."""

    final_norm = False

    def __init__(self, config: NormGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = build_norm(config)
        self.mlp = MLPS[config.hidden_act](config)
        self.post_feedforward_layernorm = build_norm(config)

    def forward(self, hidden, cos, sin, attn_mask, cache) -> torch.Tensor:
        hidden, _ = self.post_attention_layernorm.add_forward(
            self.self_attn(hidden, cos, sin, attn_mask, cache), hidden
        )
        hidden, _ = self.post_feedforward_layernorm.add_forward(self.mlp(hidden), hidden)
        return hidden


class PeriNormBlock(nn.Module):
    """Peri-norm (Gemma 2, Peri-LN by Kim et al. 2025): each sublayer's input and output are normalized,
    `h = h + norm(attn(norm(h))); h = h + norm(mlp(norm(h)))`, which bounds what each sublayer adds to the stream.
    Parameter names are Gemma 2's."""

    final_norm = True

    def __init__(self, config: NormGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = build_norm(config)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = build_norm(config)
        self.pre_feedforward_layernorm = build_norm(config)
        self.mlp = MLPS[config.hidden_act](config)
        self.post_feedforward_layernorm = build_norm(config)

    def forward(self, hidden, cos, sin, attn_mask, cache) -> torch.Tensor:
        hidden = hidden + self.post_attention_layernorm(
            self.self_attn(self.input_layernorm(hidden), cos, sin, attn_mask, cache)
        )
        return hidden + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden)))


BLOCKS = {"pre": PreNormBlock, "post": PostNormBlock, "peri": PeriNormBlock}


class NormGPTPreTrainedModel(PreTrainedModel):
    config_class = NormGPTConfig
    config: NormGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = [block.__name__ for block in BLOCKS.values()]  # also FSDP's default wrap units
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, initializer_range) for every matrix, with the projections that write into the residual
        stream scaled by 1/sqrt(2 * layers) so the stream's variance does not grow with depth. Uses
        `transformers.initialization`, which skips tensors already loaded from a checkpoint."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, Norm):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
            if isinstance(module, DyT):
                init.constant_(module.alpha, module.alpha_init)
        elif isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(module.config))


def attention_positions_and_mask(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, past_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids [B, T] and the SDPA boolean mask [B, 1, T, S] (True = may attend), or None when plain causal
    attention over the same positions is exact (training, and the first step of unpadded generation).

    `attention_mask` is the usual 2-D padding mask over all S = past + T tokens. Positions count only real tokens,
    so a left-padded prompt gets the same positions as an unpadded one.
    """
    if attention_mask is None:
        positions = torch.arange(past_len, past_len + q_len, device=device).expand(batch, q_len)
        if past_len == 0:
            return positions, None
        key_ok = torch.ones(batch, past_len + q_len, dtype=torch.bool, device=device)
    else:
        key_ok = attention_mask.bool()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]
    q_idx = torch.arange(past_len, past_len + q_len, device=device)[:, None]  # [T, 1]
    k_idx = torch.arange(key_ok.shape[1], device=device)[None, :]  # [1, S]
    allowed = (k_idx <= q_idx)[None] & key_ok[:, None, :]  # [B, T, S]
    # A padding query would otherwise see no key at all and SDPA would return NaN; its output is never used.
    allowed |= (k_idx == q_idx)[None]
    return positions, allowed[:, None]  # [B, 1, T, S]


class NormGPTModel(NormGPTPreTrainedModel):
    def __init__(self, config: NormGPTConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        block = BLOCKS[config.norm_placement]
        self.layers = nn.ModuleList([block(config, i) for i in range(config.num_hidden_layers)])
        self.norm = build_norm(config) if block.final_norm else Identity()
        self.rotary_emb = RotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        B, T, _ = inputs_embeds.shape
        past_len = cache.get_seq_length() if cache is not None else 0
        positions, attn_mask = attention_positions_and_mask(attention_mask, B, T, past_len, inputs_embeds.device)
        if position_ids is not None:
            positions = position_ids
        cos, sin = self.rotary_emb(positions, inputs_embeds.dtype)

        hidden = inputs_embeds
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, attn_mask, cache)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.norm(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            cache=cache,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class NormGPTForCausalLM(NormGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: NormGPTConfig) -> None:
        super().__init__(config)
        self.model = NormGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` are the input ids themselves (shifted here), with -100 marking positions to ignore.
        `num_items_in_batch`, when given, is the number of target tokens across all micro-batches of an accumulated
        step, so that the summed loss is normalised once (HF Trainer convention)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # generation needs only the last position's logits
        logits = self.lm_head(hidden)  # [B, T, V]

        loss = None
        if labels is not None:
            # float32 log-softmax: bf16 logits over a large vocabulary lose the small probabilities the loss needs
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # [B*(T-1), V]
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)  # [B*(T-1)]
            reduction = "mean" if num_items_in_batch is None else "sum"
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction=reduction)
            if self.config.z_loss:
                # pulls log Z toward 0 so the softmax stays in a well-conditioned range (PaLM; Wortsman et al. 2023)
                log_z = torch.logsumexp(shift_logits, dim=-1)[shift_labels != -100]
                z = log_z.pow(2)
                loss = loss + self.config.z_loss * (z.mean() if num_items_in_batch is None else z.sum())
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch

        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )


__all__ = [
    "BLOCKS",
    "NORMS",
    "DyT",
    "Identity",
    "PartialRMSNorm",
    "describe_norms",
    "LayerNorm",
    "Norm",
    "NormGPTForCausalLM",
    "NormGPTModel",
    "NormGPTPreTrainedModel",
    "RMSNorm",
    "build_norm",
]
