"""The model on the Triton RMSNorm path equals the model on the PyTorch path, forward and backward (kernels run
through the Triton interpreter on CPU; tests/conftest.py sets TRITON_INTERPRET=1 when there is no GPU)."""

import copy
import os

import pytest
import torch

from model import NormGPTConfig, NormGPTForCausalLM
from model.rmsnorm_triton import HAS_TRITON

pytestmark = pytest.mark.skipif(
    not HAS_TRITON or (not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="needs Triton (on CUDA or through its interpreter)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pair(attn: str = "sdpa", **overrides):
    torch.manual_seed(0)
    config = NormGPTConfig(vocab_size=67, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, **overrides)
    reference = NormGPTForCausalLM(config).to(DEVICE)
    reference.set_attn_implementation(attn)
    reference.set_rms_impl("torch")
    fused = copy.deepcopy(reference)
    fused.set_rms_impl("triton")
    return reference, fused


@pytest.mark.parametrize(
    "attn, overrides",
    [
        ("sdpa", {}),
        ("sdpa", {"qk_norm": True}),
        ("sdpa", {"norm_placement": "post"}),
        ("sdpa", {"norm_placement": "peri"}),
        ("eager", {"qk_norm": True, "norm_placement": "peri"}),
    ],
)
def test_triton_path_equals_torch_path_forward_and_backward(attn, overrides):
    """On every attention backend (the fused kernels sit in the norms, QK-norm's too, not in attention)."""
    reference, fused = pair(attn, **overrides)
    assert fused.config._attn_implementation == attn
    ids = torch.randint(0, 67, (2, 12), device=DEVICE)
    out_ref = reference(ids, labels=ids, use_cache=False)
    out_fused = fused(ids, labels=ids, use_cache=False)
    torch.testing.assert_close(out_fused.logits, out_ref.logits, rtol=1e-5, atol=1e-5)
    out_ref.loss.backward()
    out_fused.loss.backward()
    grads_ref = dict(reference.named_parameters())
    for name, param in fused.named_parameters():
        torch.testing.assert_close(param.grad, grads_ref[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_checkpoints_do_not_depend_on_the_implementation(tmp_path):
    reference, fused = pair()
    fused.save_pretrained(tmp_path / "f")
    reference.save_pretrained(tmp_path / "r")
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "f" / "model.safetensors"), load_file(tmp_path / "r" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_runs_the_kernel_eager_on_cuda_and_pytorch_under_compile():
    """The measured decision (docs/benchmarks.md): under torch.compile inductor's fusion of the PyTorch path wins, so
    a compiled model with rms_impl=auto runs exactly the graph of rms_impl=torch, never a slower one."""
    from model.norms import auto_uses_kernel

    for width in (1, 64, 768, 4096, 65536):
        assert auto_uses_kernel(width, "cuda", compiling=False)
        assert not auto_uses_kernel(width, "cuda", compiling=True)
        assert not auto_uses_kernel(width, "cpu", compiling=False)


def test_rms_auto_decides_with_the_compile_state(monkeypatch):
    import model.norms as norms

    asked = []
    monkeypatch.setattr(norms, "auto_uses_kernel", lambda width, device, compiling: asked.append(compiling) or False)
    norm = norms.RMSNorm(16, impl="auto")
    x = torch.randn(2, 16)
    norm(x)
    torch._dynamo.reset()
    torch.compile(norm, backend="eager")(x)
    assert asked[0] is False and True in asked[1:]
