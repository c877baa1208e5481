"""Tiny normgpt models trained for a few steps, saved with a real tokenizer, for the export, GGUF and eval tests.

The tokenizer is the byte-level BPE of tests/data/legacy_run (320 tokens, trained by normgpt on the synthetic
corpus), so the models learn real token statistics in a handful of steps and their greedy continuations are not
ties between untrained logits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from synthetic_corpus import documents
from tokenizers import Tokenizer

from model import NormGPTConfig, NormGPTForCausalLM

LEGACY_RUN = Path(__file__).parent / "data" / "legacy_run"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
VOCAB = 320
CONTEXT = 64


def token_stream() -> torch.Tensor:
    tokenizer = Tokenizer.from_file(str(LEGACY_RUN / "tokenizer.json"))
    ids = [i for doc in documents(num_docs=4, sentences_per_doc=30) for i in [*tokenizer.encode(doc).ids, 0]]
    return torch.tensor(ids)


def tiny_config(**overrides) -> NormGPTConfig:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=CONTEXT,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return NormGPTConfig(**{**kwargs, **overrides})


def trained_model(steps: int = 8, seed: int = 0, **overrides) -> NormGPTForCausalLM:
    """A few AdamW steps on the synthetic corpus: enough to move every weight (norm gains and biases included)
    away from its initial value, so an export that dropped or misplaced one would show."""
    torch.manual_seed(seed)
    model = NormGPTForCausalLM(tiny_config(**overrides))
    stream = token_stream()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - CONTEXT, (8,), generator=generator)
        batch = torch.stack([stream[s : s + CONTEXT] for s in starts.tolist()])
        model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def save_with_tokenizer(model: NormGPTForCausalLM, directory: Path) -> Path:
    """`save_pretrained` plus the tokenizer files, as the trainer leaves a model (load arguments included)."""
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copyfile(LEGACY_RUN / name, directory / name)
    return directory


def fixed_ids(batch: int = 3, length: int = 24, seed: int = 1) -> torch.Tensor:
    """Token windows of the corpus (never the pad id 0 at the end of a prompt)."""
    stream = token_stream()
    starts = torch.randint(0, len(stream) - length, (batch,), generator=torch.Generator().manual_seed(seed))
    ids = torch.stack([stream[s : s + length] for s in starts.tolist()])
    return ids.masked_fill(ids == 0, 1)


def run_elsewhere(script: str, tmp_path: Path, *args: str, stdin: str | None = None):
    """Run `script` as a user without normgpt would: a fresh interpreter outside the repository, offline, with its own
    HF cache. Returns the JSON on its last stdout line."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        input=stdin,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
