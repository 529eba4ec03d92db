"""``--g2p-processes``: the daemon's G2P processes live exactly as long as the daemon, however
it ends (a clean stop, or SIGKILL that leaves no chance to clean up)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from kokoro_service.config import Settings
from kokoro_service.daemon import EXIT_STARTUP, run
from tests.conftest import wait_for
from tests.processes import Daemon


def children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` now."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_g2p_processes_end_with_the_daemon(tiny_dir: Path, sig: signal.Signals) -> None:
    daemon = Daemon(
        [
            "--model-dir",
            str(tiny_dir),
            "--max-batch",
            "2",
            "--g2p-processes",
            "2",
            "--precision",
            "fp32",
            "--torch-threads",
            "1",
        ]
    )
    spawned = {p for p in children(daemon.proc.pid) if b"spawn_main" in _cmdline(p)}
    assert len(spawned) == 2, daemon.log()
    assert "G2P in 2 process(es)" in daemon.log()
    code = daemon.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    # A clean stop joins them; after SIGKILL each notices its parent is gone (polled
    # twice a second), so a few seconds is ample on a busy host.
    assert wait_for(lambda: not alive(spawned), 30), f"left behind: {alive(spawned)}"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_children_helper_sees_this_process() -> None:
    assert os.getpid() in children(os.getppid())


def test_a_failed_start_ends_the_g2p_processes_it_started(tiny_dir: Path) -> None:
    """Start-up that fails after the engine is loaded (here the text port is taken)
    returns exit code 3 and leaves no G2P process behind in a process that embeds it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(
            model_dir=tiny_dir,
            tcp_port=taken.getsockname()[1],
            udp_port=0,
            max_batch=2,
            g2p_processes=1,
            precision="fp32",
            torch_threads=1,
        )
        before = children(os.getpid())
        assert run(settings) == EXIT_STARTUP
    started = {p for p in children(os.getpid()) - before if b"spawn_main" in _cmdline(p)}
    assert wait_for(lambda: not alive(started), 30), f"left behind: {alive(started)}"
    assert not {p for p in children(os.getpid()) - before if b"spawn_main" in _cmdline(p)}
