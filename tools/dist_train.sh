#!/usr/bin/env bash
# Multi-process training with torchrun (mmdet 3.3's dist_train.sh, torch.distributed.launch -> torchrun).
#
#   bash tools/dist_train.sh CONFIG NUM_PROCS [tools/train.py args...]
#
# NUM_PROCS processes per node (one per GPU; on a CPU-only machine they use gloo, see
# queryvision_mm/utils/dist.py). Env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
# PYTHON (python) -- the interpreter that runs torch.distributed.run.
if [ "$#" -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_PROCS [train.py args...]" >&2
  exit 1
fi

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
