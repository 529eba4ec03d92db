"""Shared fixtures: a random-weight checkpoint in the real KModel layout, an engine loaded
from it through ``--model-dir`` code paths, and in-process daemons on ephemeral ports."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.types import ASGIApp

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kokoro_service.adapters.http.app import create_app
from kokoro_service.adapters.http.server import HttpServer
from kokoro_service.adapters.wyoming import WyomingServer
from kokoro_service.config import Settings
from kokoro_service.daemon import Loaded, load_off_main_thread
from kokoro_service.ops.readiness import Lifecycle
from kokoro_service.server.local_calls import LocalCallsSlot
from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine
from kokoro_service.synthesis.models.checkpoint import build_random_checkpoint
from kokoro_service.synthesis.models.sources import model_dir_source
from kokoro_service.text.segmenter import Segmenter, SegmenterConfig
from kokoro_service.wire.client import Reply
from kokoro_service.wire.codec import Audio, AudioStreamDecoder, End, Words

REPO = Path(__file__).resolve().parent.parent
"""The repository's root: the tree tests read (units, scripts, the package)."""
TEST_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_checkpoint(tmp_path_factory.mktemp("tiny"), size="tiny", seed=1)


@pytest.fixture(scope="session")
def engine(tiny_dir: Path) -> Engine:
    eng = Engine(model_dir_source(tiny_dir), device="cpu", default_lang="a")
    eng.warm_up("af_sky", "a")
    return eng


@dataclasses.dataclass(frozen=True)
class RealWeights:
    """The embedded real Kokoro-82M, loaded and warmed up once by the daemon's own loader."""

    settings: Settings
    loaded: Loaded


@pytest.fixture(scope="session")
def real_weights(tmp_path_factory: pytest.TempPathFactory) -> RealWeights:
    cache = tmp_path_factory.getbasetemp() / "embedded-model-cache"
    # No model dir and no hub cache: the embedded import, as a fresh install runs it.
    settings = Settings(tcp_port=0, udp_port=0, cache_dir=cache, workers=2, device="cpu")
    loaded = load_off_main_thread(settings)
    assert loaded.engine.source.kind == "embedded"
    assert loaded.voice == "jm_kumo"  # af_sky is not embedded: the logged substitute
    assert loaded.warm is not None and loaded.warm.rtf > 0
    return RealWeights(settings, loaded)


DaemonFactory = Callable[..., Server]


