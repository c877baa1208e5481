"""llama.cpp against transformers on the same model: logits, tokenization and greedy continuations.

    normgpt export runs/tiny-rms out/tiny --gguf f32,q8_0
    python scripts/compare_llama_cpp.py out/tiny                     # every *.gguf beside the model
    python scripts/compare_llama_cpp.py out/tiny --texts held_out.txt --new_tokens 32

For each text (a paragraph of --texts, or built-in Python and English snippets) both runtimes score the same token
ids: the table gives the largest |logit difference| over every position, how many texts llama.cpp tokenizes to the
same ids as the transformers tokenizer, and how many greedy continuations are token for token the same. llama.cpp
runs with a float32 KV cache (its default, float16, rounds keys and values; `--kv f16` measures that).

Needs llama-cpp-python (`pip install llama-cpp-python`, a source build that takes tens of minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.cli import OneLineParser

TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "import os\nimport sys\n\n\nclass Path:\n    def __init__(self, name):\n",
    "    for key, value in sorted(items.items()):\n        if value is None:\n",
    'raise ValueError(f"unknown mode {mode!r}")\n',
    "The quick brown fox jumps over the lazy dog.",
    "    return self._data[index]\n\n    def __len__(self):\n",
    "# Copyright 2001 Python Software Foundation\n",
    "try:\n    import threading\nexcept ImportError:\n    threading = None\n",
]
GGML_F32, GGML_F16 = 0, 1


def greedy_transformers(model: Any, ids: list[int], new_tokens: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


def greedy_llama_cpp(llm: Any, ids: list[int], new_tokens: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


@contextlib.contextmanager
def weights_as_stored():
    """llama.cpp loads the weights as the GGUF stores them, without its CPU "extra buffer types" (weights repacked
    for the CPU's matrix units). The comparison is of the GGUF's arithmetic, not of a repacking kernel's, and
    llama-cpp-python 0.3.36's repacked q8_0 path crashed (SIGSEGV in the first decode) on an Intel Xeon with AMX on
    2026-12-04. llama-cpp-python takes no argument for it, so the default model parameters it reads are wrapped while
    a model loads."""
    from llama_cpp import llama_cpp as lib

    default = lib.llama_model_default_params
    if not any(name == "use_extra_bufts" for name, _ in default().__class__._fields_):
        yield  # a build without the option: nothing to turn off
        return

    def params():
        model_params = default()
        model_params.use_extra_bufts = False
        return model_params

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def compare(model_dir: Path, gguf: Path, texts: list[str], new_tokens: int = 16, kv: str = "f32") -> dict[str, Any]:
    """Numbers for one GGUF file against the transformers model in `model_dir`."""
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    context = model.config.max_position_embeddings
    kv_type = GGML_F32 if kv == "f32" else GGML_F16
    with weights_as_stored():
        llm = Llama(model_path=str(gguf), n_ctx=context, logits_all=True, verbose=False, type_k=kv_type, type_v=kv_type)
    diff, same_ids, same_greedy = 0.0, 0, 0
    try:
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            same_ids += llm.tokenize(text.encode(), add_bos=False, special=False) == ids
            ids = ids[: context - new_tokens]
            llm.reset()
            llm.eval(ids)
            with torch.no_grad():
                expected = model(torch.tensor([ids])).logits[0].numpy()
            diff = max(diff, float(np.abs(np.asarray(llm.scores[: len(ids)]) - expected).max()))
            same_greedy += greedy_llama_cpp(llm, ids, new_tokens) == greedy_transformers(model, ids, new_tokens)
    finally:
        llm.close()
    return {"file": gguf.name, "kv": kv, "max_abs_logit_diff": diff, "texts": len(texts), "same_ids": same_ids,
            "same_greedy": same_greedy, "new_tokens": new_tokens}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        name="compare_llama_cpp", description="Compare llama.cpp with transformers on an exported model."
    )
    parser.add_argument("model_dir", type=Path, help="a stock export with its GGUF files")
    parser.add_argument("--gguf", type=Path, nargs="*", help="GGUF files (default: every *.gguf in model_dir)")
    parser.add_argument("--texts", type=Path, help="text file; each blank-line separated paragraph is one text")
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--kv", choices=("f32", "f16"), default="f32", help="llama.cpp KV cache type")
    args = parser.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("compare_llama_cpp: error: llama-cpp-python is not installed", file=sys.stderr)
        return 2
    files = args.gguf or sorted(args.model_dir.glob("*.gguf"))
    if not files:
        print(f"compare_llama_cpp: error: no .gguf file in '{args.model_dir}'; export with --gguf", file=sys.stderr)
        return 2
    texts = TEXTS
    if args.texts is not None:
        texts = [p.strip("\n") for p in args.texts.read_text().split("\n\n") if p.strip()]
    print(f"{'file':<32} {'kv':>3} {'max |Δlogit|':>13} {'same ids':>9} {'same greedy':>12}")
    for gguf in files:
        r = compare(args.model_dir, gguf, texts, args.new_tokens, args.kv)
        ids, greedy = f"{r['same_ids']}/{r['texts']}", f"{r['same_greedy']}/{r['texts']}"
        print(f"{r['file']:<32} {r['kv']:>3} {r['max_abs_logit_diff']:>13.2e} {ids:>9} {greedy:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
