"""llama.cpp itself runs the f32 GGUF of every architecture normgpt writes one for, with transformers' logits
(within 1e-4), token ids and greedy continuations. Opt-in: skipped unless llama-cpp-python is installed (a source
build of tens of minutes, which CI does not do); scripts/compare_llama_cpp.py prints the same numbers for any run."""

import importlib.util

import pytest
from synthetic_corpus import documents
from tiny_models import save_with_tokenizer, trained_model

from train.config import REPO_ROOT
from train.publish.export import TOLERANCE, export_model_dir
from train.publish.gguf import write_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (opt-in)")
_spec = importlib.util.spec_from_file_location("compare_llama_cpp", REPO_ROOT / "scripts" / "compare_llama_cpp.py")
compare_llama_cpp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_llama_cpp)

VARIANTS = {
    "llama": {"norm_type": "rms"},
    "qwen3": {"norm_type": "rms", "qk_norm": True},
    "stablelm": {"norm_type": "layer"},
    "olmo": {"norm_type": "layer_noaffine", "rms_norm_eps": 1e-5},
}


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_llama_cpp_matches_transformers(arch, tmp_path):
    src = save_with_tokenizer(trained_model(steps=30, **VARIANTS[arch]), tmp_path / "src")
    export_model_dir(src, tmp_path / "model")
    assert write_gguf(tmp_path / "model", tmp_path / "model.gguf", "f32")["architecture"] == arch
    texts = [doc[:120] for doc in documents(num_docs=6, sentences_per_doc=6, seed=7)]
    result = compare_llama_cpp.compare(tmp_path / "model", tmp_path / "model.gguf", texts, new_tokens=12)
    assert result["max_abs_logit_diff"] <= TOLERANCE, result
    assert result["same_ids"] == len(texts) and result["same_greedy"] == len(texts), result
