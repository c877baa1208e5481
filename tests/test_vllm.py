"""vLLM serves normgpt's stock exports (Llama, Qwen3, StableLM, OLMo) with transformers' greedy tokens. Opt-in:
skipped unless vLLM is importable here or NORMGPT_VLLM_PYTHON names the interpreter of an environment that has it (vLLM
builds pin their own torch and transformers, so they usually live in a separate one). scripts/compare_vllm.py runs
there, as a user without normgpt would run it, and prints the same numbers for any export."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from devices import gpu_env
from tiny_models import save_with_tokenizer, trained_model

from train.config import REPO_ROOT
from train.publish.export import export_model_dir

VLLM_PYTHON = os.environ.get("NORMGPT_VLLM_PYTHON")
if VLLM_PYTHON is None and importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (opt-in; or set NORMGPT_VLLM_PYTHON)", allow_module_level=True)


# The stock architectures normgpt exports (model/export.py), as tests/test_llama_cpp.py builds them.
VARIANTS = {
    "LlamaForCausalLM": {"norm_type": "rms"},
    "Qwen3ForCausalLM": {"norm_type": "rms", "qk_norm": True},
    "StableLmForCausalLM": {"norm_type": "layer"},
    "OlmoForCausalLM": {"norm_type": "layer_noaffine", "rms_norm_eps": 1e-5},
}


@pytest.mark.parametrize("architecture", list(VARIANTS))
def test_vllm_generates_the_greedy_tokens_of_transformers(architecture, tmp_path):
    # hidden 64 over 2 heads: vLLM's CPU attention needs a head size of at least 32.
    model = trained_model(steps=30, hidden_size=64, **VARIANTS[architecture])
    src = save_with_tokenizer(model, tmp_path / "src")
    assert export_model_dir(src, tmp_path / "model").architecture == architecture
    # vLLM runs where it finds a device: the GPU on a machine that has one (gpu_env), else its CPU build
    env = {**gpu_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; its default would reserve far more than a tiny model needs
    proc = subprocess.run(
        [VLLM_PYTHON or sys.executable, str(REPO_ROOT / "scripts" / "compare_vllm.py"), str(tmp_path / "model")]
        + ["--json", "--new_tokens", "16"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # vLLM's engine may still log its shutdown after the result line
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"vllm"')))
    assert result["architecture"] == architecture and result["texts"] == 8, result
    assert result["same_ids"] == result["texts"] and result["same_greedy"] == result["texts"], result
