"""The transformers model contract, checked the way transformers' common model tests check every in-tree model:
attention backends and their equivalence, output flags, tuple outputs, generate's dict outputs in every decoding
mode, the deprecated `past_key_values=` keyword, static cache and compiled decoding, gradient checkpointing, RoPE
parameters, the classification heads, the query/key probe point, and an old run directory's logits."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    StaticCache,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import is_flash_attn_2_available

from model import (
    NormGPTConfig,
    NormGPTForCausalLM,
    NormGPTForSequenceClassification,
    NormGPTForTokenClassification,
    NormGPTModel,
)

DATA = Path(__file__).parent / "data"
CONFIG = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
L, H, HKV, D = 2, 4, 2, 8
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def build(seed: int = 0, attn: str = "sdpa", cls=NormGPTForCausalLM, **overrides):
    torch.manual_seed(seed)
    model = cls(NormGPTConfig(**{**CONFIG, **overrides}))
    model.set_attn_implementation(attn)
    return model.eval()


def batch(seed: int = 0, size: int = 2, length: int = 10, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, T] and their padding mask; row 0 is left-padded by `pad` tokens."""
    ids = torch.randint(1, CONFIG["vocab_size"], (size, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    ids[0, :pad], mask[0, :pad] = 0, 0
    return ids, mask


# ---------------------------------------------------------------------------------------------------------------------
# Attention backends


def test_declared_backend_flags_and_selection(tmp_path):
    assert NormGPTForCausalLM._supports_sdpa and NormGPTForCausalLM._supports_flex_attn
    assert NormGPTForCausalLM._supports_flash_attn and NormGPTForCausalLM._supports_attention_backend
    assert NormGPTForCausalLM._can_set_attn_implementation()
    build().save_pretrained(tmp_path / "m")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config._attn_implementation == "sdpa"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match='attn_implementation="bogus"'):
        model.set_attn_implementation("bogus")


def test_any_registered_attention_function_runs_and_gets_every_kwarg():
    """What `_supports_attention_backend` promises (vLLM and TGI plug in this way): the model dispatches to whatever
    the interface holds, and keyword arguments of the forward reach it."""
    calls = []

    def recording_sdpa(module, query, key, value, attention_mask, **kwargs):
        calls.append(kwargs.get("marker"))
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS.register("normgpt_test_recording", recording_sdpa)
    try:
        model = build()
        ids, _ = batch()
        with torch.no_grad():
            expected = model(ids).logits
            model.set_attn_implementation("normgpt_test_recording")
            got = model(ids, marker="seen").logits
    finally:
        ALL_ATTENTION_FUNCTIONS._global_mapping.pop("normgpt_test_recording")
    assert calls == ["seen"] * L
    torch.testing.assert_close(got, expected)


def eager_and_sdpa(dtype: torch.dtype, **overrides):
    sdpa = build(seed=1, **overrides).to(dtype)
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    return eager, sdpa


def decode_logits(model, ids: torch.Tensor, mask: torch.Tensor, prefill: int) -> list[torch.Tensor]:
    """Logits of a prefill of `prefill` tokens, then of each later token fed alone through the cache."""
    out = model(ids[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True)
    logits, cache = [out.logits], out.cache
    for t in range(prefill, ids.shape[1]):
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
        logits.append(out.logits)
    return logits


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("padding", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("use_cache", [False, True], ids=["no_cache", "cache"])
def test_eager_matches_sdpa(dtype, atol, padding, use_cache):
    eager, sdpa = eager_and_sdpa(dtype, qk_norm=True)
    ids, mask = batch(length=10, pad=3 if padding else 0)
    with torch.no_grad():
        if use_cache:
            got, expected = decode_logits(eager, ids, mask, 6), decode_logits(sdpa, ids, mask, 6)
            got, expected, real = torch.cat(got, 1), torch.cat(expected, 1), mask.bool()
        else:
            got, expected, real = (
                eager(ids, attention_mask=mask).logits,
                sdpa(ids, attention_mask=mask).logits,
                mask.bool(),
            )
    # padding positions attend to nothing: their outputs differ between backends and are never used
    torch.testing.assert_close(got[real].float(), expected[real].float(), rtol=atol, atol=atol)
    assert (expected[real] - got[real]).abs().max() < 10 * atol  # a real check, not a vacuous one at this tolerance


@pytest.mark.parametrize(
    "overrides", [{"norm_placement": "post", "norm_type": "layer"}, {"norm_placement": "peri", "norm_type": "dyt"}]
)
def test_eager_matches_sdpa_for_other_placements(overrides):
    eager, sdpa = eager_and_sdpa(torch.float32, **overrides)
    ids, mask = batch(length=9, pad=2)
    with torch.no_grad():
        got, expected = (
            torch.cat(decode_logits(eager, ids, mask, 5), 1),
            torch.cat(decode_logits(sdpa, ids, mask, 5), 1),
        )
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.gpu
def test_flex_attention_matches_sdpa_on_cuda():
    """Flex attention also runs on CPU, through inductor, but compiling it takes over a minute on 2 cores."""
    sdpa = build(seed=1, qk_norm=True).cuda()
    flex = copy.deepcopy(sdpa)
    flex.set_attn_implementation("flex_attention")
    ids, mask = (t.cuda() for t in batch(length=16, pad=3))
    with torch.no_grad():
        got, expected = flex(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=1e-4, atol=1e-4)


@cuda
@pytest.mark.gpu
@pytest.mark.skipif(not is_flash_attn_2_available(), reason="needs flash-attn")
def test_flash_attention_matches_sdpa_on_cuda():
    sdpa = build(seed=1, qk_norm=True).cuda().to(torch.bfloat16)
    flash = copy.deepcopy(sdpa)
    flash.set_attn_implementation("flash_attention_2")
    ids, mask = (t.cuda() for t in batch(length=16, pad=3))
    with torch.no_grad():
        got, expected = flash(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()].float(), expected[mask.bool()].float(), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------------------------------
# Output flags


def check_attentions(attentions, batch_size: int, q_len: int, kv_len: int) -> None:
    assert len(attentions) == L
    for weights in attentions:
        assert weights.shape == (batch_size, H, q_len, kv_len)
        torch.testing.assert_close(weights.sum(-1), torch.ones(batch_size, H, q_len))


def test_attention_outputs_from_argument_and_config():
    model = build(attn="eager")
    ids, _ = batch(length=7)
    with torch.no_grad():
        out = model(ids, output_attentions=True)
        check_attentions(out.attentions, 2, 7, 7)
        assert out.attentions[0].triu(1).abs().max() == 0  # causal: nothing above the diagonal
        assert model(ids).attentions is None
        model.config.output_attentions = True
        from_config = model(ids, use_cache=True)
        step = model(ids[:, :1], cache=from_config.cache)  # one more token through the cache
    for a, b in zip(out.attentions, from_config.attentions, strict=True):
        torch.testing.assert_close(a, b)
    check_attentions(step.attentions, 2, 1, 8)
    # the pre-softmax scores eager returns weights for are the rotated queries and keys (layer 0, head 0, row 6)
    attn, block = model.model.layers[0].self_attn, model.model.layers[0]
    with torch.no_grad():
        x = block.input_layernorm(model.model.embed_tokens(ids))
        cos, sin = model.model.rotary_emb(x, torch.arange(7)[None])
        q, k = attn.queries_and_keys(x, cos, sin)
    torch.testing.assert_close(
        out.attentions[0][:, 0, 6], F.softmax(q[:, 0, 6:7] @ k[:, 0].mT / math.sqrt(D), -1)[:, 0]
    )


def test_sdpa_returns_no_attention_weights_and_says_so_in_the_config():
    model = build()
    with torch.no_grad():
        assert model(batch()[0], output_attentions=True).attentions == ()
    with pytest.raises(ValueError, match="output_attentions"):
        model.config.output_attentions = True


def test_hidden_states_are_embeddings_then_each_block_before_the_final_norm():
    """The stability probes read `hidden_states[1:]` as the residual stream after each block."""
    model = build(qk_norm=True)
    ids, _ = batch(length=9)
    block_outputs = []
    handles = [b.register_forward_hook(lambda m, a, o: block_outputs.append(o)) for b in model.model.layers]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    assert len(out.hidden_states) == L + 1
    torch.testing.assert_close(out.hidden_states[0], model.model.embed_tokens(ids))
    for got, expected in zip(out.hidden_states[1:], block_outputs, strict=True):
        assert torch.equal(got, expected)
    base = model.model(ids, output_hidden_states=True)
    torch.testing.assert_close(base.last_hidden_state, model.model.norm(out.hidden_states[-1]))
    assert not torch.allclose(base.last_hidden_state, out.hidden_states[-1])
    model.config.output_hidden_states = True
    with torch.no_grad():
        assert len(model(ids).hidden_states) == L + 1


def flatten(output) -> list:
    """Tensors and caches of a model output (tuple or dataclass), in order, nested tuples unrolled."""
    items = output.to_tuple() if hasattr(output, "to_tuple") else output
    flat = []
    for item in items:
        flat.extend(flatten(item) if isinstance(item, tuple) else [item])
    return flat


def assert_same_outputs(a, b) -> None:
    a, b = flatten(a), flatten(b)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y)
        else:  # a cache: the same keys in every layer
            for la, lb in zip(x.layers, y.layers, strict=True):
                torch.testing.assert_close(la.keys, lb.keys)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"labels": True}, {"output_hidden_states": True, "use_cache": True}, {"output_attentions": True}],
    ids=["plain", "labels", "hidden_and_cache", "attentions"],
)
def test_tuple_and_dict_outputs_are_equivalent(kwargs):
    model = build(attn="eager")
    ids, _ = batch()
    kwargs = {**kwargs, "labels": ids} if kwargs.get("labels") else kwargs
    with torch.no_grad():
        as_dict = model(ids, **kwargs)
        as_tuple = model(ids, return_dict=False, **kwargs)
        base = model.model(ids, return_dict=False, **{k: v for k, v in kwargs.items() if k != "labels"})
        model.config.return_dict = False
        from_config = model(ids, **kwargs)
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple) and isinstance(base, tuple)
    assert_same_outputs(as_dict, as_tuple)
    assert_same_outputs(as_dict, from_config)
    torch.testing.assert_close(model.lm_head(base[0]), as_tuple[1 if "labels" in kwargs else 0])


