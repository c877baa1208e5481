"""FSDP2 on the CPU: two gloo processes shard the model with `fully_shard` (tests/fsdp_worker.py says why it is driven
directly rather than through accelerate), every parameter is a DTensor holding half of it, the sharded checkpoint is
one file per rank, and a model of other weights resumed from it continues with exactly the losses of the
uninterrupted run. The trainer's FSDP launch on a GPU, DTensors and exact resume included, is scripts/check_fsdp.py,
run by scripts/gpu_checks.sh."""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"


def test_fully_shard_over_gloo_shards_every_parameter_and_resumes_exactly(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, str(WORKER), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    for name, param in result["params"].items():
        assert param["type"] == "DTensor" and param["placements"] == ["Shard(0)"], name
        rows, *rest = param["global"]
        assert param["local"] == [-(-rows // 2), *rest], name  # rank 0's half of the rows, rounded up
    assert "lm_head.weight" not in result["params"]  # tied: the embedding's DTensor is the output layer's
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert result["resumed"] == result["full"][2:]
    assert len(set(result["full"])) == 4  # it trained: every step's loss differs
