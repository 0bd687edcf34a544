#!/usr/bin/env bash
# Multi-process testing with torchrun (mmdet 3.3's dist_test.sh, torch.distributed.launch -> torchrun).
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [tools/test.py args...]
#
# NUM_PROCS processes per node (one per GPU; on a CPU-only machine they use gloo, see
# queryvision_mm/utils/dist.py). Env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
# PYTHON (python) -- the interpreter that runs torch.distributed.run.
if [ "$#" -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT NUM_PROCS [test.py args...]" >&2
  exit 1
fi

CONFIG=$1
CHECKPOINT=$2
GPUS=$3
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
    "$ROOT/tools/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