# ---------------------------------------------------------------------------------------------------------------------
# Generation


def generate_kwargs(mode: str, seed: int = 0) -> dict:
    if mode == "assisted":
        assistant = build(seed=seed + 1, attn="eager", num_hidden_layers=1)
        return {"assistant_model": assistant, "do_sample": False}
    return {"greedy": {"do_sample": False}, "sample": {"do_sample": True}, "beam": {"num_beams": 2}}[mode]


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam", "assisted"])
def test_generate_returns_attentions_and_hidden_states_in_dict_outputs(mode):
    model = build(attn="eager")
    ids, mask = batch(size=1 if mode == "assisted" else 2, length=6)
    new = 5
    torch.manual_seed(0)
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_attentions=True,
        output_hidden_states=True,
        output_scores=True,
        **generate_kwargs(mode),
    )
    rows = ids.shape[0] * (2 if mode == "beam" else 1)
    assert out.sequences.shape == (ids.shape[0], 6 + new)
    assert len(out.scores) == len(out.attentions) == len(out.hidden_states) == new
    for step, (attentions, hidden) in enumerate(zip(out.attentions, out.hidden_states, strict=True)):
        q_len, kv_len = (6, 6) if step == 0 else (1, 6 + step)
        check_attentions(attentions, rows, q_len, kv_len)
        assert len(hidden) == L + 1 and all(h.shape == (rows, q_len, CONFIG["hidden_size"]) for h in hidden)
    if mode in ("greedy", "assisted"):  # greedy assisted decoding is lossless: the same tokens as plain greedy
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert torch.equal(out.sequences, plain)


