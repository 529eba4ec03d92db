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
exec .venv/bin/python -m pytest "$@"
