"""NormGPT: a decoder-only transformer whose normalization layer and its placement are config strings.

Reads top to bottom: rotary embedding -> attention -> MLP -> blocks -> model -> heads; the norms and their registry
are in norms.py.
The parameter names follow Llama's (`input_layernorm`, `post_attention_layernorm`, `q_proj`, ..., `down_proj`,
`model.norm`), so a `norm_type="rms"`, `hidden_act="silu"` checkpoint maps one to one onto a Llama state dict.

It keeps the transformers model contract the way in-tree Llama does in the installed version: attention through
the attention interface (eager, SDPA, flex, flash), masks from `create_causal_mask`, RoPE from the library's RoPE
functions, outputs captured by `capture_outputs`, `return_dict=False` tuples, gradient checkpointing through
`GradientCheckpointingLayer`, and the deprecated `past_key_values=` keyword.

This file is copied next to every saved checkpoint (remote code): it imports only the library, torch and its
same-directory siblings.
"""

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import (
    GenericForSequenceClassification,
    GenericForTokenClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_normgpt import NormGPTConfig
from .linear_cross_entropy import linear_cross_entropy, shifted_targets
from .norms import RMS_IMPLS, Identity, Norm, RMSNorm, build_norm

# ----------------------------------------------------------------------------------------------------------------------
# Rotary position embedding


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021) in the "rotate half" layout used by Llama/HF, so weights port across. The frequencies
    come from `config.rope_parameters` through the library's RoPE functions (`rope_type` default, linear, dynamic,
    yarn, llama3, ...), so scaled RoPE means exactly what it means for every other model."""

    def __init__(self, config: NormGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        inv_freq, self.attention_scaling = self.rope_init_fn(config)
        # Not persistent: a function of the config, so checkpoints do not carry them and `_init_weights` recomputes
        # them after `from_pretrained` materialises the model from the meta device. `dynamic` RoPE swaps `inv_freq`
        # for long sequences and restores `original_inv_freq`.
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @property
    def rope_init_fn(self) -> Callable[..., tuple[torch.Tensor, float]]:
        return ROPE_INIT_FUNCTIONS.get(self.rope_type, self.compute_default_rope_parameters)

    @staticmethod
    def compute_default_rope_parameters(config: NormGPTConfig, device=None, seq_len=None) -> tuple[torch.Tensor, float]:
        """Unscaled RoPE: inverse frequencies theta^(-2i/D), and no scaling of cos/sin."""
        dim = config.head_dim
        theta = config.rope_parameters["rope_theta"]
        return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)), 1.0

    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [B or 1, T, D] in x's dtype for positions [B or 1, T]."""
        # Angles in float32: positions of a few thousand times inv_freq lose whole radians in bf16.
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, T, D]; cos/sin: [B, T, D] -> broadcast over heads
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


# ----------------------------------------------------------------------------------------------------------------------
# Attention


