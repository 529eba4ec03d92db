"""The daemon's lifecycle: start-up, serving until a signal, shutdown, exit code.

``run(settings)`` opens the HTTP port (metrics and health) when asked, picks the device,
loads the model and warms it up off the main thread, starts the
:class:`~kokoro_service.server.server.Server` and the Wyoming port, says it is ready
(:mod:`kokoro_service.ops.readiness`), waits for SIGTERM or SIGINT, drains, and returns
the exit code.  It is the one place that wires the layers together.

Over 400 lines: loading (device, precision, G2P processes, warm-up) and the lifecycle are
the two halves of one start-up that must fail as one exit code.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

from kokoro_service.adapters.http.app import create_app
from kokoro_service.adapters.http.server import HttpServer
from kokoro_service.adapters.wyoming import WyomingServer
from kokoro_service.config import Settings
from kokoro_service.errors import KokoroServiceError, StartupError, VoiceError
from kokoro_service.ops.metrics import Metrics
from kokoro_service.ops.readiness import Lifecycle, Readiness
from kokoro_service.server.local_calls import LocalCallsSlot
from kokoro_service.server.server import Server
from kokoro_service.synthesis.devices import bf16_unavailable, probe_devices, select_device
from kokoro_service.synthesis.engine import Engine, PrecisionCheck, WarmUp
from kokoro_service.synthesis.models.sources import ModelSource, resolve_source
from kokoro_service.synthesis.voices import choose_voice
from kokoro_service.text import phonetext

log = logging.getLogger("kokoro_service.daemon")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_STARTUP = 3
EXIT_FORCED = 4
_MAIN_LOOP_TICK = 0.5


class EngineFactory(Protocol):
    """Builds the engine from its source (the signature of :class:`Engine`)."""

    def __call__(
        self,
        source: ModelSource,
        *,
        device: str,
        default_lang: str,
        torch_threads: int | None,
    ) -> Engine: ...


@dataclass(frozen=True, slots=True)
class Loaded:
    """A loaded engine with the voice the daemon will use and what the warm-up measured."""

    engine: Engine
    voice: str
    warm: WarmUp | None
    workers: int = 1
    precision_check: PrecisionCheck | None = None

    @property
    def calls_in_real_time(self) -> float | None:
        """Calls the workers keep speaking at once in real time: workers / RTF."""
        if self.warm is None or self.warm.rtf <= 0:
            return None
        return self.workers / self.warm.rtf


def choose_device(requested: str) -> str:
    cuda, mps = probe_devices()
    device = select_device(requested, cuda_available=cuda, mps_available=mps)
    log.info("device %s (requested %s; cuda=%s mps=%s)", device, requested, cuda, mps)
    return device


def default_torch_threads(device: str, workers: int) -> int | None:
    """On the CPU, split the cores among the workers so their OpenMP teams do not fight."""
    if device != "cpu":
        return None
    return max(1, len(os.sched_getaffinity(0)) // workers)


def load_engine(
    settings: Settings, device: str | None = None, make_engine: EngineFactory = Engine
) -> Loaded:
    """Resolve the model source, load it, choose the voice and warm up (if asked), in the
    calling thread.  A failure to load is a :class:`StartupError`; one in the warm-up a
    :class:`SynthesisError` (both exit 3 from :func:`run`).  ``make_engine`` builds the
    engine: :class:`Engine`, or a benchmark's stand-in for a device this host lacks."""
    device = device or choose_device(settings.device)
    threads = settings.torch_threads or default_torch_threads(device, settings.workers)
    try:
        source = resolve_source(settings.model_dir, settings.cache_dir)
        engine = make_engine(
            source, device=device, default_lang=settings.lang, torch_threads=threads
        )
    except VoiceError as exc:  # the default language cannot be loaded
        raise StartupError(str(exc)) from exc
    try:
        engine.rewrite = text_rewrite(settings, set(getattr(engine.model, "vocab", {})))
        voice = choose_voice(engine.voices, settings.voice, engine.source.description)
        for alias, target in settings.voice_alias:  # a typo fails here, not at a caller's request
            try:
                engine.voices.check(target)
            except VoiceError as exc:
                raise StartupError(
                    f"--voice-alias {alias}={target!r} cannot be used: {exc}"
                ) from exc
        check = choose_precision(engine, settings, voice)
        max_batch = settings.batch_limit(engine.device)
        engine.use_g2p_batch(settings.g2p_batch)
        if settings.g2p_processes and max_batch > 1:
            engine.use_g2p_processes(settings.g2p_processes, settings.lang)
        elif settings.g2p_processes:
            log.warning("--g2p-processes is ignored with --max-batch 1: G2P runs in the workers")
        warm = engine.warm_up(voice, settings.lang, max_batch) if settings.warmup else None
    except BaseException:
        engine.close(wait=False)  # G2P processes started before the failure end with it
        raise
    loaded = Loaded(engine, voice, warm, workers=settings.workers, precision_check=check)
    if warm is not None:
        # What an operator sizes a host by: beyond this many calls speaking at once,
        # no segmentation keeps every player fed and stalls are certain.
        log.info(
            "warm-up took %.2fs; synthesis at RTF %.3f per worker, so %d worker(s) "
            "keep about %.1f calls speaking at once in real time",
            warm.seconds,
            warm.rtf,
            settings.workers,
            loaded.calls_in_real_time or math.inf,
        )
    log.info("torch intra-op threads per worker: %s", threads or "torch default")
    return loaded


