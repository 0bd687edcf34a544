#!/usr/bin/env bash
# Times tools/setup_env.sh in three situations and prints a markdown table:
#   warm      the existing environment (stamp + imports check)              -> the "second run" case
#   fresh-venv a new virtual env with pip's and our mmcv wheel cache warm   -> a fresh clone on a used machine
#   cold      (only with --cold) new venv, empty mmcv wheel cache, no pip cache: downloads torch and compiles mmcv
# Usage: bash tools/benchmarks/bench_setup.sh [--cold]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
secs() { local t0; t0=$(date +%s); "$@" >/dev/null 2>&1; echo $(( $(date +%s) - t0 )); }

bash tools/setup_env.sh >/dev/null 2>&1   # make sure the normal env is complete first
warm=$(secs bash tools/setup_env.sh)
python3 -m venv "$tmp/venv"
fresh=$(VIRTUAL_ENV="$tmp/venv" secs bash tools/setup_env.sh)
echo "| situation | seconds |"
echo "|---|---|"
echo "| warm (existing env, second run) | $warm |"
echo "| fresh venv, warm pip + mmcv wheel cache | $fresh |"
if [ "${1:-}" = "--cold" ]; then
  python3 -m venv "$tmp/venv_cold"
  cold=$(VIRTUAL_ENV="$tmp/venv_cold" QV_CACHE_DIR="$tmp/cache" PIP_NO_CACHE_DIR=1 MAX_JOBS=$(nproc) \
         secs bash tools/setup_env.sh)
  echo "| cold (new venv, no caches: torch download + mmcv compile) | $cold |"
fi
