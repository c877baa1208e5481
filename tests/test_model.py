"""The model: norm numerics, config validation, causality, generation with and without cache, save/load."""

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from tiny_models import run_elsewhere
from transformers import AutoModelForCausalLM

from model import NORMS, LayerNorm, NormGPTConfig, NormGPTForCausalLM, RMSNorm, build_norm
from model.norms import BUILTIN_NORMS, DyT, Identity, PartialRMSNorm, describe_norms


def tiny_config(**overrides) -> NormGPTConfig:
    kwargs = dict(
        vocab_size=101,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=0,
    )
    return NormGPTConfig(**{**kwargs, **overrides})


def tiny_model(seed: int = 0, **overrides) -> NormGPTForCausalLM:
    torch.manual_seed(seed)
    return NormGPTForCausalLM(tiny_config(**overrides)).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Norms


def test_rmsnorm_matches_torch_rmsnorm_float32():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 96) * 3 + 0.5
    ours = RMSNorm(96, eps=1e-6, impl="torch")
    ref = torch.nn.RMSNorm(96, eps=1e-6)
    with torch.no_grad():
        w = torch.randn(96)
        ours.weight.copy_(w)
        ref.weight.copy_(w)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rmsnorm_llama_numerics_in_half_precision(dtype):
    """float32 statistics, cast back to the input dtype, then the weight multiply in that dtype."""
    torch.manual_seed(0)
    x = (torch.randn(4, 80) * 20).to(dtype)  # large values: squaring them in fp16 would overflow
    norm = RMSNorm(80, eps=1e-6, impl="torch").to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(80) + 0.5)
    y = norm(x)
    assert y.dtype == dtype
    xf = x.float()
    expected = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    assert torch.equal(y, expected)
    assert torch.isfinite(y).all()
    # and close to a float64 computation, within the dtype's rounding
    ref = F.rms_norm(x.double(), (80,), norm.weight.double(), 1e-6)
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


def test_rmsnorm_eps_inside_sqrt_and_zero_rows():
    norm = RMSNorm(8, eps=1e-6, impl="torch")
    assert torch.equal(norm(torch.zeros(2, 8)), torch.zeros(2, 8))
    x = torch.full((1, 8), 1e-4)
    expected = 1e-4 / torch.sqrt(torch.tensor(1e-8 + 1e-6))
    torch.testing.assert_close(norm(x), torch.full((1, 8), expected.item()))


def test_layernorm_matches_functional():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 48) * 2 + 1
    norm = LayerNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
        norm.bias.copy_(torch.randn(48))
    torch.testing.assert_close(norm(x), F.layer_norm(x, (48,), norm.weight, norm.bias, 1e-5))


def test_add_forward_is_add_then_norm():
    torch.manual_seed(0)
    for norm in (RMSNorm(32, impl="torch"), LayerNorm(32)):
        x, r = torch.randn(3, 32), torch.randn(3, 32)
        y, h = norm.add_forward(x, r)
        torch.testing.assert_close(h, x + r)
        torch.testing.assert_close(y, norm(x + r))


def test_norm_registry_is_the_single_source_of_names():
    assert set(NORMS) >= BUILTIN_NORMS
    assert isinstance(build_norm(tiny_config(norm_type="rms")), RMSNorm)
    assert isinstance(build_norm(tiny_config(norm_type="layer")), LayerNorm)
    cfg = tiny_config()
    cfg.norm_type = "batch"  # bypass the config's own check to reach the registry's
    with pytest.raises(ValueError, match="unknown norm_type 'batch'; valid: rms, layer, layer_nobias, "):
        build_norm(cfg)


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    norm = RMSNorm(16, impl="triton")
    with pytest.raises(RuntimeError, match="rms_impl='triton' cannot run on a cpu tensor"):
        norm(torch.randn(2, 16))


