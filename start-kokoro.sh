#!/usr/bin/env bash
# Start kokoro-service, installing it into .venv first if needed (idempotent).
#
#   ./start-kokoro.sh                 serve on 127.0.0.1:8090 (TCP) / 13001 (UDP)
#   KOKORO_VOICE=jm_kumo KOKORO_TCP_PORT=9090 ./start-kokoro.sh --log-level debug
#
# Every `kokoro-service serve` option also reads a KOKORO_* variable (see --help); the seed's
# KOKORO_VOICE, KOKORO_TCP_PORT, KOKORO_UDP_PORT and KOKORO_DEVICE are checked here first so
# that a typo fails in a second rather than after the model loads.  Extra arguments are
# passed to `serve`.  KOKORO_TORCH_SPEC picks the torch build to install (default: CPU).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
  echo "start-kokoro.sh: $*" >&2
  exit 2
}

for var in KOKORO_TCP_PORT KOKORO_UDP_PORT KOKORO_SINK_PORT_BASE; do
  value="${!var-}"
  [ -z "$value" ] && continue
  if ! [[ "$value" =~ ^[0-9]{1,5}$ ]] || [ "$((10#$value))" -lt 1 ] || [ "$((10#$value))" -gt 65535 ]; then
    die "$var='$value' is not a port number (1-65535)"
  fi
done

case "${KOKORO_DEVICE:-auto}" in
  auto | cpu | mps | cuda | cuda:[0-9] | cuda:[0-9][0-9]) ;;
  *) die "KOKORO_DEVICE='${KOKORO_DEVICE}' is not one of auto, cpu, cuda, cuda:N, mps" ;;
esac

if [ -n "${KOKORO_MODEL_DIR-}" ] && [ ! -d "$KOKORO_MODEL_DIR" ]; then
  die "KOKORO_MODEL_DIR='$KOKORO_MODEL_DIR' is not a directory"
fi

"$root/scripts/install.sh"
exec "$root/.venv/bin/kokoro-service" serve "$@"
