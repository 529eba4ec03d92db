#!/usr/bin/env bash
# Creates or refreshes .venv at the repo root with kokoro-service and its dependencies.
#   scripts/install.sh          runtime only
#   scripts/install.sh test     runtime + test tools
#   scripts/install.sh bench    runtime + benchmark tools
# Idempotent: a stamp records what was installed, so a second run returns at once.
# KOKORO_TORCH_SPEC overrides the torch requirement (default: the CPU wheel torch==2.13.0;
# e.g. KOKORO_TORCH_SPEC='torch==2.5.1' on a CUDA host). KOKORO_PYTHON picks the interpreter.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

extras="${1:-}"
case "$extras" in
  ""|test|bench|test,bench) ;;
  *) echo "install.sh: unknown extra '$extras' (use test or bench)" >&2; exit 2 ;;
esac

python="${KOKORO_PYTHON:-python3}"
torch_spec="${KOKORO_TORCH_SPEC:-torch==2.13.0}"
venv="$root/.venv"

digest="$(cat pyproject.toml packaging/en_core_web_sm/pyproject.toml \
  packaging/en_core_web_sm/en_core_web_sm/__init__.py | sha256sum | cut -c1-16)"
stamp="$venv/.kokoro-installed"
want="$digest torch=$torch_spec extras=$extras"

# Installed already when a stamp has this digest and torch, and every extra asked for:
# each extra includes the runtime, so "test" serves a later runtime-only start too.
satisfied() {
  local line have e
  [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ -x "$venv/bin/kokoro-service" ] || return 1
  while IFS= read -r line; do
    case "$line" in "$digest torch=$torch_spec extras="*) ;; *) continue ;; esac
    have=",${line##*extras=},"
    for e in ${extras//,/ }; do
      case "$have" in *",$e,"*) ;; *) continue 2 ;; esac
    done
    return 0
  done < "$stamp"
  return 1
}
if satisfied; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)'; then
    echo "install.sh: kokoro-service needs Python 3.10-3.12; '$python' is $("$python" -V 2>&1). Set KOKORO_PYTHON." >&2
    exit 1
  fi
  echo "install.sh: creating $venv with $("$python" -V 2>&1)" >&2
  "$python" -m venv "$venv"
fi

pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)
echo "install.sh: installing $torch_spec" >&2
"${pip[@]}" "$torch_spec"
echo "install.sh: installing kokoro-service${extras:+[$extras]} and the offline spaCy alias" >&2
"${pip[@]}" "$root/packaging/en_core_web_sm" -e "$root${extras:+[$extras]}"

# A satisfied import is the real test: a half-finished install must not leave a stamp.
"$venv/bin/python" -c 'import torch, kokoro, misaki.en, en_core_web_sm, kokoro_service' >/dev/null
# Append, so installing "test" after runtime keeps both stamps valid.
{ grep -vxF "$want" "$stamp" 2>/dev/null || true; echo "$want"; } > "$stamp.tmp"
mv "$stamp.tmp" "$stamp"
echo "install.sh: ready ($venv)" >&2
