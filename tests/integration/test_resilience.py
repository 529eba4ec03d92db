"""The six defects of the design review (issue 10), each shown over the real daemon.

Every test here failed on the code before its fix (the closing note of issue 10 gives
the failures); each names the defect it guards.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kokoro_service.config import Settings
from kokoro_service.errors import StartupError
from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine
from kokoro_service.wire.client import Connection
from kokoro_service.wire.codec import Control, encode_control
from tests.conftest import TEST_TIMEOUT, DaemonFactory, assert_clean_reply, wait_for


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# ------------------------------------------------ 1. unbounded voice-blend cache


def test_distinct_blends_in_control_frames_keep_memory_flat(
    daemon: DaemonFactory, engine: Engine
) -> None:
    """3,000 CONTROL frames with distinct blends on one connection: before the fix each
    blend was built and kept (about 0.5 MB), 1.5 GB in all."""
    server = daemon()
    before = _rss_mib()
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello("1001")
        frames = b"".join(
            encode_control(Control(voice=f"af_sky:{i + 1},af_bella:1")) for i in range(3000)
        )
        conn.send_raw(frames)
        conn.text("Hello there.")
        conn.bye()
        reply = conn.read_until_end(TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert reply.chunks, "the last blend is spoken"
    growth = _rss_mib() - before
    assert growth < 150, f"RSS grew {growth:.0f} MiB over 3,000 blends"
    assert engine.voices.cached_blends <= 32


def test_blend_cache_is_an_lru_and_validation_fills_nothing(engine: Engine) -> None:
    voices = engine.voices
    for i in range(40):
        voices.check(f"af_sky:{i + 1},bf_emma:1")
    before = voices.cached_blends
    for i in range(40):
        voices.get(f"af_sky:{i + 1},bf_emma:1")
    assert before <= 32 and voices.cached_blends == 32
    # Equal blends spelled differently share one entry.
    assert voices.get("af_sky:1,bf_emma:1") is voices.get("bf_emma:0.5, af_sky:0.5")


# ------------------------------------------------ 2. the CLI imports torch for everything


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["serve", "--help"],
        ["send", "--help"],
        ["serve", "--tcp-port", "99999"],
        ["send", "--call-id", "1", "--tcp-port", "1", "hello"],
    ],
)
def test_commands_that_do_not_synthesize_do_not_import_torch(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from kokoro_service.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'kokoro', 'misaki') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert "HEAVY=\n" in out.stdout, out.stdout + out.stderr


# ------------------------------------------------ 3. a language switch stalls every call


def test_loading_a_language_does_not_block_other_languages(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call's CONTROL lang loads British English; G2P for American English must go on
    meanwhile.  The new language's construction is held open until the check is done."""
    import kokoro

    real_init = kokoro.KPipeline.__init__
    entered, release = threading.Event(), threading.Event()

    def slow_init(self: Any, *args: Any, **kw: Any) -> None:
        if kw.get("lang_code") == "b":
            entered.set()
            release.wait(TEST_TIMEOUT)
        real_init(self, *args, **kw)

    monkeypatch.setattr(kokoro.KPipeline, "__init__", slow_init)
    loader = threading.Thread(target=engine.pipeline, args=("b",))
    loader.start()
    try:
        assert entered.wait(TEST_TIMEOUT)
        done = threading.Event()
        phonemes: list[str] = []

        def g2p() -> None:
            phonemes.extend(c.phonemes for c in engine.phonemize("Hello there.", "a"))
            done.set()

        threading.Thread(target=g2p, daemon=True).start()
        assert done.wait(TEST_TIMEOUT), "American English G2P waited for British to load"
        assert phonemes
    finally:
        release.set()
        loader.join(TEST_TIMEOUT)
    assert "b" in engine._pipelines


# ------------------------------------------------ 4. start-up errors and leaks


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(tcp_port=0, udp_port=0, cache_dir=tmp_path, warmup=False, **kw)


def test_a_worker_that_cannot_start_fails_start(engine: Engine, tmp_path: Path) -> None:
    """A failure in a thread's first steps surfaces from start(), with nothing left open.
    (Before the fix start() looked for thread errors before the threads had run.)"""
    fds, threads = _open_fds(), threading.active_count()
    saved = engine.torch_threads
    engine.torch_threads = 0  # torch.set_num_threads(0) raises in the worker's bind_thread
    try:
        server = Server(_settings(tmp_path), engine, voice="af_sky")
        with pytest.raises(StartupError, match="server thread failed to start"):
            server.start()
    finally:
        engine.torch_threads = saved
    assert wait_for(lambda: threading.active_count() == threads, 10)
    assert _open_fds() == fds


def test_udp_bind_failure_leaves_no_tcp_socket(engine: Engine, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        udp_port = taken.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            tcp_port = probe.getsockname()[1]
        fds = _open_fds()
        settings = dataclasses.replace(_settings(tmp_path), tcp_port=tcp_port, udp_port=udp_port)
        with pytest.raises(StartupError, match="cannot bind") as failure:
            Server(settings, engine, voice="af_sky").start()
        # Closed by start() itself, not by the garbage collector once the error is gone:
        # a caller that keeps the error (to log or re-raise it) keeps its traceback too.
        assert failure.value is not None
        assert _open_fds() == fds
    with socket.socket() as again:  # a leaked listener would hold the port
        again.bind(("127.0.0.1", tcp_port))
        again.listen(1)


# ------------------------------------------------ 5. unlocked shared state


def test_stop_racing_the_workers_ends_every_call_once(daemon: DaemonFactory) -> None:
    """stop() past its drain ends the calls left; their readers close the calls' input and
    a worker finishes the segment in flight at the same time.  Before the fix each of
    those could end a call again: two END bookkeepings and two `call ended` lines."""
    server = daemon()
    conns = []
    for i in range(4):
        conn = Connection(*server.tcp_address, timeout=TEST_TIMEOUT)
        conn.hello(f"150{i}")
        # One sentence each: all of a call's text is cut, so nothing is left to refill.
        conn.text("This one sentence is long enough to keep a worker busy while it stops.")
        conns.append(conn)
    assert wait_for(lambda: conns[0].read_some(0.02) and bool(conns[0].reply.chunks))
    server.stop(drain_timeout=0.0)
    for conn in conns:
        assert conn.read_until_end(TEST_TIMEOUT).ended
        conn.close()
    assert server.calls.opened == 4
    assert server.calls.ended == 4


# ------------------------------------------------ 6. log flooding


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def warnings_counted() -> Iterator[_Count]:
    handler = _Count()
    logger = logging.getLogger("kokoro_service")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_garbage_from_many_addresses_cannot_flood_the_log(
    daemon: DaemonFactory, warnings_counted: _Count
) -> None:
    """2,000 garbage datagrams, each from its own loopback address: a line per address
    before the fix; now a burst of 20, then one a second, with a count of the rest."""
    server = daemon()
    started = time.monotonic()
    addresses = [f"127.{1 + i // 250}.{i % 250}.{1 + i % 7}" for i in range(2000)]
    for address in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
            s.sendto(b"\xff garbage", server.udp_address)
    # The registrar has read them all once a datagram sent after them is answered (sent
    # again until it is: a full socket buffer drops datagrams).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:

        def registered() -> bool:
            s.sendto(b"REGISTER:424242", server.udp_address)
            return "424242" in server.registry

        assert wait_for(registered)
    dropped = [r for r in warnings_counted.records if "datagram dropped" in r.getMessage()]
    allowed = 20 + (time.monotonic() - started) + 1  # the burst, then one line a second
    assert 1 <= len(dropped) <= allowed, (len(dropped), allowed)
