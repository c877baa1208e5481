"""GGUF files of a stock export, for llama.cpp, Ollama and LM Studio, written with the `gguf` package.

Written for the architectures whose llama.cpp graph computes what the model computes:

    LlamaForCausalLM -> llama, Qwen3ForCausalLM -> qwen3, StableLmForCausalLM -> stablelm, OlmoForCausalLM -> olmo

and refused, with the reason, for the others: llama.cpp's arcee graph always runs a squared-ReLU MLP, its starcoder2
graph tanh-approximated GELU (normgpt's GELU is exact), and a remote-code model has no llama.cpp architecture.

llama.cpp's own converter cannot take a normgpt model: it identifies the pre-tokenizer by hashing the ids a tokenizer
gives for a test string, and a vocabulary trained on your data matches no known hash. normgpt's tokenizer is GPT-2's
scheme (byte-level BPE, GPT-2's split regex, no normalizer), so it is declared as `gpt2` with pre-tokenizer `gpt-2`,
with the vocabulary, the merges and the special-token ids of tokenizer.json, after checking that it is that scheme.

Two details make llama.cpp compute the same function: its llama and olmo graphs rotate adjacent pairs of each head's
features (RoPE "normal" mode) where transformers rotates the two halves, so the rows of q_proj and k_proj are
reordered to match; and a tied output matrix is left out where llama.cpp reuses the token embedding (stablelm needs
it written). Every file is read back after writing and its tensors checked against the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.atomic_io import atomic_path
from train.publish.license import SPDX_ID
from train.publish.stock import OLMO_EPS
from train.run_directory import MODEL_CONFIG

GGUF_ARCHES = {  # stock architecture -> (llama.cpp architecture, rotates adjacent feature pairs)
    "LlamaForCausalLM": ("llama", True),
    "Qwen3ForCausalLM": ("qwen3", False),
    "StableLmForCausalLM": ("stablelm", False),
    "OlmoForCausalLM": ("olmo", True),
}
NO_GGUF = {
    "ArceeForCausalLM": "llama.cpp's arcee graph always uses a squared-ReLU MLP; this model's MLP is GELU",
    "Starcoder2ForCausalLM": "llama.cpp's starcoder2 graph uses tanh-approximated GELU; this model's GELU is exact",
    "NormGPTForCausalLM": "a remote-code model has no llama.cpp architecture (no stock class computes it)",
}
OUTPUT_REQUIRED = {"stablelm"}  # graphs that do not fall back to the token embedding for a tied output matrix
QUANT_TYPES = ("f32", "f16", "q8_0")


class GGUFError(ValueError):
    """A model that cannot be written as GGUF, or a file that failed its read-back; the message is one line."""


def _config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / MODEL_CONFIG
    if not path.is_file():
        raise GGUFError(f"'{model_dir}' holds no model (no {MODEL_CONFIG})")
    return json.loads(path.read_text())


def tokenizer_problem(tokenizer: dict[str, Any]) -> str | None:
    """Why a tokenizer.json is not GPT-2-style byte-level BPE (which `gpt2`/`gpt-2` declares), or None."""
    model, pre = tokenizer.get("model") or {}, tokenizer.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        return f"the tokenizer is {model.get('type')!r}, not BPE"
    if tokenizer.get("normalizer") is not None:
        return "the tokenizer has a normalizer, which GPT-2's scheme has not"
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        return "the pre-tokenizer is not byte-level with GPT-2's split regex and no prefix space"
    return None


def gguf_problem(model_dir: Path, architecture: str | None = None, rope: dict | None = None) -> str | None:
    """Why `model_dir` cannot be written as GGUF (one line), or None when it can. `architecture` and `rope` (its
    config.json's otherwise) let a caller ask before the stock export that would have them is written."""
    config = _config(model_dir)
    architecture = architecture or (config.get("architectures") or ["?"])[0]
    if architecture not in GGUF_ARCHES:
        return NO_GGUF.get(architecture, f"{architecture} has no llama.cpp architecture here")
    rope = (config.get("rope_parameters") if rope is None else rope) or {}
    if rope.get("rope_type", "default") != "default":
        return f"RoPE type {rope['rope_type']!r} is not written to GGUF here (only the default RoPE)"
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return "the model directory has no tokenizer.json"
    return tokenizer_problem(json.loads(path.read_text()))


def vocabulary(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings (byte-level, as tokenizer.json stores them) and llama.cpp token types, one per embedding row.
    Rows past the tokenizer (the vocabulary is padded to a multiple of 64) become unused placeholders."""
    import gguf

    tokenizer = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()}
    added = {a["id"]: a for a in tokenizer.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if max(by_id) >= vocab_size:
        raise GGUFError(f"the tokenizer has ids up to {max(by_id)}, past the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = Path(model_dir) / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    state: dict[str, torch.Tensor] = {}
    for name in files or ["model.safetensors"]:
        state.update(load_file(Path(model_dir) / name))
    return state


def pairs_adjacent(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from transformers' RoPE layout (feature i rotates with i + d/2) to llama.cpp's
    normal mode (feature 2i rotates with 2i + 1): new row 2i + j is old row j * d/2 + i."""
    out, rest = weight.shape[0], weight.shape[1:]
    return weight.reshape(heads, 2, out // heads // 2, *rest).transpose(1, 2).reshape(out, *rest)


def gguf_tensors(model_dir: Path, config: dict[str, Any], arch: str, adjacent_pairs: bool):
    """(llama.cpp tensor name, float32 array) for every weight, in the checkpoint's order."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    state = load_weights(model_dir)
    if arch in OUTPUT_REQUIRED and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for hf_name, tensor in state.items():
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFError(f"no llama.cpp {arch} tensor for '{hf_name}'")
        if adjacent_pairs and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads" if "q_proj" in hf_name else "num_key_value_heads"]
            tensor = pairs_adjacent(tensor, heads)
        yield name, tensor.float().numpy()


def add_hyperparameters(writer: Any, config: dict[str, Any], arch: str) -> None:
    """The llama.cpp keys of the architecture, from the stock config.json (as llama.cpp's loader reads them)."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)  # every feature of the head rotates (stablelm: partial_rotary_factor 1)
    writer.add_rope_freq_base(float(config["rope_parameters"]["rope_theta"]))
    if arch in ("llama", "qwen3"):
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    elif arch == "stablelm":
        writer.add_layer_norm_eps(config["layer_norm_eps"])
        writer.add_parallel_residual(False)
    elif arch == "olmo":
        writer.add_layer_norm_eps(OLMO_EPS)
    if arch == "llama":
        writer.add_vocab_size(config["vocab_size"])


def add_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> None:
    import gguf

    tokens, types = vocabulary(model_dir, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # checked by tokenizer_problem: byte-level BPE with GPT-2's regex
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise GGUFError("tokenizer.json has no BPE merges")
    special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/unk/pad ids, add_bos/add_eos where the files say
    # The tokenizer adds no special token around a text (no post-processor); llama.cpp must not either.
    for kind in ("bos", "eos"):
        if kind not in special.add_special_token:
            getattr(writer, f"add_add_{kind}_token")(False)


def encode(array: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    """The array as stored, and its raw GGML type where it is quantized. Norm gains and biases (1-D) stay float32,
    as do rows whose length is not a multiple of q8_0's 32-value block."""
    import gguf

    if qtype == "f32" or array.ndim == 1:
        return array.astype(np.float32), None
    if qtype == "f16":
        return array.astype(np.float16), None
    q8 = gguf.GGMLQuantizationType.Q8_0
    if array.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0]:
        return array.astype(np.float32), None
    return gguf.quants.quantize(array, q8), q8


def check_written(path: Path, expected: dict[str, np.ndarray], vocab_size: int) -> None:
    """Read the file back: every tensor there, with its shape, and its values as written (f16: within its rounding;
    q8_0: within one quantization step, max|x|/127 of the tensor, which covers the float16 block scale too)."""
    import gguf

    reader = gguf.GGUFReader(path)
    found = {t.name: t for t in reader.tensors}
    if found.keys() != expected.keys():
        raise GGUFError(f"{path.name}: tensors {sorted(found.keys() ^ expected.keys())[:3]} differ after writing")
    for name, array in expected.items():
        tensor = found[name]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(array.shape).astype(np.float32)
        bound = np.abs(array).max() / 127 if tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0 else 0.0
        if tensor.tensor_type == gguf.GGMLQuantizationType.F16:
            bound = np.abs(array).max() * 2**-10
        if not np.abs(values - array).max() <= bound:
            raise GGUFError(f"{path.name}: tensor {name} differs from the weights after writing")
    tokens = reader.get_field(gguf.Keys.Tokenizer.LIST)
    if tokens is None or len(tokens.data) != vocab_size:
        raise GGUFError(f"{path.name}: the token list did not survive writing")


def write_gguf(model_dir: Path, path: Path, qtype: str = "f32", name: str | None = None) -> dict[str, Any]:
    """Write the stock export in `model_dir` as one GGUF file at `path` (atomically, read back and checked), with
    tensors in `qtype` (f32, f16 or q8_0). Returns the export.json entry for the file."""
    import gguf

    if qtype not in QUANT_TYPES:
        raise GGUFError(f"unknown GGUF type {qtype!r}; valid: {', '.join(QUANT_TYPES)}")
    model_dir, path = Path(model_dir), Path(path)
    problem = gguf_problem(model_dir)
    if problem:
        raise GGUFError(f"no GGUF for '{name or model_dir.name}': {problem}")
    config = _config(model_dir)
    arch, adjacent_pairs = GGUF_ARCHES[config["architectures"][0]]
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
    expected: dict[str, np.ndarray] = {}
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(name or model_dir.name)
        writer.add_license(SPDX_ID)
        add_hyperparameters(writer, config, arch)
        writer.add_file_type(file_types.get(qtype, gguf.LlamaFileType.MOSTLY_Q8_0))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_tokenizer(writer, model_dir, config["vocab_size"])
        for tensor_name, array in gguf_tensors(model_dir, config, arch, adjacent_pairs):
            data, raw_dtype = encode(array, qtype)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
            expected[tensor_name] = array
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        check_written(tmp, expected, config["vocab_size"])
    return {"file": path.name, "type": qtype, "architecture": arch, "bytes": path.stat().st_size}
