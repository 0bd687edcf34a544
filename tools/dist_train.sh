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
exec bash "$(dirname "${BASH_SOURCE[0]}")/_dist_launch.sh" train.py $2 "$1" "${@:3}"
