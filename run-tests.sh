#!/usr/bin/env bash
# Install kokoro-service with its test tools into .venv (idempotent), then run the linters,
# the type checker and the whole test suite.  Extra arguments go to pytest.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/install.sh" test
cd "$root"
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Test processes: KOKORO_TEST_WORKERS, else one per core up to 2 (each grew to 5-6 GB of
# resident memory in a full run: the real weights, Whisper, the frameworks).  Each file's
# tests stay in one process, in order.
workers="${KOKORO_TEST_WORKERS:-$(n="$(nproc)"; echo $((n < 2 ? n : 2)))}"
if [ "$workers" -gt 1 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest "$@"
