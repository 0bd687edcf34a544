#!/usr/bin/env bash
# The main job on the embedded demo data, from a fresh clone:
#   set up the environment (tools/setup_env.sh), generate the demo data, train Sparse Semi-DETR
#   (configs/sparse_semi_detr/demo_shapes.py; pass configs/semi_detr/demo_shapes.py for the Semi-DETR baseline)
#   on CPU, evaluate it with tools/test.py (COCO AP, AP_s/m/l, duplicate rate) and write
#   work_dirs/sparse_semi_detr_demo_shapes/pseudo_labels_vs_student.png (work_dirs/<config dir>_<config name>/, the
#   tools' default work dir).
#   CQ-DINO: bash tools/run_demo.sh configs/cq_dino/demo_v3det.py -- when CONFIG_stage1.py exists it is trained
#   first (selector pre-training) and CONFIG starts from its checkpoint (load_from); predictions are drawn with
#   tools/test.py --show-dir.
#   QKS: bash tools/run_demo.sh configs/qks/demo_photos.py -- builds the real-photo demo set, a randomly initialised
#   CLIP (no weights can be downloaded) and its prompt-pool label embeddings, trains on seen labels and tests
#   seen / ZSL / GZSL.
#   MaO: bash tools/run_demo.sh configs/mao/demo_photos.py -- builds the small-object gallery from real photos and
#   random OWLv2 / SAM / CLIP stand-ins, describes and indexes the gallery (tools/mao/extract.py: proposals, masks,
#   crops, stage B), evaluates the queries (mAP, Recall@K) and draws a search grid with LeGrad heatmaps.
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
case "$CONFIG" in
  *qks*)
    "$PY" tools/misc/make_demo_data.py --kind qks --out-dir data/demo_qks --random-clip
    "$PY" tools/misc/make_category_embeddings.py data/demo_qks/labels_seen.txt data/demo_qks/labels_unseen.txt \
      data/demo_qks/label_embeddings_qks_pool.safetensors --model local-dir:data/demo_qks/clip_random \
      --templates qks_pool ;;
  *mao*)
    "$PY" tools/misc/make_demo_data.py --kind mao --out-dir data/demo_mao --random-clip
    WORK="${WORK_DIR:-work_dirs/mao_$NAME}"
    "$PY" tools/mao/extract.py "$CONFIG" --work-dir "$WORK"
    BOX="$("$PY" -c "import json; print(*json.load(open('data/demo_mao/annotations/anns.json'))['images/query/cup_0.jpg']['bbox'])")"
    # shellcheck disable=SC2086
    "$PY" tools/mao/search.py "$CONFIG" data/demo_mao/images/query/cup_0.jpg --box $BOX \
      --index "$WORK/index" --topk 5 --out "$WORK/search_cup_0.png"
    echo "[run_demo] done in $(( $(date +%s) - t0 )) s: index $WORK/index, results $WORK/results.json, picture $WORK/search_cup_0.png"
    exit 0 ;;
  *cq_dino*) "$PY" tools/misc/make_demo_data.py --kind v3det --out-dir data/demo_v3det ;;
  *) "$PY" tools/misc/make_demo_data.py --out-dir data/demo_shapes ;;
esac
STAGE1="${CONFIG%.py}_stage1.py"
if [[ -f "$STAGE1" ]]; then
  "$PY" tools/train.py "$STAGE1" --work-dir "${WORK}_stage1" "$@"
  "$PY" tools/train.py "$CONFIG" --work-dir "$WORK" --cfg-options "load_from=$(cat "${WORK}_stage1/last_checkpoint")" "$@"
else
  "$PY" tools/train.py "$CONFIG" --work-dir "$WORK" "$@"
fi
CKPT="$(cat "$WORK/last_checkpoint")"
if grep -q "semi_detr" <<< "$CONFIG"; then
  "$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test"
  PICTURE="$WORK/pseudo_labels_vs_student.png"
  "$PY" tools/misc/visualize_pseudo_labels.py "$CONFIG" "$CKPT" --out "$PICTURE"
elif grep -q "qks" <<< "$CONFIG"; then
  "$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test"
  PICTURE="(none: classification; metrics in $WORK/test/<timestamp>/<timestamp>.log)"
  echo "[run_demo] QKS runs on a random CLIP (no image-text aligned weights offline): its numbers are machinery checks, not accuracy"
else
  "$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test" --show-dir vis
  PICTURE="$WORK/test/<timestamp>/vis/"
fi
echo "[run_demo] done in $(( $(date +%s) - t0 )) s: checkpoint $CKPT, pictures $PICTURE"