def test_past_key_values_keyword_is_deprecated_not_dropped():
    model = build()
    ids, _ = batch(length=9)
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        cache = model(ids[:, :-1], use_cache=True).cache
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
            old_keyword = model(ids[:, -1:], past_key_values=cache)
        assert old_keyword.cache is cache and cache.get_seq_length() == 9
        without_cache = model(ids[:, -1:]).logits[:, -1]
        base_cache = model.model(ids[:, :-1], use_cache=True).cache
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
            base = model.model(ids[:, -1:], past_key_values=base_cache)
    torch.testing.assert_close(old_keyword.logits[:, -1], full)
    torch.testing.assert_close(model.lm_head(base.last_hidden_state[:, -1]), full)
    assert (without_cache - full).abs().max() > 1e-3


def test_use_cache_defaults_build_a_cache_for_inference_only():
    model = build()
    ids, _ = batch()
    with torch.no_grad():
        assert model(ids).cache.get_seq_length() == 10  # config.use_cache: generation-style calls get a cache
        assert model(ids, use_cache=False).cache is None
        assert model.train()(ids).cache is None  # training never reads one, so none is built


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_static_cache_generation_matches_dynamic_cache(attn):
    model = build(seed=2, attn=attn, qk_norm=True)
    ids, mask = batch(length=7, pad=3)
    kwargs = dict(
        attention_mask=mask, max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    dynamic = model.generate(ids, **kwargs)
    static = model.generate(ids, cache_implementation="static", **kwargs)
    assert torch.equal(static.sequences, dynamic.sequences)
    torch.testing.assert_close(torch.stack(static.scores), torch.stack(dynamic.scores), rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.gpu
def test_compiled_static_cache_generation_on_cuda_matches_the_dynamic_cache():
    """On CUDA, `generate` with a static cache compiles the decoding step with inductor (transformers'
    auto-compile, which `_can_compile_fullgraph` allows) and gives the tokens of eager decoding with a dynamic cache,
    and its scores to 1e-4: float32 on both paths, the compiled one summing in inductor's order (and, with
    rms_impl=auto, through PyTorch instead of the eager path's kernel). A trained model, so that no greedy choice is
    a near tie between untrained logits."""
    from tiny_models import fixed_ids, trained_model

    model = trained_model(steps=8, qk_norm=True).cuda()
    ids = fixed_ids().cuda()
    kwargs = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    torch._dynamo.reset()
    dynamic = model.generate(ids, **kwargs)
    static = model.generate(ids, cache_implementation="static", **kwargs)
    assert hasattr(model, "_compiled_call")  # the decoding steps ran compiled
    torch._dynamo.reset()
    assert torch.equal(static.sequences, dynamic.sequences)
    torch.testing.assert_close(torch.stack(static.scores), torch.stack(dynamic.scores), rtol=1e-4, atol=1e-4)


def test_compiled_decoding_step_traces_with_no_graph_break():
    """`fullgraph=True` raises at the first graph break, so this is what `_can_compile_fullgraph` declares. The
    `eager` backend checks the tracing alone: inductor would add minutes of C++ compilation on CPU."""
    model = build(seed=3, qk_norm=True)
    ids, _ = batch(length=6)
    caches = [StaticCache(config=model.config, max_cache_len=12) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            token = model(ids, cache=cache).logits[:, -1:].argmax(-1)
        step = dict(cache=caches[0], position_ids=torch.full((2, 1), 6))
        expected = model(token, **step).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        got = compiled(token, **{**step, "cache": caches[1]}).logits
    torch._dynamo.reset()
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------------------------------
# Gradient checkpointing


@pytest.mark.parametrize(
    "overrides, reentrant",
    [({}, False), ({"qk_norm": True}, True), ({"norm_placement": "post"}, False), ({"norm_placement": "peri"}, True)],
)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(overrides, reentrant):
    plain = build(seed=4, **overrides).train()
    checkpointed = copy.deepcopy(plain)
    assert plain.supports_gradient_checkpointing
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    assert checkpointed.is_activation_checkpointing and not plain.is_activation_checkpointing
    mlp_calls = []
    for layer in checkpointed.model.layers:
        # a pre-hook: the recomputation stops inside the last module whose saved tensors backward needs
        layer.mlp.register_forward_pre_hook(lambda m, a: mlp_calls.append(1))
    ids, _ = batch(length=12)
    losses = []
    for model in (plain, checkpointed):
        out = model(ids, labels=ids, use_cache=False, output_hidden_states=True)
        out.loss.backward()
        losses.append(out.loss)
        assert len(out.hidden_states) == L + 1  # captured once, not again by the recomputation
    assert len(mlp_calls) == 2 * L  # each block ran again in the backward pass
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=0)
    grads = dict(plain.named_parameters())
    for name, param in checkpointed.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-6, atol=1e-8, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# RoPE parameters


def test_linear_rope_scaling_is_position_interpolation():
    """factor 2 at positions 2p is the unscaled model at positions p: the meaning, not just the buffer."""
    default = build(seed=5)
    linear = build(seed=5, rope_parameters={"rope_type": "linear", "factor": 2.0})
    ids, _ = batch(length=8)
    with torch.no_grad():
        expected = default(ids, position_ids=torch.arange(8)[None]).logits
        got = linear(ids, position_ids=2 * torch.arange(8)[None]).logits
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    ],
    ids=lambda r: r["rope_type"],
)
def test_scaled_rope_types_come_from_the_library_and_survive_save_and_load(rope, tmp_path):
    model = build(seed=6, rope_parameters={**rope, "rope_theta": 500.0})
    rotary = model.model.rotary_emb
    expected, scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](model.config)
    torch.testing.assert_close(rotary.inv_freq, expected)
    assert rotary.attention_scaling == scaling
    unscaled = 1.0 / (500.0 ** (torch.arange(0, D, 2).float() / D))
    if rope["rope_type"] != "dynamic":  # dynamic only rescales past max_position_embeddings
        assert not torch.allclose(rotary.inv_freq, unscaled)
    ids, _ = batch(length=12)
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.rope_parameters == model.config.rope_parameters
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_dynamic_rope_rescales_past_the_trained_length_and_back():
    model = build(seed=6, rope_parameters={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=8)
    rotary = model.model.rotary_emb
    original = rotary.inv_freq.clone()
    with torch.no_grad():
        model(batch(length=20)[0])
        # NTK-aware: the base grows, so every frequency but the first (theta^0 = 1) falls
        assert (rotary.inv_freq[1:] < original[1:]).all() and rotary.inv_freq[0] == original[0]
        model(batch(length=6)[0])
    torch.testing.assert_close(rotary.inv_freq, original)


def test_legacy_rope_theta_moves_into_rope_parameters(tmp_path):
    config = NormGPTConfig(**CONFIG, rope_theta=500.0)
    assert config.rope_parameters == {"rope_theta": 500.0, "rope_type": "default"}
    assert NormGPTConfig(**CONFIG).rope_parameters == {"rope_theta": 10000.0, "rope_type": "default"}
    config.save_pretrained(tmp_path)
    saved = (tmp_path / "config.json").read_text()
    assert '"rope_parameters"' in saved and '"rope_theta": 500.0' in saved and saved.count("rope_theta") == 1


@pytest.mark.parametrize(
    "rope, message",
    [
        ({"rope_type": "spiral"}, "unknown rope_parameters rope_type 'spiral'; valid: default, linear, dynamic, yarn"),
        ({"rope_type": "linear"}, "Missing required keys in `rope_parameters` for 'rope_type'='linear': {'factor'}"),
        ({"rope_theta": -1.0}, "rope_theta must be > 0, got -1.0"),
    ],
)
def test_bad_rope_parameters_are_one_clear_error(rope, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{")):
        NormGPTConfig(**CONFIG, rope_parameters=rope)


def test_legacy_run_directory_loads_with_identical_logits():
    """tests/data/legacy_run (written at a551a15, its config has only `rope_theta`) loaded with the current code gives
    the logits and greedy tokens recorded with the code of f7e8518 (`legacy_run_logits.safetensors`), to the bit:
    unpadded, left-padded (its real positions) and generated."""
    expected = load_file(DATA / "legacy_run_logits.safetensors")
    model = AutoModelForCausalLM.from_pretrained(DATA / "legacy_run").eval()
    assert isinstance(model, NormGPTForCausalLM) and model.config.rope_parameters["rope_theta"] == 10000.0
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
        padded = model(expected["padded_input_ids"], attention_mask=expected["padded_attention_mask"]).logits
    assert torch.equal(logits, expected["logits"])
    real = expected["padded_attention_mask"].bool()
    assert torch.equal(padded[real], expected["padded_logits"][real])
    greedy = model.generate(expected["input_ids"][:, :8], max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(greedy, expected["greedy"])


# ---------------------------------------------------------------------------------------------------------------------
# Heads


def test_classification_heads_share_the_trunk_and_register_with_auto_classes(tmp_path):
    lm = build(seed=7)
    lm.save_pretrained(tmp_path / "lm")
    seq = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3).eval()
    tok = AutoModelForTokenClassification.from_pretrained(tmp_path / "lm", num_labels=5).eval()
    assert isinstance(seq, NormGPTForSequenceClassification) and isinstance(tok, NormGPTForTokenClassification)
    for head in (seq, tok):
        for name, param in lm.model.named_parameters():
            assert torch.equal(dict(head.model.named_parameters())[name], param), name
    ids, _ = batch(length=8)
    ids[1, 5:] = 0  # right padding: row 1's last real token is at 4
    with torch.no_grad():
        trunk = lm.model(ids).last_hidden_state
        out = seq(ids, labels=torch.tensor([0, 2]))
        tokens = tok(ids, labels=torch.zeros_like(ids))
    torch.testing.assert_close(out.logits, seq.score(trunk[[0, 1], [7, 4]]))
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 2])))
    assert tokens.logits.shape == (2, 8, 5) and tokens.loss.ndim == 0
    auto_map = NormGPTConfig.from_pretrained(tmp_path / "lm").auto_map
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_normgpt.NormGPTForSequenceClassification"
    assert auto_map["AutoModelForTokenClassification"] == "modeling_normgpt.NormGPTForTokenClassification"
    assert auto_map["AutoModel"] == "modeling_normgpt.NormGPTModel"
    assert isinstance(AutoModelForSequenceClassification.from_config(lm.config), NormGPTForSequenceClassification)
    assert isinstance(build(cls=NormGPTModel), NormGPTModel)


