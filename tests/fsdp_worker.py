"""One rank of tests/test_fsdp.py: FSDP2 (`fully_shard`) over gloo on the CPU, driven directly.

accelerate configures FSDP only for GPU processes (with the CPU it forms a plain multi-process group, whatever the
config says), so the trainer cannot run FSDP on a machine without a GPU; this drives what its FSDP launch does:
every decoder block a shard unit and the model the root unit (fsdp.yaml's TRANSFORMER_BASED_WRAP over
`_no_split_modules`), AdamW over the DTensor parameters, the loss of the trainer (the chunked one, whose gradient
reaches the tied embedding through the root unit), a sharded checkpoint through torch.distributed.checkpoint (what
accelerate's SHARDED_STATE_DICT writes), and a resume into a model built from another seed.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_worker.py OUT_DIR

Rank 0 writes OUT_DIR/result.json: every parameter's type, placements and local/global shapes, and the losses of the
uninterrupted run and of the resumed one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, as the trainer runs from it

from model import NormGPTConfig, NormGPTForCausalLM  # noqa: E402

STEPS, SAVE_AT, VOCAB = 4, 2, 67


def sharded_model(seed: int, mesh):
    torch.manual_seed(seed)
    config = NormGPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    model = NormGPTForCausalLM(config)
    model.set_loss_impl("chunked")
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train(model, optimizer, steps: range) -> list[float]:
    """Per-rank batches (a different stream on each rank, the same at every run); the loss averaged over ranks."""
    losses = []
    for step in steps:
        g = torch.Generator().manual_seed(1000 * step + dist.get_rank())
        ids = torch.randint(0, VOCAB, (2, 9), generator=g)
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / dist.get_world_size())
    return losses


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model, optimizer = sharded_model(seed=0, mesh=mesh)
    params = {
        name: {
            "type": type(p).__name__,
            "placements": [
                f"Shard({x.dim})" if x.is_shard() else type(x).__name__ for x in getattr(p, "placements", ())
            ],
            "local": list(p.to_local().shape if hasattr(p, "to_local") else p.shape),
            "global": list(p.shape),
        }
        for name, p in model.named_parameters()
    }
    full = train(model, optimizer, range(1, SAVE_AT + 1))
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=out / "checkpoint")
    full += train(model, optimizer, range(SAVE_AT + 1, STEPS + 1))

    model, optimizer = sharded_model(seed=1, mesh=mesh)  # other weights: only the checkpoint can make them equal
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=out / "checkpoint")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed = train(model, optimizer, range(SAVE_AT + 1, STEPS + 1))
    if dist.get_rank() == 0:
        result = {"world_size": dist.get_world_size(), "params": params, "full": full, "resumed": resumed}
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
