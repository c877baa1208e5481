"""NormGPT: a decoder-only pre-norm transformer whose normalization layer is a config string.

Reads top to bottom: rotary embedding -> attention -> MLP -> block -> model; the norms and their registry are in
norms.py.
The parameter names follow Llama's (`input_layernorm`, `post_attention_layernorm`, `q_proj`, ..., `down_proj`,
`model.norm`), so a `norm_type="rms"`, `hidden_act="silu"` checkpoint maps one to one onto a Llama state dict.

This file is copied next to every saved checkpoint (remote code): it imports only the library, torch and its
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
from .norms import Identity, Norm, RMSNorm, build_norm

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


class QueryKeyProbe(nn.Module):
    """A hook point, not a computation: attention calls it with the rotated queries [B, H, T, D], the keys it attends
    to [B, Hkv, S, D] and its mask, by keyword, so a stability probe hooked here (`register_forward_hook(...,
    with_kwargs=True)`) reads exactly what the attention scores are made of. With no hook it does nothing."""

    def forward(self, *, query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None) -> None:
        return None


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
        self.logits_probe = QueryKeyProbe()

    def queries_and_keys(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries [B, H, T, D] and keys [B, Hkv, T, D]."""
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
        self.logits_probe(query=q, key=k, attn_mask=attn_mask)
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
            module.reset_parameters()
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
    "NormGPTForCausalLM",
    "NormGPTModel",
    "NormGPTPreTrainedModel",
    "QueryKeyProbe",
]
