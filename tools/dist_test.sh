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
exec bash "$(dirname "${BASH_SOURCE[0]}")/_dist_launch.sh" test.py $3 "$1" "$2" "${@:4}"