# The languages --lexicon rewrites, and the one --phone-text does: its rules are American
# (ZIP codes, states, month-first dates), so British English is left to misaki.
ENGLISH = ("a", "b")
PHONE_TEXT_LANGS = ("a",)


def text_rewrite(settings: Settings, vocab: set[str]) -> Callable[[str, str], str] | None:
    """What English G2P reads: phone content in words (``--phone-text``), then the names
    of ``--lexicon`` in misaki's own ``[word](/phonemes/)`` markup.  None when neither is
    on.  A bad lexicon file is a :class:`ConfigError`, so it fails start-up."""
    lexicon = (
        phonetext.Lexicon.load(settings.lexicon, vocab) if settings.lexicon is not None else None
    )
    if lexicon is not None:
        log.info("lexicon %s: %d word(s)", settings.lexicon, len(lexicon))
    if not settings.phone_text and lexicon is None:
        return None
    if settings.phone_text:
        phonetext.warm_up()  # its word lists, so the first e-mail address does not pay

    def rewrite(text: str, lang: str) -> str:
        if lang not in ENGLISH:
            return text
        if settings.phone_text and lang in PHONE_TEXT_LANGS:
            text = phonetext.normalize(text)
        return lexicon.apply(text) if lexicon is not None else text

    return rewrite


def choose_precision(engine: Engine, settings: Settings, voice: str) -> PrecisionCheck | None:
    """Put the engine in the precision ``--precision`` asks for, and say which and why.

    ``auto`` compares bf16 with fp32 on this host as part of the warm-up (so not without
    it) and keeps fp32 unless bf16 is both faster and passes the quality check.  A named
    precision that the device cannot run is a :class:`StartupError`.
    """
    check = None
    if settings.precision != "auto":
        engine.use_precision(settings.precision)
        why = "as --precision asks"
    elif (unavailable := bf16_unavailable(engine.device)) is not None:
        why = f"auto: {unavailable}"
    elif not settings.warmup:
        why = "auto without the warm-up, which is where bf16 is checked"
    else:
        check = engine.compare_precisions(voice, settings.lang)
        why = (
            f"auto: {check.reason}; RTF bf16 {check.bf16_rtf:.3f} vs fp32 {check.fp32_rtf:.3f}, "
            f"log-mel distance {check.distance:.3f} (limit {check.limit:.3f})"
        )
    log.info("vocoder precision %s (%s)", engine.precision, why)
    return check


def load_off_main_thread(
    settings: Settings, device: str | None = None, make_engine: EngineFactory = Engine
) -> Loaded:
    """:func:`load_engine` in a thread that then exits.

    libgomp gives every thread that runs a parallel region its own team.  A team left
    behind by the main thread makes the workers' teams outnumber the cores, and libgomp
    then stops spinning between regions: measured 1.4x slower synthesis on 2 cores.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="loader") as pool:
        return pool.submit(load_engine, settings, device, make_engine).result()


class _Signals:
    """Signal handlers only set flags; the main loop acts on them."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.count = 0

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        self.stop.set()


