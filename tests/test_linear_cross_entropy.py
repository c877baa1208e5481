"""The chunked loss of the output layer (model/linear_cross_entropy.py) is the plain loss: the same value and the
same gradients, in float32 on the CPU, for sizes that do not divide into chunks, with ignored positions, the z-loss
and `num_items_in_batch`; it never holds logits of more than one chunk; it traces under torch.compile with no graph
break; and one micro-batch of 4 sequences gives the gradients of 4 accumulated micro-batches of 1 (what replacing
gradient accumulation by a larger micro-batch relies on)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model import NormGPTConfig, NormGPTForCausalLM
from model.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy, rows_per_chunk, shifted_targets

V, D = 67, 48  # a vocabulary and width that no chunk size divides


def plain_loss(hidden, weight, labels, z_loss=0.0, num_items=None):
    """NormGPTForCausalLM.causal_lm_loss written out: logits, shift, float32 cross-entropy, z-loss."""
    logits = (hidden @ weight.t())[:, :-1].float().reshape(-1, weight.shape[0])
    targets = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="mean" if num_items is None else "sum")
    if z_loss:
        z = torch.logsumexp(logits, -1)[targets != IGNORE_INDEX].pow(2)
        loss = loss + z_loss * (z.mean() if num_items is None else z.sum())
    return loss if num_items is None else loss / num_items


def inputs(batch=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, D, generator=g, requires_grad=True)
    weight = torch.randn(V, D, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (batch, length), generator=g)
    labels[0, 2] = labels[2, 5] = IGNORE_INDEX  # padding: no loss at these targets
    return hidden, weight, labels


def loss_and_grads(fn, hidden, weight):
    hidden.grad = weight.grad = None
    loss = fn()
    (0.25 * loss).backward()  # an incoming gradient other than 1, as gradient accumulation gives
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("rows", [1, 5, 21, 1000], ids=["rows=1", "rows=5", "one-chunk-exact", "one-chunk-larger"])
@pytest.mark.parametrize("z_loss, num_items", [(0.0, None), (1e-2, None), (1e-2, 17)], ids=["plain", "z", "z-items"])
def test_chunked_loss_equals_the_plain_loss_and_its_gradients(rows, z_loss, num_items):
    hidden, weight, labels = inputs()
    expected = loss_and_grads(lambda: plain_loss(hidden, weight, labels, z_loss, num_items), hidden, weight)
    got = loss_and_grads(
        lambda: linear_cross_entropy(hidden.reshape(-1, D), weight, shifted_targets(labels), z_loss, num_items, rows),
        hidden,
        weight,
    )
    for name, a, b in zip(("loss", "d hidden", "d weight"), got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # evaluation: the loss alone, the same
        loss = linear_cross_entropy(hidden.reshape(-1, D), weight, shifted_targets(labels), z_loss, num_items, rows)
    torch.testing.assert_close(loss, expected[0], rtol=1e-5, atol=1e-6)


def test_the_model_with_the_chunked_loss_is_the_model_with_the_full_loss():
    """Every parameter's gradient, the tied embedding/output matrix included; no logits come back when chunked."""
    config = NormGPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, z_loss=1e-3)
    torch.manual_seed(0)
    full = NormGPTForCausalLM(config)
    chunked = NormGPTForCausalLM(config)
    chunked.load_state_dict(full.state_dict())
    chunked.set_loss_impl("chunked")
    ids = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(1))
    out_full, out_chunked = full(ids, labels=ids), chunked(ids, labels=ids)
    assert out_chunked.logits is None and out_full.logits.shape == (3, 9, V)
    torch.testing.assert_close(out_chunked.loss, out_full.loss, rtol=1e-6, atol=1e-6)
    out_full.loss.backward()
    out_chunked.loss.backward()
    reference = dict(full.named_parameters())
    for name, param in chunked.named_parameters():
        torch.testing.assert_close(param.grad, reference[name].grad, rtol=1e-5, atol=1e-7, msg=name)
    assert chunked(ids).logits.shape == (3, 9, V)  # without labels: the logits, as always
    with pytest.raises(ValueError, match="unknown loss_impl 'fused'; valid: full, chunked"):
        chunked.set_loss_impl("fused")


def test_under_bf16_autocast_the_matmuls_run_in_bf16_as_the_output_layer_would():
    hidden, weight, labels = inputs(batch=4, length=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain_loss(hidden, weight, labels)  # the matmul autocasts to bf16
        got = linear_cross_entropy(hidden.reshape(-1, D), weight, shifted_targets(labels), rows=7)
    without_autocast = linear_cross_entropy(hidden.reshape(-1, D), weight, shifted_targets(labels), rows=7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # the same bf16 logits, float32 softmax
    assert abs(got.item() - without_autocast.item()) > 1e-4  # ... which differ from float32 ones: bf16 really ran


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_more_than_one_chunk_of_logits_ever_exists():
    hidden = torch.randn(64, 8, requires_grad=True)
    weight = torch.randn(1000, 8, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))
    with LargestOutput() as watch:
        linear_cross_entropy(hidden, weight, targets, rows=8).backward()
    assert watch.largest == 8 * 1000  # a chunk's logits; the whole batch's would be 64 * 1000
    assert rows_per_chunk(50304) == 1334  # 256 MiB of float32 logits for the 124M model


def test_it_compiles_with_no_graph_break():
    torch._dynamo.reset()
    hidden, weight, labels = inputs()
    expected = loss_and_grads(lambda: plain_loss(hidden, weight, labels, 1e-2), hidden, weight)
    compiled = torch.compile(linear_cross_entropy, fullgraph=True, backend="aot_eager")
    got = loss_and_grads(
        lambda: compiled(hidden.reshape(-1, D), weight, shifted_targets(labels), 1e-2, None, 5), hidden, weight
    )
    torch._dynamo.reset()
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_micro_batch_of_four_is_four_accumulated_micro_batches_of_one():
    """What configs/small.yaml's single micro-batch relies on: with full-length sequences every micro-batch has as
    many targets, so the mean over one batch of B sequences is the mean of B means, and its gradient the sum of
    theirs divided by B, which is what the trainer's accumulation computes (loss / steps, backward each)."""
    config = NormGPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = NormGPTForCausalLM(config)
    model.set_loss_impl("chunked")
    ids = torch.randint(0, V, (4, 9), generator=torch.Generator().manual_seed(2))
    model(ids, labels=ids).loss.backward()
    one_batch = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for micro in ids.split(1):
        (model(micro, labels=micro).loss / 4).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, one_batch[name], rtol=1e-5, atol=1e-7, msg=name)


def test_it_travels_with_the_model_as_remote_code():
    """A saved remote-code model carries this file (a relative import of the modeling file) and it needs only torch."""
    import sys
    from pathlib import Path

    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    import model.linear_cross_entropy as module

    here = Path(module.__file__)
    assert here in {Path(p) for p in get_relative_import_files(here.with_name("modeling_normgpt.py"))}
    assert set(get_imports(here)) - set(sys.stdlib_module_names) == {"torch"}
