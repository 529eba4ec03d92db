#!/usr/bin/env bash
# Start kokoro-service, installing it into .venv first if needed (idempotent).
#
#   ./start-kokoro.sh                 serve on 127.0.0.1:8090 (TCP) / 13001 (UDP)
#   KOKORO_VOICE=jm_kumo KOKORO_TCP_PORT=9090 ./start-kokoro.sh --log-level debug
#
# Every `kokoro-service serve` option also reads a KOKORO_* variable (see --help); the
# daemon checks them all before it loads anything and exits 2 naming the bad one.  Extra
# arguments are passed to `serve`.  KOKORO_TORCH_SPEC picks the torch build to install
# (default: CPU) and KOKORO_PYTHON the interpreter; install.sh checks both first.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/install.sh"
exec "$root/.venv/bin/kokoro-service" serve "$@"
