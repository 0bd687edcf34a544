#!/usr/bin/env bash
# The test suite, from a fresh clone: set up the environment, then run pytest.
# pytest's exit code 5 (no tests collected) is turned into a failure.
# Usage: bash tools/run_tests.sh [pytest args]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(bash tools/setup_env.sh | tail -n 1)" || { echo "[run_tests] set-up failed" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" -m pytest tests -p no:cacheprovider -ra --durations=25 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[run_tests] no tests were collected: failing" >&2
  exit 1
fi
exit "$rc"