def test_the_rms_kernel_is_a_runtime_choice_never_saved(tmp_path):
    """`set_rms_impl` picks the kernel of every RMSNorm (QK-norm's too); config.json never carries it, and a config
    from an earlier version that does loads with it dropped, computing the same logits."""
    model = tiny_model(qk_norm=True)
    model.set_rms_impl("torch")
    assert {m.impl for m in model.modules() if isinstance(m, RMSNorm)} == {"torch"}
    with pytest.raises(ValueError, match="unknown rms_impl 'cuda'; valid: auto, triton, torch"):
        model.set_rms_impl("cuda")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "rms_impl" not in saved
    (tmp_path / "config.json").write_text(json.dumps({**saved, "rms_impl": "triton"}))
    loaded = NormGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert not hasattr(loaded.config, "rms_impl") and "rms_impl" not in loaded.config.to_dict()
    assert {m.impl for m in loaded.modules() if isinstance(m, RMSNorm)} == {"auto"}
    ids = torch.randint(1, 101, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ---------------------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=100, num_attention_heads=3), r"num_attention_heads \(3\) must divide hidden_size \(100\)"),
        (dict(num_key_value_heads=3), r"num_key_value_heads \(3\) must divide num_attention_heads \(4\)"),
        (dict(norm_type="batch"), "unknown norm_type 'batch'; valid: rms, layer"),
        (dict(hidden_act="relu"), "unknown hidden_act 'relu'; valid: silu, gelu"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps must be > 0"),
        (dict(hidden_size=60, num_attention_heads=4), "must be even for RoPE"),
        (dict(dyt_attention_alpha_init=0.0), "dyt_attention_alpha_init must be a finite number > 0, got 0.0"),
        (dict(embedding_scale_init=float("inf")), "embedding_scale_init must be a finite number > 0, got inf"),
    ],
)
def test_config_rejects_impossible_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_derives_mlp_width():
    assert tiny_config(hidden_act="silu").intermediate_size == 192  # 8/3 * 64 = 170.7 -> 192
    assert tiny_config(hidden_act="gelu").intermediate_size == 256
    assert tiny_config().num_key_value_heads == 4


# ---------------------------------------------------------------------------------------------------------------------
# Model behaviour


@pytest.mark.parametrize("overrides", [{}, {"norm_type": "layer", "hidden_act": "gelu"}, {"num_key_value_heads": 2}])
def test_causality(overrides):
    """Changing a token changes no logit before it."""
    model = tiny_model(**overrides)
    x = torch.randint(1, 101, (2, 24))
    y = x.clone()
    y[:, 13] = (y[:, 13] + 7) % 101
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :13], b[:, :13], rtol=0, atol=1e-6)
    assert (a[:, 13:] - b[:, 13:]).abs().max() > 1e-3


def test_loss_is_shifted_cross_entropy_with_ignore_index():
    model = tiny_model()
    x = torch.randint(1, 101, (2, 12))
    labels = x.clone()
    labels[0, 5:] = -100
    with torch.no_grad():
        out = model(x, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 101), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    n = (labels[:, 1:] != -100).sum()
    with torch.no_grad():
        summed = model(x, labels=labels, num_items_in_batch=n).loss
    torch.testing.assert_close(summed, expected)


def test_gpt2_init_scales_residual_projections():
    model = tiny_model(num_hidden_layers=8, hidden_size=256, num_attention_heads=4, vocab_size=2048)
    block = model.model.layers[0]
    std_in = block.self_attn.q_proj.weight.std().item()
    std_out = block.self_attn.o_proj.weight.std().item()
    assert abs(std_in - 0.02) < 0.002
    assert abs(std_out - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)
    assert torch.equal(block.input_layernorm.weight, torch.ones(256))
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 1, "norm_type": "layer"}])
def test_cached_and_uncached_generation_agree(overrides):
    model = tiny_model(seed=3, **overrides)
    prompt = torch.randint(1, 101, (2, 7))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without = model.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape == (2, 19)
    assert torch.equal(with_cache, without)
    # each generated token is the argmax of a full, uncached forward pass over what came before
    with torch.no_grad():
        logits = model(with_cache[:, :-1], use_cache=False).logits
    assert torch.equal(logits[:, 6:].argmax(-1), with_cache[:, 7:])


