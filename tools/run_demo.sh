#!/usr/bin/env bash
# The main job on the embedded demo data, from a fresh clone:
#   set up the environment (tools/setup_env.sh), generate the demo data, train Semi-DETR
#   (configs/semi_detr/demo_shapes.py) on CPU, evaluate it with tools/test.py (COCO AP) and write
#   work_dirs/demo_shapes/pseudo_labels_vs_student.png.
# Usage: bash tools/run_demo.sh [CONFIG] [extra tools/train.py args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(bash tools/setup_env.sh | tail -n 1)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
CONFIG="${1:-configs/semi_detr/demo_shapes.py}"
shift $(( $# > 0 ? 1 : 0 ))
NAME="$(basename "${CONFIG%.py}")"
WORK="${WORK_DIR:-work_dirs/$NAME}"
t0=$(date +%s)
"$PY" tools/misc/make_demo_data.py --out-dir data/demo_shapes
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK" "$@"
CKPT="$(cat "$WORK/last_checkpoint")"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test"
"$PY" tools/misc/visualize_pseudo_labels.py "$CONFIG" "$CKPT" --out "$WORK/pseudo_labels_vs_student.png"
echo "[run_demo] done in $(( $(date +%s) - t0 )) s: checkpoint $CKPT, picture $WORK/pseudo_labels_vs_student.png"