def descriptor_limit(settings: Settings) -> int:
    """Raise the soft descriptor limit to the hard one, and warn when the connection caps
    could take more descriptors than that.

    A shell's soft limit of 1024 dates from select(), which this daemon does not use;
    systemd's LimitNOFILE sets both limits.  Past the limit the daemon survives (accepts
    fail, shed and retry) but refuses connections, so the warning says what to raise.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("descriptor limit stays %d: %s", soft, exc)
    needed = settings.descriptors_needed()
    if needed > soft:
        log.warning(
            "the descriptor limit (%d) is below what the connection caps can use (%d): "
            "beyond it new connections are refused; raise LimitNOFILE (ulimit -n) or "
            "lower --max-connections, --max-http-connections, --max-wyoming-connections",
            soft,
            needed,
        )
    return soft


def run(settings: Settings, make_engine: EngineFactory = Engine) -> int:
    """Load the engine, serve until SIGTERM/SIGINT, drain, and return the exit code."""
    descriptor_limit(settings)
    readiness = Readiness(settings.ready_file)
    readiness.withdraw_stale()  # a file left by a killed run must not read as ready
    metrics, lifecycle = Metrics(), Lifecycle()
    metrics.live.lifecycle = lifecycle
    serving = LocalCallsSlot()
    http: HttpServer | None = None
    wyoming: WyomingServer | None = None
    loaded: Loaded | None = None
    server: Server | None = None
    try:
        if settings.http_port is not None:
            # Up before the model loads: a liveness probe passes while /readyz says why
            # the instance is not ready yet.
            app = create_app(metrics, lifecycle, settings, serving)
            tls = (
                (settings.tls_cert, settings.tls_key)
                if settings.tls_cert is not None and settings.tls_key is not None
                else None
            )
            http = HttpServer(
                app,
                settings.http_host,
                settings.http_port,
                tls=tls,
                max_connections=settings.max_http_connections,
                first_request_timeout=settings.hello_timeout,
                on_refused=lambda: metrics.refused("max_connections"),
            )
            http.start()
        loaded = load_off_main_thread(settings, make_engine=make_engine)
        server = Server(
            settings,
            loaded.engine,
            voice=loaded.voice,
            capacity=loaded.calls_in_real_time,
            metrics=metrics,
        )
        server.start()
        if settings.wyoming_port is not None:
            wyoming = WyomingServer(server.local_calls(), settings.wyoming_port, tls=server.tls)
            wyoming.start()
        serving.fill(server.local_calls())
    except KokoroServiceError as exc:  # StartupError, ConfigError, VoiceError ...
        log.error("start-up failed: %s", exc)
        # What did start is stopped: the trace file closed, G2P processes ended.
        if server is not None:
            server.stop(drain_timeout=0.0)
        if loaded is not None:
            loaded.engine.close(wait=False)
        if http is not None:
            http.stop()
        return EXIT_STARTUP
    code = EXIT_ERROR
    try:
        code = _serve(settings, readiness, server, loaded, lifecycle, metrics, http, wyoming)
    finally:
        if code != EXIT_FORCED:  # a forced exit waits for nothing
            # After the server's drain, which has finished their calls too.
            for port in (wyoming, http):
                if port is not None:
                    port.stop()
        loaded.engine.close(wait=code != EXIT_FORCED)
    return code


def _serve(
    settings: Settings,
    readiness: Readiness,
    server: Server,
    loaded: Loaded,
    lifecycle: Lifecycle,
    metrics: Metrics,
    http: HttpServer | None,
    wyoming: WyomingServer | None,
) -> int:
    """Serve until a signal, then drain; the exit code."""
    engine = loaded.engine
    metrics.describe(
        model_source=engine.source.kind,
        device=engine.device,
        precision=engine.precision,
        max_batch=server.max_batch,
        voice=loaded.voice,
    )
    lifecycle.serving(server.status, loaded.calls_in_real_time)

    signals = _Signals()
    previous = {sig: signal.signal(sig, signals.handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        info = _ready_info(settings, server, loaded, http, wyoming)
        readiness.ready(info, status=_status(server, loaded))
        watchdog = readiness.watchdog_interval
        tick = min(_MAIN_LOOP_TICK, watchdog) if watchdog else _MAIN_LOOP_TICK
        pinged = time.monotonic()
        while not signals.stop.wait(tick):
            if server.thread_error is not None:
                break
            if watchdog and time.monotonic() - pinged >= watchdog:
                readiness.ping()
                pinged = time.monotonic()
        log.info("stopping: draining for up to %.0fs", settings.drain_timeout)
        lifecycle.drain()
        readiness.stopping(f"draining {server.active_calls} call(s)")
        stopper = threading.Thread(target=server.stop, name="stopper", daemon=True)
        stopper.start()
        while stopper.is_alive():
            stopper.join(0.2)
            if signals.count >= 2:
                log.error("second signal: exiting now without draining")
                return EXIT_FORCED
    finally:
        readiness.withdraw()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_ERROR if server.thread_error is not None else EXIT_OK


def _ready_info(
    settings: Settings,
    server: Server,
    loaded: Loaded,
    http: HttpServer | None,
    wyoming: WyomingServer | None,
) -> dict[str, object]:
    tcp_host, tcp_port = server.tcp_address
    udp_host, udp_port = server.udp_address
    return {
        "pid": os.getpid(),
        "tcp": {"host": tcp_host, "port": tcp_port, "tls": settings.tls},
        "udp": {"host": udp_host, "port": udp_port},
        "device": loaded.engine.device,
        "voice": loaded.voice,
        "model_source": loaded.engine.source.kind,
        "workers": settings.workers,
        "max_batch": server.max_batch,
        "http": (
            None
            if http is None
            else {"host": http.address[0], "port": http.address[1], "tls": http.tls}
        ),
        "max_calls": server.calls.max_calls,
        "wyoming": (
            None if wyoming is None else dict(zip(("host", "port"), wyoming.address, strict=True))
        ),
        "torch_threads": loaded.engine.torch_threads,
        "precision": loaded.engine.precision,
        "precision_check": (
            None if loaded.precision_check is None else loaded.precision_check.as_dict()
        ),
        "rtf": None if loaded.warm is None else round(loaded.warm.rtf, 4),
        "calls_in_real_time": (
            None if loaded.calls_in_real_time is None else round(loaded.calls_in_real_time, 2)
        ),
    }


def _status(server: Server, loaded: Loaded) -> str:
    host, port = server.tcp_address
    capacity = loaded.calls_in_real_time
    keeps = f"; keeps about {capacity:.1f} calls speaking" if capacity else ""
    limit = server.calls.max_calls
    admits = f", admits {limit}" if limit else ""
    return f"serving on {host}:{port} with voice {loaded.voice}{keeps}{admits}"
