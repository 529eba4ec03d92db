"""The daemon as a probe compares it: from another commit's tree (``git archive`` of a
ref), under a descriptor limit of its own, on a tiny random-weight checkpoint."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks.lib.harness import ROOT

# Runs the daemon's command under RLIMIT_NOFILE = argv[1] (soft and hard); exec keeps the
# pid, so the ready file names the process the probe watches.
_WITH_NOFILE = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)
# Runs the daemon from the tree named by argv[1]: ahead of the editable install on sys.path.
_FROM_TREE = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from kokoro_service.cli import main; main()"
)


def limited_argv(argv: Sequence[str], nofile: int, code: Path | None = None) -> list[str]:
    """The harness's daemon ``argv`` (``... serve ARGS``) run under RLIMIT_NOFILE
    ``nofile`` and, given ``code``, from that tree's ``kokoro_service``."""
    out = list(argv)
    if code is not None:
        serve = out.index("serve")
        out = [sys.executable, "-c", _FROM_TREE, str(code), *out[serve:]]
    return [sys.executable, "-c", _WITH_NOFILE, str(nofile), *out]


def make_checkpoint(into: Path) -> Path:
    """A tiny random-weight checkpoint, built by the daemon's own command."""
    exe = ROOT / ".venv" / "bin" / "kokoro-service"
    base = (  # as the harness starts the daemon
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from kokoro_service.cli import main; main()"]
    )
    argv = [*base, "make-checkpoint", str(into), "--size", "tiny"]
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return into


@contextlib.contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """``kokoro_service`` as it was at ``ref`` (``git archive``), removed afterwards."""
    tree = Path(tempfile.mkdtemp(prefix="kokoro-baseline-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "kokoro_service"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)
