#!/usr/bin/env bash
# One node's part of a multi-node run: train.sbatch (beside this file) starts it once per node with srun.
#   bash configs/slurm/node.sh OUTPUT_DIR [train/train.py flags...]
# Ranks and addresses come from SLURM and train.sbatch:
#   SLURM_NNODES, SLURM_NODEID           set by srun: the number of nodes and this node's rank (accelerate's machine_rank)
#   MASTER_ADDR, MASTER_PORT             exported by train.sbatch: the first node of the job, where rank 0 listens
#   NORMGPT_PROCS_PER_NODE               processes on this node (default: SLURM_GPUS_ON_NODE, else the GPUs
#                                        nvidia-smi lists, else 1)
#   NORMGPT_ACCELERATE_CONFIG            the accelerate config (default configs/accelerate/multi_gpu.yaml; fsdp.yaml
#                                        for FSDP). Its process and machine counts are overridden here.
# The run resumes from OUTPUT_DIR's newest complete checkpoint when it has one: after a requeue, every node finds the
# same checkpoints there (OUTPUT_DIR must be on a filesystem all nodes share).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: node.sh OUTPUT_DIR [train.py flags...]}
shift
nodes=${SLURM_NNODES:?not under srun: start this from configs/slurm/train.sbatch}
node_rank=${SLURM_NODEID:?not under srun: start this from configs/slurm/train.sbatch}
per_node=${NORMGPT_PROCS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}}
if [ "$per_node" -lt 1 ]; then per_node=1; fi

# The checkpoint format has one owner, train/checkpoints.py: ask it rather than globbing directory names here.
resume=()
has_checkpoint='import sys; sys.path.insert(0, sys.argv[1]); from train.checkpoints import list_checkpoints
sys.exit(not list_checkpoints(sys.argv[2]))'
if python -c "$has_checkpoint" "$repo" "$out"; then
    resume=(--resume_from_checkpoint latest)
fi

# exec: the signals SLURM sends this task (preemption, train.sbatch's time-limit forwarding) reach accelerate's
# launcher, which passes SIGTERM to the training processes; they checkpoint and exit 143.
exec accelerate launch \
    --config_file "${NORMGPT_ACCELERATE_CONFIG:-$repo/configs/accelerate/multi_gpu.yaml}" \
    --num_machines "$nodes" \
    --machine_rank "$node_rank" \
    --num_processes $((nodes * per_node)) \
    --main_process_ip "${MASTER_ADDR:?exported by train.sbatch}" \
    --main_process_port "${MASTER_PORT:?exported by train.sbatch}" \
    "$repo/train/train.py" --output_dir "$out" "${resume[@]}" "$@"