# ---------------------------------------------------------------------------------------------------------------------
# The query/key probe point: what a hook there receives, on every backend, is what the scores are made of


def run_scenario(model, scenario: str, **kwargs):
    """The last forward pass of a scenario: training-like, left-padded, a decoding step with a dynamic cache, and a
    decoding step with a static cache."""
    ids, mask = batch(length=7, pad=3 if scenario == "padded" else 0)
    if scenario in ("train", "padded"):
        return model(ids, attention_mask=mask if scenario == "padded" else None, use_cache=False, **kwargs)
    cache = StaticCache(config=model.config, max_cache_len=12) if scenario == "static" else None
    out = model(ids[:, :6], cache=cache, use_cache=True, **kwargs)
    return model(ids[:, 6:], cache=out.cache, position_ids=torch.full((2, 1), 6), use_cache=True, **kwargs)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("scenario", ["train", "padded", "dynamic", "static"])
def test_probe_receives_rotated_queries_keys_and_a_boolean_mask(attn, scenario):
    model = build(seed=8, attn=attn, qk_norm=True)
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    seen = []
    probe = model.model.layers[1].self_attn.logits_probe
    handle = probe.register_forward_hook(lambda m, a, kw, o: seen.append(kw), with_kwargs=True)
    with torch.no_grad():
        run_scenario(model, scenario)
        weights = run_scenario(reference, scenario, output_attentions=True).attentions[1]  # [B, H, T, S]
    handle.remove()
    q, k, mask = seen[-1]["query"], seen[-1]["key"], seen[-1]["attn_mask"]
    T, S = q.shape[2], k.shape[2]
    assert q.shape == (2, H, T, D) and k.shape == (2, HKV, S, D)
    assert S == {"train": 7, "padded": 7, "dynamic": 7, "static": 12}[scenario]
    if scenario == "train":
        assert mask is None  # plain causal over S == T keys
        allowed = torch.ones(T, S, dtype=torch.bool).tril()
    else:
        assert mask.dtype == torch.bool and mask.shape[-2:] == (T, S)
        allowed = mask.expand(2, 1, T, S)
    scores = q @ k.repeat_interleave(H // HKV, dim=1).mT / math.sqrt(D)  # [B, H, T, S]
    rows = allowed.any(-1).expand(2, H, T)  # a padding query attends to nothing
    probs = F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    torch.testing.assert_close(probs[rows], weights[rows])
