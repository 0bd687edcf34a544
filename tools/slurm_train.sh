#!/usr/bin/env bash
# Training on a Slurm cluster (mmdet 3.3's slurm_train.sh form): one srun task per GPU, tools/train.py with
# --launcher slurm (mmengine reads SLURM_PROCID / SLURM_NTASKS / SLURM_NODELIST; MASTER_PORT, default 29500).
#
#   [GPUS=16] [GPUS_PER_NODE=8] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]
#
# Env: GPUS (8) total tasks, GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun options, word-split),
# PYTHON (python). Example: GPUS=8 bash tools/slurm_train.sh my_partition sparse10 \
#     configs/sparse_semi_detr/coco_10pct.py work_dirs/sparse_semi_detr_coco_10pct --amp
set -x
if [ "$#" -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" >&2
  exit 1
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck disable=SC2086  (SRUN_ARGS is a list of options)
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "${PYTHON:-python}" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "${@:5}"