def test_left_padded_batch_generates_like_unpadded_rows():
    model = tiny_model(seed=4)
    short = torch.randint(1, 101, (1, 5))
    long = torch.randint(1, 101, (1, 8))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    batched = model.generate(batch, attention_mask=mask, **kwargs)
    alone = model.generate(short, **kwargs)
    assert torch.equal(batched[0, 3:], alone[0])
    assert torch.equal(batched[1], model.generate(long, **kwargs)[0])


def test_hidden_states_are_returned_per_block():
    model = tiny_model()
    out = model(torch.randint(1, 101, (1, 9)), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (1, 9, 64)


# ---------------------------------------------------------------------------------------------------------------------
# Save and load, also where this project is not installed

LOAD_ELSEWHERE = textwrap.dedent(
    """
    import importlib.abc, json, sys, torch

    class Block(importlib.abc.MetaPathFinder):  # make the project unimportable, as on a machine without it
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("model", "train"):
                raise ModuleNotFoundError(name)
    sys.meta_path.insert(0, Block())
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    run_dir, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForCausalLM.from_pretrained(run_dir, trust_remote_code=True).eval()
    eager = AutoModelForCausalLM.from_pretrained(run_dir, trust_remote_code=True, attn_implementation="eager").eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(run_dir, trust_remote_code=True, num_labels=3)
    for m in (model, eager, classifier):
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
    with torch.no_grad():
        logits = model(ids).logits
        attentions = eager(ids, output_attentions=True).attentions
        scores = classifier.eval()(ids).logits
    gen = model.generate(ids[:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    print(json.dumps({"logits": logits.tolist(), "gen": gen.tolist(), "attentions": [list(a.shape) for a in attentions],
                      "eager": eager.config._attn_implementation, "scores": list(scores.shape)}))
    """
)


def load_in_clean_process(run_dir, ids: torch.Tensor, tmp_path) -> dict:
    return run_elsewhere(LOAD_ELSEWHERE, tmp_path, str(run_dir), json.dumps(ids.tolist()))


DYT_RECIPE = dict(
    norm_type="dyt", dyt_attention_alpha_init=0.8, dyt_alpha_init=0.2, dyt_bias=False, embedding_scale=True
)


# The code saved beside the weights is the whole model: the DyT recipe (positions, no bias, the embedding scalar)
# loads from it with the numbers it was saved with.
@pytest.mark.parametrize("overrides", [{"norm_type": "rms"}, DYT_RECIPE], ids=["rms", "dyt-recipe"])
def test_save_then_load_where_project_is_not_importable(tmp_path, overrides):
    model = tiny_model(seed=5, num_key_value_heads=2, **overrides)
    if overrides.get("embedding_scale"):
        with torch.no_grad():  # away from its initial value, so a copy that re-initialised it would show
            model.model.embed_scale.fill_(3.5)
    run_dir = tmp_path / "run"
    model.save_pretrained(run_dir)
    for name in ("config.json", "model.safetensors", "modeling_normgpt.py", "configuration_normgpt.py"):
        assert (run_dir / name).exists(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_normgpt.NormGPTForCausalLM"
    ids = torch.randint(1, 101, (2, 10))
    with torch.no_grad():
        expected = model(ids).logits
    got = load_in_clean_process(run_dir, ids, tmp_path)
    torch.testing.assert_close(torch.tensor(got["logits"]), expected, rtol=0, atol=1e-5)
    # the other backends and heads travel with the code: eager attention returns weights, a classifier loads
    assert got["eager"] == "eager" and got["attentions"] == [[2, 4, 10, 10]] * 2
    assert got["scores"] == [2, 3]
    expected_gen = model.generate(ids[:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert got["gen"] == expected_gen.tolist()


def test_from_pretrained_recomputes_rope_buffer(tmp_path):
    model = tiny_model(seed=6, rope_theta=500.0)
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    torch.testing.assert_close(loaded.model.rotary_emb.original_inv_freq, model.model.rotary_emb.inv_freq)
    assert loaded.config.rope_parameters == {"rope_theta": 500.0, "rope_type": "default"}
    ids = torch.randint(1, 101, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


# ---------------------------------------------------------------------------------------------------------------------
# Ablation variants: every norm in every placement trains, saves, reloads and generates

VARIANTS = [
    *({"norm_type": norm} for norm in NORMS if norm in BUILTIN_NORMS),
    {"norm_placement": "post"},
    {"norm_placement": "peri", "norm_type": "layer"},
    {"qk_norm": True, "z_loss": 1e-3},
    {"norm_type": "dyt", "norm_placement": "peri", "qk_norm": True},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_variant_trains_saves_reloads_and_generates(tmp_path, overrides):
    model = tiny_model(seed=7, **overrides).train()
    ids = torch.randint(1, 101, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)  # 1e-2 diverges without a norm: a real effect
    losses = []
    for _ in range(12):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses  # starts memorising the batch
    model.eval()
    model.save_pretrained(tmp_path / "v")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "v").eval()
    for key, value in overrides.items():
        assert getattr(loaded.config, key) == value
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    gen = loaded.generate(ids[:1, :4], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(gen, model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False, pad_token_id=0))


def test_placements_build_the_documented_blocks():
    pre = tiny_model(norm_placement="pre").model
    post = tiny_model(norm_placement="post").model
    peri = tiny_model(norm_placement="peri").model
    assert isinstance(pre.norm, RMSNorm) and isinstance(peri.norm, RMSNorm)
    assert isinstance(post.norm, Identity)  # a post-norm stream is normalized already
    assert {n for n, m in post.layers[0].named_children() if isinstance(m, RMSNorm)} == {
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    }
    assert {n for n, m in peri.layers[0].named_children() if isinstance(m, RMSNorm)} == {
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    }
    # post-norm normalizes the residual stream itself: every block's output has RMS ~1 (unit gains at init)
    with torch.no_grad():
        hidden = tiny_model(norm_placement="post")(torch.randint(1, 101, (2, 9)), output_hidden_states=True)
    for h in hidden.hidden_states[1:]:
        torch.testing.assert_close(h.pow(2).mean(-1).sqrt(), torch.ones(2, 9), rtol=1e-3, atol=1e-3)


def test_variant_norm_numerics():
    torch.manual_seed(0)
    x = torch.randn(3, 64) * 2
    prms = PartialRMSNorm(64, fraction=0.25, eps=1e-6)
    expected = x * torch.rsqrt(x[:, :16].pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(prms(x), expected)
    dyt = DyT(64, alpha_init=0.7)
    torch.testing.assert_close(dyt(x), torch.tanh(0.7 * x))
    assert [n for n, _ in DyT(64, bias=False).named_parameters()] == ["alpha", "weight"]
    noaffine = LayerNorm(64, eps=1e-5, elementwise_affine=False)
    assert list(noaffine.parameters()) == []
    torch.testing.assert_close(noaffine(x), F.layer_norm(x, (64,), eps=1e-5))
    assert [n for n, _ in LayerNorm(64, bias=False).named_parameters()] == ["weight"]
    assert torch.equal(Identity()(x), x)


def test_qk_norm_normalizes_each_head_and_z_loss_adds_log_z_squared():
    model = tiny_model(qk_norm=True)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_norm, RMSNorm) and attn.q_norm.weight.shape == (16,)
    ids = torch.randint(1, 101, (2, 10))
    plain = tiny_model(seed=9)
    with_z = tiny_model(seed=9, z_loss=1e-2)
    with torch.no_grad():
        out = plain(ids, labels=ids)
        log_z = torch.logsumexp(out.logits[:, :-1].float(), -1)
        torch.testing.assert_close(with_z(ids, labels=ids).loss, out.loss + 1e-2 * log_z.pow(2).mean())


def test_dyt_as_zhu_et_al_set_it_up_for_llms():
    """Each DyT layer starts at its position's alpha (the one before attention 4x the others in the recipe), without
    a bias, and the embeddings are multiplied by a learnable scalar that starts at sqrt(d). Every new parameter starts
    at a constant: the recipe draws no random number, so its matrices are its RMSNorm twin's (seeds stay paired)."""
    recipe = dict(norm_type="dyt", dyt_attention_alpha_init=0.8, dyt_alpha_init=0.2, dyt_bias=False)
    for placement, attention_input in (("pre", ["input_layernorm"]), ("peri", ["input_layernorm"]), ("post", [])):
        model = tiny_model(seed=3, norm_placement=placement, embedding_scale=True, **recipe)
        norms = {name: m for name, m in model.named_modules() if isinstance(m, DyT)}
        assert norms and all(m.bias is None for m in norms.values()), placement
        alphas = {name: m.alpha.item() for name, m in norms.items()}
        expected = {n: pytest.approx(0.8 if n.split(".")[-1] in attention_input else 0.2) for n in alphas}
        assert alphas == expected, placement
    assert model.model.embed_scale.item() == pytest.approx(8.0)  # sqrt(64)
    assert tiny_config(embedding_scale=True, embedding_scale_init=2.0).embedding_scale_init == 2.0
    rms = tiny_model(seed=3)
    shared = {k: v for k, v in rms.state_dict().items() if "layernorm" not in k and k != "model.norm.weight"}
    recipe_state = tiny_model(seed=3, embedding_scale=True, **recipe).state_dict()
    assert all(torch.equal(v, recipe_state[k]) for k, v in shared.items())
    # what the first block reads is the scaled embedding, whether the caller passes ids or embeddings
    model = tiny_model(seed=3, embedding_scale=True, embedding_scale_init=3.0, **recipe)
    ids = torch.randint(1, 101, (2, 9))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        torch.testing.assert_close(out.hidden_states[0], 3.0 * model.model.embed_tokens(ids))
        assert torch.equal(model(inputs_embeds=model.model.embed_tokens(ids)).logits, out.logits)
    text = describe_norms(model.config)
    assert "DyT alpha init 0.8 before attention, 0.2 elsewhere, no bias" in text
    assert "embeddings times a learnable scalar (init 3)" in text


def test_dyt_defaults_and_old_configs_build_the_model_they_always_did(tmp_path):
    """A config without the recipe's fields (every config.json written before them) gets one alpha everywhere, the
    bias, and no embedding scalar: the same parameters, and a checkpoint of it loads strictly with equal logits."""
    model = tiny_model(seed=2, norm_type="dyt", dyt_alpha_init=50.0)
    assert {m.alpha.item() for m in model.modules() if isinstance(m, DyT)} == {50.0}
    assert all(m.bias is not None for m in model.modules() if isinstance(m, DyT))
    assert model.model.embed_scale is None and "embed_scale" not in json.dumps(list(model.state_dict()))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("dyt_attention_alpha_init", "dyt_bias", "embedding_scale", "embedding_scale_init"):
        del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = NormGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.dyt_attention_alpha_init == 50.0 and loaded.config.dyt_bias is True
    ids = torch.randint(1, 101, (1, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_describe_norms_states_placement_eps_and_upcast():
    text = describe_norms(tiny_config(norm_type="rms", norm_placement="peri", qk_norm=True, rms_norm_eps=1e-5))
    assert text.startswith("rms norm, peri placement, eps=1e-05 (mean of squares and rsqrt in float32")
    assert "qk_norm" in text
    assert "no eps" in describe_norms(tiny_config(norm_type="dyt"))
