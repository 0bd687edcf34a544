#!/usr/bin/env bash
# The main job on the embedded demo data, from a fresh clone:
#   set up the environment (tools/setup_env.sh), generate the demo data, train Sparse Semi-DETR
#   (configs/sparse_semi_detr/demo_shapes.py; pass configs/semi_detr/demo_shapes.py for the Semi-DETR baseline)
#   on CPU, evaluate it with tools/test.py (COCO AP, AP_s/m/l, duplicate rate) and write
#   work_dirs/sparse_semi_detr_demo_shapes/pseudo_labels_vs_student.png (work_dirs/<config dir>_<config name>/).
# Usage: bash tools/run_demo.sh [CONFIG] [extra tools/train.py args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(bash tools/setup_env.sh | tail -n 1)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
CONFIG="${1:-configs/sparse_semi_detr/demo_shapes.py}"
shift $(( $# > 0 ? 1 : 0 ))
NAME="$(basename "${CONFIG%.py}")"
WORK="${WORK_DIR:-work_dirs/$(basename "$(dirname "$CONFIG")")_$NAME}"
t0=$(date +%s)
"$PY" tools/misc/make_demo_data.py --out-dir data/demo_shapes
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK" "$@"
CKPT="$(cat "$WORK/last_checkpoint")"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test"
"$PY" tools/misc/visualize_pseudo_labels.py "$CONFIG" "$CKPT" --out "$WORK/pseudo_labels_vs_student.png"
echo "[run_demo] done in $(( $(date +%s) - t0 )) s: checkpoint $CKPT, picture $WORK/pseudo_labels_vs_student.png"
