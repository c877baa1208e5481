"""A deterministic synthetic text corpus for tests whose numbers must not depend on the machine's Python.

The stdlib corpus changes with the Python version; this one is a pure function of its arguments (Python's seeded
`random.Random` is stable across versions for the calls used here), so reference losses recorded once stay valid.
The text has structure a tiny model can learn within a few dozen steps: a Zipf-distributed vocabulary, a small
sentence grammar with agreement between subject and verb, and recurring phrases.
"""

from __future__ import annotations

import random
from pathlib import Path

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "du", "sha", "qui", "bel", "tor", "an", "el"]


def _words(rng: random.Random, n: int) -> list[str]:
    seen: list[str] = []
    while len(seen) < n:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
        if word not in seen:
            seen.append(word)
    return seen


def _zipf_pick(rng: random.Random, words: list[str]) -> str:
    # P(rank r) ~ 1/r: index = floor(n^u) - 1 for uniform u is a cheap, version-stable approximation.
    return words[min(len(words) - 1, int(len(words) ** rng.random()) - 1)]


def _sentence(rng: random.Random, nouns: list[str], verbs: list[str], adjs: list[str]) -> str:
    plural = rng.random() < 0.4
    subject = _zipf_pick(rng, nouns) + ("s" if plural else "")
    verb = _zipf_pick(rng, verbs) + ("" if plural else "t")  # agreement: a learnable long-range rule
    parts = ["the", subject]
    if rng.random() < 0.5:
        parts.insert(1, _zipf_pick(rng, adjs))
    parts.append(verb)
    if rng.random() < 0.7:
        parts += ["the", _zipf_pick(rng, nouns)]
    if rng.random() < 0.2:
        parts += ["with", str(rng.randint(2, 99)), _zipf_pick(rng, nouns) + "s"]
    text = " ".join(parts)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "!", "?"])


def documents(num_docs: int = 48, sentences_per_doc: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    nouns, verbs, adjs = _words(rng, 120), _words(rng, 60), _words(rng, 40)
    docs = []
    for _ in range(num_docs):
        paragraphs = []
        for _ in range(sentences_per_doc // 6):
            paragraphs.append(" ".join(_sentence(rng, nouns, verbs, adjs) for _ in range(6)))
        docs.append("\n\n".join(paragraphs) + "\n")
    return docs


def write_corpus(directory: Path, **kwargs) -> Path:
    """A folder of `doc_NNN.txt` files (one document each), as `--dataset DIR` reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(documents(**kwargs)):
        (directory / f"doc_{i:03d}.txt").write_text(text)
    return directory
