#!/usr/bin/env bash
# The density benchmark (benchmarks/density.py) on a bare GPU host with Python 3.12 and a
# CUDA build of torch but no internet, in under 8 minutes all told.  From the repo root:
#
#   [WHEELS=shared/wheels] [OUT=dir] benchmarks/gpu_density.sh [more density.py options]
#
# WHEELS holds this package's dependencies as wheels (prepared where there is internet, for
# the host's Python and platform, e.g. `pip download -d shared/wheels --only-binary=:all:
# --python-version 3.12 --platform manylinux2014_x86_64 <dependencies in pyproject.toml>`).
# Wheels of packages the host already has (torch and its CUDA libraries above all) are
# skipped, so the host's torch is never replaced.  What the device tool's "cuda" image
# lacks comes to about 107 MB of wheels, more than one device call may carry (64 MiB):
# install them there over two calls into a folder on PYTHONPATH, and this script skips its
# own install (how it ran on an H200 on 2026-11-27: benchmarks/README.md).
#
# The real weights (327 MB) do not travel: a full-size random-weight checkpoint has the
# real architecture, hence the real work per frame of audio, and is built to speak at the
# real voices' rate (the result's text_chars_per_audio_s shows it); the result's "weights"
# field says which ran.
# Both batching policies run in one sweep (MODES), and each mode's --trace-file lands in
# OUT/<mode>/trace.jsonl: `python -m benchmarks.lib.simdevice OUT/batched/trace.jsonl NAME`
# fits the simulated device's calibration from it, to commit beside the JSON.
# Knobs for a dry run elsewhere: DEVICE (cuda), SIZE (full), NS, MODES, BUDGET_S, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
BUDGET_S=${BUDGET_S:-465}  # the whole script, install included: 8 minutes less a margin
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-shared/wheels}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-full}
NS=${NS:-1,2,4,8,16,32,64,128,256,512}
MODES=${MODES:-batch1,batched-fill,batched}
WORK=$(mktemp -d /tmp/kokoro-density.XXXXXX)
RESULT=${OUT:-$WORK}
mkdir -p "$RESULT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# The package runs from this checkout (the code under test), not from an installed copy.
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

# 1. Dependencies: only the wheels whose package the host lacks, without resolving (which
#    would want torch from the folder), into a folder of their own on PYTHONPATH.
if ! "$PY" -c 'import kokoro, misaki, click, soundfile, onnx' 2>/dev/null; then
    mapfile -t wheels < <("$PY" - "$WHEELS" <<'EOF'
import importlib.metadata as md, pathlib, sys
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = wheel.name.split("-")[0]
    if name in ("torch", "triton") or name.startswith("nvidia_"):
        continue  # torch and its CUDA libraries: the host's, always
    try:
        md.version(name)  # the host has it: keep the host's
    except md.PackageNotFoundError:
        print(wheel)
EOF
    )
    [ "${#wheels[@]}" -gt 0 ] || { echo "no wheels to install in $WHEELS" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-compile \
        --target "$WORK/site" "${wheels[@]}"
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

# 2. The checkpoint: `kokoro-service make-checkpoint`, run from this checkout.
#    2.9 frames per phoneme speaks at the real voices' rate, so segments are as long as
#    real ones and the work per segment is real.
"$PY" -m kokoro_service.cli make-checkpoint "$WORK/checkpoint" --size "$SIZE" \
    --frames-per-token 2.9

# 3. The sweep, both modes, under a hard limit.  density.py stops starting new N when its
#    own budget (left a minute and a half for the last round and the daemons' stops) is
#    spent; on the hard limit's SIGTERM it still writes what it measured.
left=$((BUDGET_S - (SECONDS - start)))
echo "$((SECONDS - start)) s spent on set-up; $left s left for the sweep" >&2
rc=0
timeout -k 30 "$left" "$PY" -m benchmarks.density --device "$DEVICE" --ns "$NS" --modes "$MODES" \
    --model-dir "$WORK/checkpoint" --budget-s "$((left > 150 ? left - 90 : 60))" \
    --call-timeout 60 --log-dir "$RESULT" --out "$RESULT/density.json" "$@" \
    > /dev/null 2> >(tee "$RESULT/density.log" >&2) || rc=$?
echo "result: $RESULT/density.json (exit $rc, $((SECONDS - start)) s in all)" >&2
exit "$rc"
