#!/usr/bin/env bash
# GPU acceptance, one command on a machine with an NVIDIA GPU (see docs/rehearsal.md, "GPU check"):
#   1. set up with mmcv's CUDA ops (FORCE_CUDA=1; the wheel is cached per torch version and arch list);
#   2. compare mmcv's CUDA MultiScaleDeformableAttention with the pure-PyTorch path (forward + gradients);
#   3. rehearse each paper's main config at its real image scale for a few iterations with --amp;
#   4. write the numbers (s/iter, peak GPU memory) into the "GPU check" section of docs/rehearsal.md.
# Usage: bash tools/gpu_check.sh [NUM_GPUS (default: all visible)] [ITERS (default 6)]
# Env: TORCH_CUDA_ARCH_LIST (default: this GPU's), QV_GPU_CHECK_CONFIGS (space-separated list to override).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export FORCE_CUDA=1
PY="$(bash tools/setup_env.sh | tail -n 1)"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  export TORCH_CUDA_ARCH_LIST
fi
NGPU="${1:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}"
ITERS="${2:-6}"
OUT="$ROOT/work_dirs/gpu_check"
mkdir -p "$OUT"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
"$PY" tools/misc/check_msda_cuda.py --out "$OUT/msda.json" || echo "[gpu_check] MSDA comparison FAILED" >&2
CONFIGS="${QV_GPU_CHECK_CONFIGS:-configs/sparse_semi_detr/coco_10pct.py configs/semi_detr/coco_10pct.py \
configs/cq_dino/v3det_swinb.py configs/qks/nuswide_vitb16.py configs/mao/voxdet_dinov2_lora.py}"
for cfg in $CONFIGS; do
  name="$(basename "$(dirname "$cfg")")_$(basename "$cfg" .py)"
  # real image scale: --img-scale 0 keeps the config's own resizes
  "$PY" tools/misc/rehearse.py "$cfg" --gpus "$NGPU" --iters "$ITERS" --img-scale 0 --workers 2 --skip resume test \
    --work-dir "$OUT/$name" --json "$OUT/$name.json" || echo "[gpu_check] $cfg FAILED" >&2
done
"$PY" -m queryvision_mm.testing.rehearsal.report --gpu-section "$OUT" "$ROOT/docs/rehearsal.md"
