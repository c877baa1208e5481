"""GGUF files, read back with gguf's own reader: architecture keys, tensors and shapes, values, the tokenizer
declared as GPT-2's byte-level BPE with its merges and special ids, and the RoPE row order llama.cpp expects."""

import json

import gguf
import numpy as np
import pytest
import torch
from tiny_models import LEGACY_RUN, VOCAB, save_with_tokenizer, trained_model
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from train.publish.export import export_model_dir
from train.publish.gguf import GGUFError, gguf_problem, pairs_adjacent, tokenizer_problem, write_gguf

VARIANTS = {  # overrides -> (llama.cpp architecture, q/k rows reordered)
    "llama": ({"norm_type": "rms"}, True),
    "qwen3": ({"norm_type": "rms", "qk_norm": True}, False),
    "stablelm": ({"norm_type": "layer"}, False),
    "olmo": ({"norm_type": "layer_noaffine", "rms_norm_eps": 1e-5}, True),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for arch, (overrides, _) in VARIANTS.items():
        src = save_with_tokenizer(trained_model(steps=3, **overrides), root / f"{arch}-src")
        export_model_dir(src, root / arch)
        out[arch] = root / arch
    return out


def field(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_f32_gguf_holds_the_weights_the_hyperparameters_and_the_tokenizer(exports, arch, tmp_path):
    model_dir = exports[arch]
    entry = write_gguf(model_dir, tmp_path / "m.gguf", "f32")
    assert entry == {
        "file": "m.gguf",
        "type": "f32",
        "architecture": arch,
        "bytes": (tmp_path / "m.gguf").stat().st_size,
    }
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    config = json.loads((model_dir / "config.json").read_text())
    assert field(reader, "general.architecture") == arch
    assert field(reader, f"{arch}.context_length") == config["max_position_embeddings"]
    assert field(reader, f"{arch}.embedding_length") == config["hidden_size"]
    assert field(reader, f"{arch}.block_count") == config["num_hidden_layers"]
    assert field(reader, f"{arch}.feed_forward_length") == config["intermediate_size"]
    assert field(reader, f"{arch}.attention.head_count") == config["num_attention_heads"]
    assert field(reader, f"{arch}.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(reader, f"{arch}.rope.dimension_count") == config["hidden_size"] // config["num_attention_heads"]
    assert field(reader, f"{arch}.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    eps_key = "layer_norm_rms_epsilon" if arch in ("llama", "qwen3") else "layer_norm_epsilon"
    eps = {"llama": 1e-6, "qwen3": 1e-6, "stablelm": 1e-6, "olmo": 1e-5}[arch]
    assert field(reader, f"{arch}.attention.{eps_key}") == pytest.approx(eps, rel=1e-6)

    # The tokenizer, as llama.cpp's gpt2 vocabulary reads it.
    tokenizer = json.loads((LEGACY_RUN / "tokenizer.json").read_text())
    assert (field(reader, "tokenizer.ggml.model"), field(reader, "tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[0] == "<|endoftext|>"
    assert all(tokens[i] == t for t, i in tokenizer["model"]["vocab"].items())
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[0] == gguf.TokenType.CONTROL and set(types[1:]) == {gguf.TokenType.NORMAL}
    merges = field(reader, "tokenizer.ggml.merges")
    assert merges == [" ".join(pair) for pair in tokenizer["model"]["merges"]]
    for kind in ("bos", "eos", "padding", "unknown"):
        assert field(reader, f"tokenizer.ggml.{kind}_token_id") == 0
    assert field(reader, "tokenizer.ggml.add_bos_token") is False

    # Every weight once, float32 and bit-identical, in GGML's (reversed) shape order.
    from safetensors.torch import load_file

    state = load_file(model_dir / "model.safetensors")
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(state) + (arch == "stablelm")  # stablelm needs the tied output matrix written
    assert "output.weight" in tensors or arch != "stablelm"
    assert {t.tensor_type for t in tensors.values()} == {gguf.GGMLQuantizationType.F32}
    embed = tensors["token_embd.weight"]
    assert list(embed.shape) == [config["hidden_size"], VOCAB]
    assert np.array_equal(embed.data.reshape(VOCAB, -1), state["model.embed_tokens.weight"].numpy())
    q = state["model.layers.0.self_attn.q_proj.weight"]
    expected_q = pairs_adjacent(q, config["num_attention_heads"]) if VARIANTS[arch][1] else q
    assert np.array_equal(tensors["blk.0.attn_q.weight"].data.reshape(q.shape), expected_q.numpy())
    if arch == "qwen3":
        assert np.array_equal(tensors["blk.0.attn_q_norm.weight"].data, state["model.layers.0.self_attn.q_norm.weight"])
    if arch == "stablelm":
        assert np.array_equal(tensors["blk.0.attn_norm.bias"].data, state["model.layers.0.input_layernorm.bias"])
    if arch == "olmo":
        assert not [name for name in tensors if "norm" in name]  # OLMo's LayerNorm has no parameters


def test_q8_0_quantizes_the_matrices_and_keeps_norms_float32(exports, tmp_path):
    write_gguf(exports["stablelm"], tmp_path / "m.gguf", "q8_0")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    from safetensors.torch import load_file

    state = load_file(exports["stablelm"] / "model.safetensors")
    for tensor in reader.tensors:
        ndim = len(tensor.shape)
        wanted = gguf.GGMLQuantizationType.Q8_0 if ndim == 2 else gguf.GGMLQuantizationType.F32
        assert tensor.tensor_type == wanted, tensor.name
    down = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    values = gguf.quants.dequantize(down.data, down.tensor_type)
    original = state["model.layers.1.mlp.down_proj.weight"].numpy()
    error = np.abs(values.reshape(original.shape) - original).max()
    assert 0 < error <= np.abs(original).max() / 127  # quantized (not a copy), within one q8_0 step
    assert (tmp_path / "m.gguf").stat().st_size < 0.5 * write_gguf(exports["stablelm"], tmp_path / "f.gguf")["bytes"]


def test_reordered_rows_make_adjacent_pair_rope_equal_half_split_rope():
    """llama.cpp's llama/olmo graphs rotate features (2i, 2i+1); transformers rotates (i, i + d/2). With the rows of
    q_proj reordered by pairs_adjacent, the scores q·k of both conventions are the same."""
    torch.manual_seed(0)
    heads, d, width, T = 2, 8, 16, 5
    wq, wk, x = torch.randn(heads * d, width), torch.randn(heads * d, width), torch.randn(T, width)
    angles = torch.arange(T)[:, None] * (1.0 / 10000 ** (torch.arange(0, d, 2) / d))  # [T, d/2]
    cos, sin = torch.cat([angles.cos()] * 2, -1)[None], torch.cat([angles.sin()] * 2, -1)[None]

    def hf_scores(wq, wk):
        q, k = (x @ wq.T).view(T, heads, d).transpose(0, 1), (x @ wk.T).view(T, heads, d).transpose(0, 1)
        q, k = apply_rotary_pos_emb(q[None], k[None], cos, sin)  # what the stock Llama runs
        return q[0] @ k[0].transpose(-1, -2)

    def adjacent_scores(wq, wk):
        def rotate(v):  # [H, T, d] with pairs (2i, 2i+1)
            a, b = v[..., 0::2], v[..., 1::2]
            return torch.stack([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1).flatten(
                -2
            )

        q, k = (x @ wq.T).view(T, heads, d).transpose(0, 1), (x @ wk.T).view(T, heads, d).transpose(0, 1)
        return rotate(q) @ rotate(k).transpose(-1, -2)

    expected = hf_scores(wq, wk)
    torch.testing.assert_close(adjacent_scores(pairs_adjacent(wq, heads), pairs_adjacent(wk, heads)), expected)
    assert not torch.allclose(adjacent_scores(wq, wk), expected)  # without the reordering they differ


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"norm_type": "rms", "hidden_act": "gelu"}, "squared-ReLU"),
        ({"norm_type": "layer", "hidden_act": "gelu"}, "tanh-approximated GELU"),
        ({"norm_type": "dyt"}, "remote-code model"),
    ],
)
def test_architectures_llama_cpp_computes_differently_are_refused_with_the_reason(overrides, reason, tmp_path):
    src = save_with_tokenizer(trained_model(steps=1, **overrides), tmp_path / "src")
    export_model_dir(src, tmp_path / "m")
    assert reason in gguf_problem(tmp_path / "m")
    with pytest.raises(GGUFError, match=reason):
        write_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_only_gpt2_style_byte_level_bpe_is_declared_as_gpt2():
    tokenizer = json.loads((LEGACY_RUN / "tokenizer.json").read_text())
    assert tokenizer_problem(tokenizer) is None
    assert "normalizer" in tokenizer_problem({**tokenizer, "normalizer": {"type": "NFC"}})
    assert "not BPE" in tokenizer_problem({**tokenizer, "model": {"type": "Unigram"}})
    split = {"type": "Metaspace", "replacement": "▁"}
    assert "byte-level" in tokenizer_problem({**tokenizer, "pre_tokenizer": split})