class QueryKeyProbe(nn.Module):
    """A hook point, not a computation: attention calls it, before dispatching to any attention backend, as
    `probe(query=q, key=k, attn_mask=mask)`, so a stability probe hooked here (`register_forward_hook(...,
    with_kwargs=True)`) reads exactly what the pre-softmax scores `q @ k^T / sqrt(D)` are made of, on every backend:

    - `query`: the rotated (and, with `qk_norm`, normalized) queries, [B, H, T, D];
    - `key`: the keys attended to, [B, Hkv, S, D] (S = cached + new positions; H is a multiple of Hkv: repeat each
      key head H/Hkv times, `repeat_interleave(H // Hkv, dim=1)`, to pair it with its query heads). With a static
      cache S is the cache length, and the slots not yet written are masked out;
    - `attn_mask`: a boolean tensor broadcastable to [B, 1, T, S], True where query t may attend to key s; or None,
      which means plain causal attention over S == T keys (query t sees keys 0..t): no cache, no padding, as in
      training. It never is the backend's own format (an additive float mask for eager, a BlockMask for flex, a
      padding mask for flash): the model builds this one, and only while a hook is registered on this module
      (a global module hook sees None).

    With no hook it does nothing."""

    @property
    def hooked(self) -> bool:
        return bool(self._forward_hooks or self._forward_pre_hooks)

    def forward(self, *, query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None) -> None:
        return None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, the reference path and the only one that can return the weights [B, H, T, S].
    `attention_mask` is the additive float mask `create_causal_mask` makes for eager (0 or the dtype's minimum), or
    a boolean one a caller passed in."""
    key = key.repeat_interleave(module.num_key_value_groups, dim=1)  # [B, H, S, D]
    value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, H, T, S]
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    # softmax in float32: bf16 scores lose the small probabilities
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights  # [B, T, H, D], [B, H, T, S]


class Attention(nn.Module):
    """Causal self-attention with grouped-query attention (fewer key/value heads than query heads) and a key/value
    cache through the transformers Cache API. The computation itself is the backend `config._attn_implementation`
    names in transformers' attention interface (`sdpa` by default; `eager` above)."""

    is_causal = True

    def __init__(self, config: NormGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads  # the attention interface's name
        self.head_dim = config.head_dim
        # 1/sqrt(D) as SDPA computes its default, so the default path keeps its numbers to the bit
        self.scaling = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.o_proj.is_residual_projection = True
        # QK-norm bounds the attention logits, whose growth is a known instability (Dehghani et al. 2023)
        qk_norm = (lambda: RMSNorm(self.head_dim, config.rms_norm_eps)) if config.qk_norm else Identity
        self.q_norm, self.k_norm = qk_norm(), qk_norm()
        self.logits_probe = QueryKeyProbe()

    def queries_and_keys(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries [B, H, T, D] and keys [B, Hkv, T, D]."""
        shape = (*x.shape[:-1], -1, self.head_dim)  # -1: the local heads, when tensor parallelism splits them
        q = self.q_norm(self.q_proj(x).view(shape)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(shape)).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        probe_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output [B, T, hidden] and the attention weights [B, H, T, S] (None except on eager)."""
        input_shape = hidden_states.shape[:-1]  # [B, T]
        q, k = self.queries_and_keys(hidden_states, cos, sin)
        v = self.v_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, Hkv, S, D]
        self.logits_probe(query=q, key=k, attn_mask=probe_mask)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention_interface(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights  # out: [B, T, H, D]


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
# Blocks. Each takes the residual stream positionally (gradient checkpointing and output capture read it there) and
# everything attention needs by keyword, and returns the new stream, a tensor: `output_hidden_states` records these.


class DecoderBlock(GradientCheckpointingLayer):
    """What the three placements share: an attention and an MLP around a residual stream, recomputed in the backward
    pass when gradient checkpointing is on."""

    final_norm = True  # whether the model normalizes the stream leaving the last block

    def attend(
        self, x: torch.Tensor, position_embeddings, attention_mask=None, cache=None, probe_mask=None, **kwargs
    ) -> torch.Tensor:
        """The attention sublayer on x; `kwargs` (backend options) go through to the attention interface."""
        cos, sin = position_embeddings
        out, _ = self.self_attn(x, cos, sin, attention_mask, cache=cache, probe_mask=probe_mask, **kwargs)
        return out


class PreNormBlock(DecoderBlock):
    """Pre-norm (GPT-2, Llama): `h = h + attn(norm(h)); h = h + mlp(norm(h))`. The residual stream itself is never
    normalized, which keeps an identity path from the embedding to the final norm (Xiong et al. 2020: trains without
    warm-up)."""

    def __init__(self, config: NormGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = build_norm(config, "attention_input")
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = build_norm(config, "mlp_input")
        self.mlp = MLPS[config.hidden_act](config)

    def forward(self, hidden_states: torch.Tensor, **attention_inputs) -> torch.Tensor:
        attn_out = self.attend(self.input_layernorm(hidden_states), **attention_inputs)
        # residual add and second norm in one call: fused into one kernel on the Triton path
        normed, hidden_states = self.post_attention_layernorm.add_forward(attn_out, hidden_states)
        return hidden_states + self.mlp(normed)


class PostNormBlock(DecoderBlock):
    """Post-norm (the original Transformer, BERT): `h = norm(h + attn(h)); h = norm(h + mlp(h))`. Every residual path
    goes through a norm, so gradients near the output are large at init and the model needs warm-up (Xiong et al.
    2020); there is no final norm because the stream leaving the last block is already normalized."""

    final_norm = False

    def __init__(self, config: NormGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = build_norm(config, "attention_output")
        self.mlp = MLPS[config.hidden_act](config)
        self.post_feedforward_layernorm = build_norm(config, "mlp_output")

    def forward(self, hidden_states: torch.Tensor, **attention_inputs) -> torch.Tensor:
        attn_out = self.attend(hidden_states, **attention_inputs)
        hidden_states, _ = self.post_attention_layernorm.add_forward(attn_out, hidden_states)
        hidden_states, _ = self.post_feedforward_layernorm.add_forward(self.mlp(hidden_states), hidden_states)
        return hidden_states


class PeriNormBlock(DecoderBlock):
    """Peri-norm (Gemma 2, Peri-LN by Kim et al. 2025): each sublayer's input and output are normalized,
    `h = h + norm(attn(norm(h))); h = h + norm(mlp(norm(h)))`, which bounds what each sublayer adds to the stream.
    Parameter names are Gemma 2's."""

    def __init__(self, config: NormGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = build_norm(config, "attention_input")
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = build_norm(config, "attention_output")
        self.pre_feedforward_layernorm = build_norm(config, "mlp_input")
        self.mlp = MLPS[config.hidden_act](config)
        self.post_feedforward_layernorm = build_norm(config, "mlp_output")

    def forward(self, hidden_states: torch.Tensor, **attention_inputs) -> torch.Tensor:
        attn_out = self.attend(self.input_layernorm(hidden_states), **attention_inputs)
        hidden_states = hidden_states + self.post_attention_layernorm(attn_out)
        return hidden_states + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden_states)))


BLOCKS = {"pre": PreNormBlock, "post": PostNormBlock, "peri": PeriNormBlock}


# ----------------------------------------------------------------------------------------------------------------------
# Model


class NormGPTPreTrainedModel(PreTrainedModel):
    config_class = NormGPTConfig
    config: NormGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = [block.__name__ for block in BLOCKS.values()]  # also FSDP's default wrap units
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True  # every kwarg reaches the attention interface; logits_to_keep may be a tensor
    _can_compile_fullgraph = True  # a static-cache decoding step traces with no graph break (tests/test_hf_contract.py)
    _can_record_outputs = {"hidden_states": DecoderBlock, "attentions": Attention}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also lists every normgpt class in the config's `auto_map` (not only the one saved), so that a saved
        directory loads as any head, `AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`
        for one, where this project is not installed. Only for classes marked for remote code, as importing `model`
        marks them."""
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            listed = {cls._auto_class: f"{module}.{cls.__name__}" for cls in AUTO_CLASSES if cls._auto_class}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **listed}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def set_rms_impl(self, impl: str) -> None:
        """The kernel every RMSNorm of the model runs (QK-norm's too): `auto` (the fused Triton kernel for CUDA
        tensors when Triton is installed, PyTorch otherwise; the default), `triton` (always the kernel: an error where
        it cannot run) or `torch`. A choice of the machine, not part of the model: it changes speed, never the
        numbers a checkpoint holds, and is never saved."""
        if impl not in RMS_IMPLS:
            raise ValueError(f"unknown rms_impl {impl!r}; valid: {', '.join(RMS_IMPLS)}")
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.impl = impl

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
            module.reset_parameters()
        elif isinstance(module, NormGPTModel) and module.embed_scale is not None:
            init.constant_(module.embed_scale, self.config.embedding_scale_init)  # a constant: no random number drawn
        elif isinstance(module, RotaryEmbedding):
            inv_freq, _ = module.rope_init_fn(module.config)
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)


def default_position_ids(
    attention_mask: torch.Tensor | None, cache: Cache | None, q_len: int, device: torch.device
) -> torch.Tensor:
    """Positions [B or 1, T] when the caller gives none. With a 2-D padding mask they count real tokens only, so a
    left-padded prompt gets the positions it would have unpadded (`generate` computes the same itself)."""
    if attention_mask is not None and attention_mask.ndim == 2:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]
    past = cache.get_seq_length() if cache is not None else 0
    return torch.arange(past, past + q_len, device=device)[None]


class NormGPTModel(NormGPTPreTrainedModel):
    def __init__(self, config: NormGPTConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        block = BLOCKS[config.norm_placement]
        self.layers = nn.ModuleList([block(config, i) for i in range(config.num_hidden_layers)])
        self.norm = build_norm(config, "final") if block.final_norm else Identity()
        # Zhu et al. 2025's LLaMA recipe for DyT: a learnable scalar on the embeddings (config.embedding_scale)
        self.embed_scale = nn.Parameter(torch.ones(1)) if config.embedding_scale else None
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`hidden_states` (with `output_hidden_states`) are the embeddings (times `embed_scale` where the config
        has one: what the first block reads, from `input_ids` or `inputs_embeds` alike), then each block's output; the
        last one is taken before the final norm, whose output is `last_hidden_state`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # A model in training mode makes no cache of its own: training never reads one.
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, cache, inputs_embeds.shape[1], inputs_embeds.device)
        mask_inputs = dict(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache, position_ids=position_ids
        )
        causal_mask = create_causal_mask(config=self.config, **mask_inputs)
        probe_mask = self.probe_mask(causal_mask, mask_inputs)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds if self.embed_scale is None else inputs_embeds * self.embed_scale
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                cache=cache,
                probe_mask=probe_mask,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)

    def probe_mask(self, causal_mask, mask_inputs: dict) -> torch.Tensor | None:
        """The mask `QueryKeyProbe` documents (boolean, or None for plain causal over S == T keys), built only while
        a probe is hooked. On SDPA it is the backend's own mask; otherwise `create_causal_mask` makes it as for SDPA.
        With a cache it is always materialized, because SDPA's None there means different alignments."""
        if not any(layer.self_attn.logits_probe.hooked for layer in self.layers):
            return None
        no_cache = mask_inputs["cache"] is None
        mask = causal_mask
        if self.config._attn_implementation != "sdpa" or (mask is None and not no_cache):
            sdpa_config = copy.copy(self.config)
            sdpa_config._attn_implementation = "sdpa"
            mask = create_causal_mask(config=sdpa_config, allow_is_causal_skip=no_cache, **mask_inputs)
        if mask is not None and mask.dtype != torch.bool:  # a 4-D additive mask passed in by the caller
            mask = mask > torch.finfo(mask.dtype).min
        return mask


LOSS_IMPLS = ("full", "chunked")  # how the causal-LM loss is computed (`loss_impl`): a runtime option, never saved


class NormGPTForCausalLM(NormGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: NormGPTConfig) -> None:
        super().__init__(config)
        self.model = NormGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.loss_impl = "full"
        self.post_init()

    def set_loss_impl(self, impl: str) -> None:
        """How a forward with `labels` computes the loss: `full` (the default: the logits [B, T, V] are computed,
        returned, and the loss taken from them) or `chunked` (linear_cross_entropy.py: the loss and its gradients a
        chunk of positions at a time, with no logits returned: `logits` is None). The same loss either way, to
        rounding; `chunked` spares the memory and traffic of the logits, which dominate a small model's step. A
        choice of the machine, like `set_rms_impl`: never saved."""
        if impl not in LOSS_IMPLS:
            raise ValueError(f"unknown loss_impl {impl!r}; valid: {', '.join(LOSS_IMPLS)}")
        self.loss_impl = impl

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` are the input ids themselves (shifted here), with -100 marking positions to ignore.
        `num_items_in_batch`, when given, is the number of target tokens across all micro-batches of an accumulated
        step, so that the summed loss is normalised once (HF Trainer convention). `output_attentions`,
        `output_hidden_states` and `return_dict` work as arguments and from the config."""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,  # the trunk's dataclass whatever config.return_dict says; the tuple is made here
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if labels is not None and self.loss_impl == "chunked" and not logits_to_keep:
            logits, loss = None, self.chunked_causal_lm_loss(hidden_states, labels, num_items_in_batch)
        else:
            # generation needs only the last position's logits
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))  # [B, T, V]
            loss = self.causal_lm_loss(logits, labels, num_items_in_batch) if labels is not None else None
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def causal_lm_loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        # float32 log-softmax: bf16 logits over a large vocabulary lose the small probabilities the loss needs
        shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # [B*(T-1), V]
        shift_labels = labels[:, 1:].reshape(-1).to(logits.device)  # [B*(T-1)]
        reduction = "mean" if num_items_in_batch is None else "sum"
        loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction=reduction)
        if self.config.z_loss:
            # pulls log Z toward 0 so the softmax stays in a well-conditioned range (PaLM; Wortsman et al. 2023)
            z = torch.logsumexp(shift_logits, dim=-1)[shift_labels != -100].pow(2)
            loss = loss + self.config.z_loss * (z.mean() if num_items_in_batch is None else z.sum())
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
        return loss

    def chunked_causal_lm_loss(self, hidden_states: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None):
        """`causal_lm_loss(lm_head(hidden_states), labels, ...)` without the logits (linear_cross_entropy.py)."""
        hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # [B*T, hidden]; the last position has no target
        targets = shifted_targets(labels.to(hidden.device))
        return linear_cross_entropy(hidden, self.lm_head.weight, targets, self.config.z_loss, num_items_in_batch)


# ----------------------------------------------------------------------------------------------------------------------
# Heads on the same trunk, from the library's generic ones. They build `NormGPTModel` directly rather than through
# `AutoModel`, which a remote-code checkpoint cannot resolve without `trust_remote_code` being passed down.


class NormGPTForSequenceClassification(GenericForSequenceClassification, NormGPTPreTrainedModel):
    """Scores the last non-padding token of each sequence (`config.num_labels` outputs)."""

    def __init__(self, config: NormGPTConfig) -> None:
        NormGPTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = NormGPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()


class NormGPTForTokenClassification(GenericForTokenClassification, NormGPTPreTrainedModel):
    """Scores every token (`config.num_labels` outputs), after dropout (`classifier_dropout`, default 0.1)."""

    def __init__(self, config: NormGPTConfig) -> None:
        NormGPTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = NormGPTModel(config)
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.score = nn.Linear(
            config.hidden_size, config.num_labels, bias=getattr(config, "token_classification_bias", True)
        )
        self.post_init()


AUTO_CLASSES = (NormGPTModel, NormGPTForCausalLM, NormGPTForSequenceClassification, NormGPTForTokenClassification)

__all__ = [
    "BLOCKS",
    "LOSS_IMPLS",
    "NormGPTForCausalLM",
    "NormGPTForSequenceClassification",
    "NormGPTForTokenClassification",
    "NormGPTModel",
    "NormGPTPreTrainedModel",
    "QueryKeyProbe",
]