def http_get(base: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclasses.dataclass
class Ops:
    """An in-process server with the daemon's HTTP port wired as ``run()`` wires it."""

    server: Server
    lifecycle: Lifecycle
    base: str

    def get(self, path: str) -> tuple[int, Any]:
        status, body = http_get(self.base, path)
        return status, json.loads(body) if path != "/metrics" else body


@pytest.fixture
def ops(daemon: DaemonFactory) -> Iterator[Callable[..., Ops]]:
    """In-process servers with the HTTP port wired as ``daemon.run()`` wires it."""
    servers: list[HttpServer] = []

    def start(**overrides: Any) -> Ops:
        server = daemon(**overrides)
        lifecycle = Lifecycle()
        server.metrics.live.lifecycle = lifecycle
        lifecycle.serving(server.status, capacity=None)
        app = http_app(server, lifecycle)
        http = HttpServer(app, "127.0.0.1", 0)
        http.start()
        servers.append(http)
        host, port = http.address
        return Ops(server, lifecycle, f"http://{host}:{port}")

    yield start
    for http in servers:
        http.stop()


@pytest.fixture
def daemon(engine: Engine, tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start in-process servers with test settings; each is stopped after the test."""
    servers: list[Server] = []

    def start(**overrides: Any) -> Server:
        base = Settings(
            tcp_port=0,
            udp_port=0,
            sink_port_base=free_port_base(),
            cache_dir=tmp_path,
            drain_timeout=10.0,
            warmup=False,
            # Sentence mode cuts the same segments however the text is buffered, so tests
            # can predict every frame's length; load-dependent growth has its own tests.
            segment_growth=0,
        )
        serving = overrides.pop("engine", None) or engine  # a test's wrapper of it
        settings = dataclasses.replace(base, **overrides)
        server = Server(settings, serving, voice=overrides.pop("voice", None) or "af_sky")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(drain_timeout=5.0)


def http_app(
    server: Server, lifecycle: Lifecycle | None = None, settings: Settings | None = None
) -> ASGIApp:
    """The HTTP port's app over an in-process server, wired as ``daemon.run()`` wires it."""
    if lifecycle is None:
        lifecycle = Lifecycle()
        lifecycle.serving(server.status, capacity=None)
    serving = LocalCallsSlot()
    serving.fill(server.local_calls())
    return create_app(server.metrics, lifecycle, settings or server.settings, serving)


WyomingFactory = Callable[[Server], WyomingServer]


@pytest.fixture
def wyoming() -> Iterator[WyomingFactory]:
    """The Wyoming port over an in-process server, as ``daemon.run()`` starts it, with the
    server's settings and TLS; each is stopped after the test."""
    started: list[WyomingServer] = []

    def start(server: Server) -> WyomingServer:
        port = WyomingServer(server.local_calls(), 0, tls=server.tls)
        port.start()
        started.append(port)
        return port

    yield start
    for port in started:
        port.stop()


def free_port_base(span: int = 32) -> int:
    """A sink port base such that base+N for N < ``span`` are free now.

    Drawn below Linux's ephemeral range (32768 up), so the daemon's and the tests' own
    outgoing connections cannot take one of them meanwhile.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, 32_768 - span)
        try:
            for port in range(base + 1, base + span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of sink ports below 32768")


class FakeSink:
    """A fake outbound audio processor: a TCP listener on sink_port_base + N."""

    def __init__(
        self, port: int, *, read: bool = True, width: int = 4, tls: ssl.SSLContext | None = None
    ) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not read:  # a small window, so a processor that never reads stalls quickly
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.read = read
        self.width = width  # bytes per sample of the call's format
        self.frames: list[Audio | End] = []
        self.words: list[Words] = []
        self.call_ids: list[str | None] = []
        self.connections = 0
        self.tls = tls  # a server context: the daemon must dial it over TLS
        self.tls_errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = AudioStreamDecoder(expect_hello=True, width=self.width)
        if self.tls is not None:
            conn.settimeout(10)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.tls_errors.append(str(exc))
                conn.close()
                return
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                if not self.read:
                    time.sleep(0.1)
                    continue
                try:
                    data = conn.recv(1 << 20)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self.tls is not None:
                        self.tls_errors.append(repr(exc))
                    return
                if not data:
                    return
                for frame in decoder.feed(data):
                    if isinstance(frame, Words):
                        self.words.append(frame)
                    else:
                        self.frames.append(frame)
                if decoder.call_id is not None and decoder.call_id not in self.call_ids:
                    self.call_ids.append(decoder.call_id)

    @property
    def ended(self) -> bool:
        return any(isinstance(f, End) for f in self.frames)

    def wait_end(self, timeout: float = TEST_TIMEOUT) -> bool:
        return wait_for(lambda: self.ended, timeout)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(2)


def wait_for(predicate: Callable[[], bool], timeout: float = TEST_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class LogCapture(logging.Handler):
    """Collects formatted records of kokoro_service loggers for assertions on reasons."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.lines.append(f"{record.levelname} {record.getMessage()}")

    def has(self, *needles: str) -> bool:
        with self._lock2:
            return any(all(n in line for n in needles) for line in self.lines)

    def wait(self, *needles: str, timeout: float = TEST_TIMEOUT) -> bool:
        return wait_for(lambda: self.has(*needles), timeout)


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    handler = LogCapture()
    logger = logging.getLogger("kokoro_service")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def read_reply(sock: socket.socket, timeout: float = TEST_TIMEOUT) -> Reply:
    """Everything the daemon sends on ``sock`` until it closes (a reset counts as a close)."""
    decoder = AudioStreamDecoder()
    reply = Reply()
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        for frame in decoder.feed(data):
            if isinstance(frame, End):
                reply.ended = True
            elif isinstance(frame, Words):
                reply.words[frame.chunk_id] = frame.words
            else:
                reply.chunks.append(frame)
    reply.closed = True
    return reply


# ------------------------------------------------------------------ replies


def expected_lengths(
    engine: Engine, texts: list[str], voice: str = "af_sky", speed: float = 1.0
) -> list[int]:
    """Sample counts the daemon must send for ``texts``: durations are deterministic."""
    seg = Segmenter(SegmenterConfig(growth=0))
    segments: list[str] = []
    for t in texts:
        segments += seg.push(t)
    segments += seg.flush()
    out = []
    for s in segments:
        audio = engine.synthesize(s, voice=voice, lang="a", speed=speed).audio
        if audio is not None:
            out.append(len(audio))
    return out


def lengths(reply: Reply) -> list[int]:
    return [len(c.samples) // 4 for c in reply.chunks]


def send_udp(server: Server, payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, server.udp_address)


def assert_clean_reply(reply: Reply) -> None:
    assert reply.ended, "END missing"
    assert reply.closed, "connection not closed after END"
    assert reply.chunk_ids == list(range(1, len(reply.chunks) + 1))
    for chunk in reply.chunks:
        assert chunk.sample_rate == 24000
        samples = chunk.to_array()
        assert samples.dtype == np.float32
        assert samples.size > 0
        assert np.isfinite(samples).all()
