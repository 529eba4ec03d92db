"""The daemon: TCP text connections, the UDP registrar, synthesis workers, and shutdown.

Threads: one accept loop, one reader per text connection, one UDP registrar, ``workers``
synthesis workers, and one writer per destination (see :mod:`kokoro_service.routing`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from .config import Settings
from .engine import (
    DEFAULT_VOICE,
    Engine,
    Synthesis,
    load_engine,
    probe_devices,
    select_device,
)
from .errors import (
    KokoroServiceError,
    ProtocolError,
    StartupError,
    SynthesisError,
    VoiceError,
)
from .protocol import (
    Bye,
    ClientFrame,
    Control,
    Hello,
    Keepalive,
    Register,
    Text,
    TextStreamDecoder,
    parse_datagram,
)
from .routing import CallRoute, Registry
from .scheduler import CallWork, Scheduler, Segment
from .segmenter import Segmenter

log = logging.getLogger("kokoro_service.server")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_STARTUP = 3
EXIT_FORCED = 4
_TICK = 0.25  # how often blocked loops look at the stop flag and their deadlines
_BUDGET_SAFETY = 0.7  # headroom for estimation error and scheduling jitter
_LINGER = 2.0  # after END, how long to wait for the peer's close before closing ourselves


class RateLimitedLog:
    """Logs the first event per key and then at most one line per ``interval``, with a count
    of what it held back, so a flood of garbage cannot flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = 5.0, max_keys: int = 1024) -> None:
        self._logger = logger
        self._interval = interval
        self._max_keys = max_keys
        self._state: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last, held = self._state.get(key, (-1e9, 0))
            if now - last < self._interval:
                self._state[key] = (last, held + 1)
                return
            if len(self._state) >= self._max_keys:
                self._state.clear()
            self._state[key] = (now, 0)
        suffix = f" ({held} similar suppressed)" if held else ""
        self._logger.warning(msg + suffix, *args)


@dataclass(eq=False)
class Call:
    """A live call: its settings, segmenter, scheduler entry and audio route."""

    call_id: str
    peer: str
    route: CallRoute
    work: CallWork
    voice: str
    lang: str
    speed: float
    segmenter: Segmenter
    lock: threading.RLock = field(default_factory=threading.RLock)
    segments: int = 0
    synth_seconds: float = 0.0
    audio_seconds: float = 0.0
    utterance_started: float = field(default_factory=time.monotonic)
    playback_start: float | None = None
    drained: bool = True
    input_closed: bool = False
    end_reason: str = ""


class Server:
    """Serves the wire protocol of ``PROTOCOL.md`` with a loaded :class:`Engine`.

    Responsibilities: bind and accept; read and validate each connection's frames; route
    each call's audio; schedule synthesis fairly across calls; stop cleanly.  ``start()``
    returns once both sockets are bound; ``stop()`` may be called from any thread, drains
    for at most ``drain_timeout`` and joins every thread it started.
    """

    def __init__(self, settings: Settings, engine: Engine, *, voice: str) -> None:
        self.settings = settings
        self.engine = engine
        self.voice = voice
        self.scheduler = Scheduler()
        self.registry = Registry(settings.max_registrations)
        self._calls: dict[str, Call] = {}
        self._by_work: dict[int, Call] = {}
        self._ending: list[Call] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._readers: set[threading.Thread] = set()
        self._threads: list[threading.Thread] = []
        self._tcp: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._thread_error: BaseException | None = None
        self._ratelimit = RateLimitedLog(log)
        self._chars_per_second: float | None = None  # one worker's synthesis speed
        self._rtf: float | None = None  # one worker's synthesis seconds per audio second

    # ------------------------------------------------------------------ lifecycle

    @property
    def tcp_address(self) -> tuple[str, int]:
        if self._tcp is None:
            raise RuntimeError("server not started")
        addr = self._tcp.getsockname()
        return str(addr[0]), int(addr[1])

    @property
    def udp_address(self) -> tuple[str, int]:
        if self._udp is None:
            raise RuntimeError("server not started")
        addr = self._udp.getsockname()
        return str(addr[0]), int(addr[1])

    @property
    def active_calls(self) -> int:
        with self._lock:
            return len(self._calls)

    def start(self) -> None:
        """Bind both sockets and start every thread; raise StartupError if binding fails."""
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        try:
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((s.host, s.tcp_port))
            tcp.listen(min(s.max_connections, 1024))
            tcp.settimeout(_TICK)
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((s.host, s.udp_port))
            udp.settimeout(_TICK)
        except OSError as exc:
            raise StartupError(
                f"cannot bind {s.host} tcp:{s.tcp_port} udp:{s.udp_port}: {exc.strerror or exc}"
            ) from exc
        self._tcp, self._udp = tcp, udp
        if not _is_loopback(s.host):
            log.warning(
                "listening on %s, beyond loopback: only peers in --allow (%s) are served",
                s.host,
                ",".join(str(n) for n in s.allow),
            )
        started = threading.Barrier(s.workers + 3)
        targets = [("accept", self._accept_loop), ("registrar", self._udp_loop)] + [
            (f"worker-{i}", self._worker_loop) for i in range(s.workers)
        ]
        for name, target in targets:
            t = threading.Thread(target=self._guard, args=(target, started), name=name, daemon=True)
            self._threads.append(t)
            t.start()
        started.wait()
        if self._thread_error is not None:
            raise StartupError(f"a server thread failed to start: {self._thread_error}")
        log.info(
            "listening tcp=%s:%d udp=%s:%d workers=%d voice=%s lang=%s",
            *self.tcp_address,
            *self.udp_address,
            s.workers,
            self.voice,
            s.lang,
        )

    def _guard(self, target: object, started: threading.Barrier) -> None:
        started.wait()
        try:
            target()  # type: ignore[operator]
        except BaseException as exc:
            self._thread_error = exc
            log.exception("thread %s died", threading.current_thread().name)
            self._stopping.set()

    @property
    def thread_error(self) -> BaseException | None:
        return self._thread_error

    def stop(self, drain_timeout: float | None = None) -> bool:
        """Stop accepting, finish owed audio within the drain timeout, END every call.

        Thread-safe and idempotent.  Returns True when every call drained in time.
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return True
            timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
            deadline = time.monotonic() + timeout
            self._stopping.set()
            for sock in (self._tcp, self._udp):
                if sock is not None:
                    sock.close()
            with self._lock:
                readers = list(self._readers)
            for t in readers:  # readers see the flag within a tick and close call input
                t.join(max(0.0, deadline - time.monotonic()))
            while self.active_calls and time.monotonic() < deadline:
                time.sleep(0.02)
            with self._lock:
                left = list(self._calls.values())
            drained = not left
            for call in left:
                with call.lock:
                    dropped, _ = self.scheduler.cancel(call.work)
                    frames = call.route.purge()
                log.warning(
                    "drain timeout call=%s: dropped %d segment(s) and %d frame(s); sending END",
                    call.call_id,
                    dropped,
                    frames,
                )
                self._end_call(call, "daemon stopped (drain timeout)")
            self.scheduler.stop()
            for t in self._threads:
                t.join(max(1.0, deadline - time.monotonic()))
            with self._lock:
                ending = list(self._ending)
                self._ending.clear()
            for call in ending:
                if not call.route.join(max(0.5, deadline - time.monotonic())):
                    call.route.abort()
                    call.route.join(1.0)
            self._stopped.set()
            log.info("stopped drained=%s", drained)
            return drained

    # ------------------------------------------------------------------ TCP

    def _accept_loop(self) -> None:
        tcp = self._tcp
        if tcp is None:
            return
        while not self._stopping.is_set():
            try:
                conn, addr = tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            peer = _peer(addr)
            if not self.settings.peer_allowed(str(addr[0])):
                self._ratelimit.warning(
                    f"deny:{addr[0]}", "connection refused peer=%s: not in --allow", peer
                )
                conn.close()
                continue
            with self._lock:
                self._readers = {t for t in self._readers if t.is_alive()}
                full = len(self._readers) >= self.settings.max_connections
            if full:
                self._ratelimit.warning(
                    "maxconn",
                    "connection refused peer=%s: max_connections=%d reached",
                    peer,
                    self.settings.max_connections,
                )
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(
                target=self._serve_connection, args=(conn, peer), name=f"conn:{peer}", daemon=True
            )
            with self._lock:
                self._readers.add(t)
            t.start()

    def _serve_connection(self, conn: socket.socket, peer: str) -> None:
        s = self.settings
        conn.settimeout(_TICK)
        decoder = TextStreamDecoder(s.max_text_bytes)
        call: Call | None = None
        opened = time.monotonic()
        last_frame = opened
        frame_started: float | None = None
        reason = ""
        log.debug("connection opened peer=%s", peer)
        try:
            while True:
                now = time.monotonic()
                if self._stopping.is_set():
                    reason = "daemon shutting down"
                    break
                if call is None and now - opened > s.hello_timeout:
                    reason = f"no HELLO within {s.hello_timeout:g}s"
                    break
                if frame_started is not None and now - frame_started > s.frame_timeout:
                    reason = f"frame incomplete after {s.frame_timeout:g}s (peer too slow)"
                    break
                if call is not None and frame_started is None and now - last_frame > s.idle_timeout:
                    reason = f"idle for {s.idle_timeout:g}s"
                    break
                if call is not None and not call.route.deliverable:
                    reason = "no destination left for the call's audio"
                    break
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    if call is not None and call.segmenter.pending_chars:
                        quiet = time.monotonic() - last_frame
                        if quiet > s.flush_timeout:
                            self._flush_quiet(call, whole_words_only=quiet < 2 * s.flush_timeout)
                    continue
                except OSError as exc:
                    reason = f"read failed: {exc.strerror or exc}"
                    break
                if not data:
                    reason = "closed mid-frame" if decoder.mid_frame else "closed without BYE"
                    break
                got_frame = False
                try:
                    for frame in decoder.frames(data):
                        got_frame = True
                        last_frame = time.monotonic()
                        if isinstance(frame, Hello):
                            call = self._open_call(frame.call_id, peer, conn)
                            if call is None:
                                reason = "call refused"
                                break
                        elif call is not None and self._handle(call, frame):
                            reason = "BYE"
                            break
                except ProtocolError as exc:
                    reason = f"protocol error: {exc}"
                    log.warning(
                        "bad input peer=%s call=%s: %s; closing after owed audio",
                        peer,
                        call.call_id if call else "-",
                        exc,
                    )
                    break
                if reason:
                    break
                if not decoder.mid_frame:
                    frame_started = None
                elif got_frame or frame_started is None:
                    frame_started = time.monotonic()
        except Exception:
            log.exception("reader crashed peer=%s call=%s", peer, call.call_id if call else "-")
            reason = reason or "internal error"
        finally:
            if call is None:
                # A protocol error was logged where it happened; a refusal too.
                if reason and reason != "call refused" and not reason.startswith("protocol"):
                    level = logging.INFO if reason.startswith("closed") else logging.WARNING
                    log.log(level, "connection closed peer=%s before a call: %s", peer, reason)
                _close(conn)
            else:
                self._close_input(call, reason)
                self._linger(conn, call)

    def _linger(self, conn: socket.socket, call: Call) -> None:
        """Keep reading (and discarding) until the peer closes or the call's output is done.

        Closing a socket with unread input makes the kernel reset the connection, which
        can destroy audio the peer has not read yet.
        """
        done_at: float | None = None
        while True:
            if call.route.text.join(0) and done_at is None:
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > _LINGER:
                break
            if self._stopped.is_set():
                break
            try:
                if not conn.recv(65536):
                    if call.route.text.join(0) or not call.route.text.alive:
                        break
                    time.sleep(_TICK)
            except TimeoutError:
                continue
            except OSError:
                break
        _close(conn)

    def _open_call(self, call_id: str, peer: str, conn: socket.socket) -> Call | None:
        s = self.settings
        with self._lock:
            other = self._calls.get(call_id)
            if other is not None:
                log.warning(
                    "call refused peer=%s call=%s: call_id already in use by peer=%s",
                    peer,
                    call_id,
                    other.peer,
                )
                return None
            route = CallRoute(
                call_id,
                peer,
                conn.dup(),
                sink_host=s.sink_host,
                sink_port_base=s.sink_port_base,
                write_timeout=s.write_timeout,
                sink_attempts=s.sink_connect_attempts,
                sink_backoff=s.sink_connect_backoff,
                on_progress=self.scheduler.notify,
                on_dead=self._route_dead,
            )
            bound = s.queue_frames
            work = CallWork(call_id, has_room=lambda: route.has_room(bound))
            call = Call(
                call_id=call_id,
                peer=peer,
                route=route,
                work=work,
                voice=self.voice,
                lang=s.lang,
                speed=s.speed,
                segmenter=Segmenter(s.segmenter),
            )
            self._calls[call_id] = call
            self._by_work[id(work)] = call
            self.scheduler.add(work)
        registered = call_id in self.registry
        log.info("call started call=%s peer=%s registered=%s", call_id, peer, registered)
        if registered:
            route.attach_sink()
        return call

    def _handle(self, call: Call, frame: ClientFrame) -> bool:
        """Apply one frame to ``call``; return True on BYE."""
        if isinstance(frame, Text):
            self._accept_text(call, frame.text)
        elif isinstance(frame, Control):
            self._apply_control(call, frame)
        elif isinstance(frame, Bye):
            return True
        elif isinstance(frame, Hello):  # pragma: no cover - the decoder rejects a 2nd HELLO
            raise ProtocolError("second HELLO")
        elif isinstance(frame, Keepalive):
            pass
        return False

    def _accept_text(self, call: Call, text: str) -> None:
        s = self.settings
        with call.lock:
            backlog = call.segmenter.pending_chars + self.scheduler.pending_chars(call.work)
            if backlog + len(text) > s.max_pending_chars:
                log.warning(
                    "text refused call=%s peer=%s: %d chars pending, limit max_pending_chars=%d; "
                    "dropped a TEXT frame of %d chars",
                    call.call_id,
                    call.peer,
                    backlog,
                    s.max_pending_chars,
                    len(text),
                )
                return
            if call.drained and call.segmenter.pending_chars == 0:
                call.segmenter.start_utterance()
            call.segmenter.append(text)
            self._refill(call)

    def _refill(self, call: Call) -> None:
        """Keep one segment queued for ``call``, cut only now that it is needed.

        Cutting late lets the segment size follow the load at this moment: when several
        calls share the workers, each gets a smaller share of the compute while its
        listener plays, so its segments must grow more slowly to avoid a stall.
        Caller holds ``call.lock``.
        """
        if self.scheduler.queued(call.work):
            return
        first = call.segmenter.at_utterance_start
        load = self._useful_load(self.scheduler.load(call.work))
        segment = call.segmenter.take(
            final=call.input_closed, load=load, budget=self._budget(call, load)
        )
        if segment is not None:
            self._submit(call, [segment], first=first)

    def _flush_quiet(self, call: Call, *, whole_words_only: bool) -> None:
        """The LLM went quiet mid-sentence: speak what it sent rather than wait for more."""
        with call.lock:
            if not call.work.idle:
                return  # text is still being taken segment by segment; nothing is stuck
            first = call.segmenter.at_utterance_start
            segments = call.segmenter.flush(keep_partial_word=whole_words_only)
            if segments:
                log.debug("quiet flush call=%s segments=%d", call.call_id, len(segments))
            self._submit(call, segments, first=first)

    def _useful_load(self, load: int) -> float:
        """The load that segment sizes should answer to.

        Beyond workers / RTF calls the cores cannot keep every player fed whatever the
        segment size, and cutting finer would only add choppiness and overhead.
        """
        rtf = self._rtf
        if rtf is None or rtf <= 0:
            return float(load)
        return max(1.0, min(float(load), self.settings.workers / rtf))

    def _budget(self, call: Call, load: float) -> int | None:
        """Characters the call's next segment may have so it is ready before the audio
        already sent has played out, given this call's share of the workers; None while
        nothing is playing yet or no synthesis speed has been measured."""
        rate = self._chars_per_second
        if call.playback_start is None or rate is None:
            return None
        queued_audio = self.scheduler.deadline(call.work) - time.monotonic()
        share = min(1.0, self.settings.workers / load)
        return max(0, int(queued_audio * rate * share * _BUDGET_SAFETY))

    def _submit(self, call: Call, texts: list[str], *, first: bool) -> None:
        if not texts:
            return
        gen = self.scheduler.generation(call.work)
        segs = [
            Segment(t, call.voice, call.lang, call.speed, gen, first and i == 0)
            for i, t in enumerate(texts)
        ]
        if call.drained:
            call.drained = False
            call.utterance_started = time.monotonic()
            call.playback_start = None
            self.scheduler.set_deadline(call.work, call.utterance_started)
        self.scheduler.submit(call.work, segs)

    def _apply_control(self, call: Call, ctl: Control) -> None:
        with call.lock:
            if ctl.cancel:
                t0 = time.monotonic()
                call.segmenter.reset()
                dropped, _ = self.scheduler.cancel(call.work)
                frames = call.route.purge()
                log.info(
                    "cancel call=%s peer=%s dropped_segments=%d dropped_frames=%d took_ms=%.1f",
                    call.call_id,
                    call.peer,
                    dropped,
                    frames,
                    (time.monotonic() - t0) * 1e3,
                )
            if ctl.voice is not None:
                try:
                    self.engine.voices.get(ctl.voice)
                    call.voice = ctl.voice
                    log.info("voice set call=%s voice=%s", call.call_id, ctl.voice)
                except VoiceError as exc:
                    log.warning(
                        "voice refused call=%s peer=%s: %s; keeping %s",
                        call.call_id,
                        call.peer,
                        exc,
                        call.voice,
                    )
            if ctl.lang is not None:
                try:
                    self.engine.pipeline(ctl.lang)
                    call.lang = ctl.lang.strip().lower()
                    log.info("lang set call=%s lang=%s", call.call_id, call.lang)
                except VoiceError as exc:
                    log.warning(
                        "lang refused call=%s peer=%s: %s; keeping %s",
                        call.call_id,
                        call.peer,
                        exc,
                        call.lang,
                    )
            if ctl.speed is not None:
                call.speed = ctl.speed

    def _close_input(self, call: Call, reason: str) -> None:
        with call.lock:
            call.end_reason = reason
            call.input_closed = True
            self._refill(call)
            finished = self.scheduler.close_input(call.work)
        level = logging.INFO if reason == "BYE" else logging.WARNING
        if reason in ("closed without BYE", "daemon shutting down"):
            level = logging.INFO
        log.log(
            level, "call input closed call=%s peer=%s reason=%s", call.call_id, call.peer, reason
        )
        if finished:
            self._end_call(call, reason)

    def _route_dead(self, route: CallRoute) -> None:
        with self._lock:
            call = self._calls.get(route.call_id)
        if call is None or call.route is not route:
            return
        with call.lock:
            dropped, _ = self.scheduler.cancel(call.work)
            call.segmenter.reset()
        if dropped:
            log.warning(
                "call has no destination left call=%s: dropped %d pending segment(s)",
                call.call_id,
                dropped,
            )

    def _end_call(self, call: Call, reason: str) -> None:
        with self._lock:
            if self._calls.get(call.call_id) is call:
                del self._calls[call.call_id]
            self._by_work.pop(id(call.work), None)
            self._ending = [c for c in self._ending if not c.route.join(0)]
            self._ending.append(call)
        self.scheduler.remove(call.work)
        call.route.end()
        log.info(
            "call ended call=%s peer=%s chunks=%d reason=%s",
            call.call_id,
            call.peer,
            call.route.chunks_sent,
            reason or call.end_reason,
        )

    # ------------------------------------------------------------------ workers

    def _worker_loop(self) -> None:
        self.engine.bind_thread()
        while True:
            job = self.scheduler.next_job(timeout=_TICK)
            if job is None:
                if self.scheduler.stopped:
                    return
                continue
            work, segment = job
            with self._lock:
                call = self._by_work.get(id(work))
            if call is None:
                self.scheduler.done(work, segment)
                continue
            self._synthesize(call, segment)

    def _synthesize(self, call: Call, seg: Segment) -> None:
        audio = None
        stale = seg.generation != self.scheduler.generation(call.work)
        if not stale and call.route.deliverable:
            try:
                result = self.engine.synthesize(
                    seg.text, voice=seg.voice, lang=seg.lang, speed=seg.speed
                )
            except (SynthesisError, VoiceError) as exc:
                log.error(
                    "synthesis failed call=%s text=%r: %s; going on with the next segment",
                    call.call_id,
                    seg.text[:200],
                    exc,
                )
            except Exception:
                log.exception("synthesis crashed call=%s text=%r", call.call_id, seg.text[:200])
            else:
                if result.audio is None:
                    log.info(
                        "nothing to speak call=%s text=%r (no phonemes)",
                        call.call_id,
                        seg.text[:80],
                    )
                else:
                    audio = result.audio
                with call.lock:
                    if seg.generation == self.scheduler.generation(call.work) and audio is not None:
                        chunk = call.route.send_audio(audio)
                        if chunk is not None:
                            self._measure_speed(len(seg.text), result)
                            call.segments += 1
                            call.synth_seconds += result.seconds
                            call.audio_seconds += result.audio_seconds
                            if call.playback_start is None:
                                call.playback_start = time.monotonic()
                            self.scheduler.set_deadline(
                                call.work, call.playback_start + call.audio_seconds
                            )
                            log.debug(
                                "segment call=%s chunk=%d chars=%d synth_s=%.3f audio_s=%.3f",
                                call.call_id,
                                chunk,
                                len(seg.text),
                                result.seconds,
                                result.audio_seconds,
                            )
        with call.lock:
            self._refill(call)  # before done(), so a call with text left is not finished
        drained, finished = self.scheduler.done(call.work, seg)
        if drained:
            with call.lock:
                if call.segments:
                    rtf = call.synth_seconds / call.audio_seconds if call.audio_seconds else 0.0
                    log.info(
                        "utterance call=%s segments=%d synth_s=%.3f audio_s=%.3f rtf=%.3f "
                        "wall_s=%.3f",
                        call.call_id,
                        call.segments,
                        call.synth_seconds,
                        call.audio_seconds,
                        rtf,
                        time.monotonic() - call.utterance_started,
                    )
                call.segments = 0
                call.synth_seconds = call.audio_seconds = 0.0
                call.drained = True
        if finished:
            self._end_call(call, call.end_reason)

    def _measure_speed(self, chars: int, result: Synthesis) -> None:
        if result.seconds <= 0 or result.audio_seconds <= 0:
            return
        # Moving averages: one slow segment (a cold cache, a busy core) must not swing them.
        speed, rtf = chars / result.seconds, result.seconds / result.audio_seconds
        old_speed, old_rtf = self._chars_per_second, self._rtf
        self._chars_per_second = speed if old_speed is None else 0.8 * old_speed + 0.2 * speed
        self._rtf = rtf if old_rtf is None else 0.8 * old_rtf + 0.2 * rtf

    # ------------------------------------------------------------------ UDP

    def _udp_loop(self) -> None:
        udp = self._udp
        if udp is None:
            return
        while not self._stopping.is_set():
            try:
                data, addr = udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            peer = _peer(addr)
            if not self.settings.peer_allowed(str(addr[0])):
                self._ratelimit.warning(
                    f"udpdeny:{addr[0]}", "datagram dropped peer=%s: not in --allow", peer
                )
                continue
            try:
                msg = parse_datagram(data)
            except ProtocolError as exc:
                self._ratelimit.warning(
                    f"udpbad:{addr[0]}", "datagram dropped peer=%s: %s", peer, exc
                )
                continue
            with self._lock:
                call = self._calls.get(msg.call_id)
            if isinstance(msg, Register):
                new, evicted = self.registry.register(msg.call_id)
                if evicted is not None:
                    self._ratelimit.warning(
                        "evict",
                        "registration table full (max_registrations=%d): forgot call=%s",
                        self.settings.max_registrations,
                        evicted,
                    )
                if new:
                    log.info(
                        "register call=%s peer=%s active=%s", msg.call_id, peer, call is not None
                    )
                if call is not None:
                    call.route.attach_sink()
            else:
                existed = self.registry.unregister(msg.call_id)
                log.info("unregister call=%s peer=%s was_registered=%s", msg.call_id, peer, existed)
                if call is not None:
                    call.route.detach_sink("registration BYE")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _peer(addr: tuple[object, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()


# ------------------------------------------------------------------------------ run


def choose_voice(engine: Engine, requested: str | None) -> str:
    """The daemon's default voice; the built-in default may be substituted, never a user's."""
    spec = requested or DEFAULT_VOICE
    try:
        engine.voices.get(spec)
        return spec
    except VoiceError as exc:
        if requested is not None:
            raise StartupError(f"voice {spec!r} cannot be used: {exc}") from exc
    names = engine.voices.names
    # jm_kumo speaks the clearest English of the embedded voices (2.3% vs 7.5% WER).
    preferred = [n for n in ("af_heart", "jm_kumo", "jf_alpha") if n in names]
    substitute = (preferred or names)[0]
    log.warning(
        "default voice %s is not in %s; using %s instead (set KOKORO_VOICE to choose)",
        DEFAULT_VOICE,
        engine.source.description,
        substitute,
    )
    return substitute


def default_torch_threads(device: str, workers: int) -> int | None:
    """On the CPU, split the cores among the workers so their OpenMP teams do not fight."""
    if device != "cpu":
        return None
    return max(1, len(os.sched_getaffinity(0)) // workers)


def _load_off_main_thread(settings: Settings, device: str) -> tuple[Engine, str]:
    """Load, pick the voice and warm up in a thread that then exits.

    libgomp gives every thread that runs a parallel region its own team.  A team left
    behind by the main thread makes the workers' teams outnumber the cores, and libgomp
    then stops spinning between regions: measured 1.4x slower synthesis on 2 cores.
    """
    threads = settings.torch_threads or default_torch_threads(device, settings.workers)
    box: dict[str, tuple[Engine, str] | BaseException] = {}

    def load() -> None:
        try:
            engine = load_engine(
                model_dir=settings.model_dir,
                cache_dir=settings.cache_dir,
                device=device,
                lang=settings.lang,
                torch_threads=threads,
            )
            voice = choose_voice(engine, settings.voice)
            if settings.warmup:
                warm = engine.warm_up(voice, settings.lang)
                # What an operator sizes a host by: beyond this many calls speaking at once,
                # no segmentation keeps every player fed and stalls are certain.
                log.info(
                    "warm-up took %.2fs; synthesis at RTF %.3f per worker, so %d worker(s) "
                    "keep about %.1f calls speaking at once in real time",
                    warm.seconds,
                    warm.rtf,
                    settings.workers,
                    settings.workers / warm.rtf if warm.rtf > 0 else math.inf,
                )
            box["ok"] = (engine, voice)
        except BaseException as exc:
            box["error"] = exc

    loader = threading.Thread(target=load, name="loader")
    loader.start()
    loader.join()
    result = box.get("ok")
    if isinstance(result, tuple):
        log.info("torch intra-op threads per worker: %s", threads or "torch default")
        return result
    error = box.get("error")
    raise error if isinstance(error, BaseException) else StartupError("engine loader vanished")


class _Signals:
    """Signal handlers only set flags; the main loop acts on them."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.count = 0

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        self.stop.set()


def run(settings: Settings) -> int:
    """Load the engine, serve until SIGTERM/SIGINT, drain, and return the exit code."""
    try:
        cuda, mps = probe_devices()
        device = select_device(settings.device, cuda_available=cuda, mps_available=mps)
        log.info("device %s (requested %s; cuda=%s mps=%s)", device, settings.device, cuda, mps)
        engine, voice = _load_off_main_thread(settings, device)
        server = Server(settings, engine, voice=voice)
        server.start()
    except KokoroServiceError as exc:  # StartupError, ConfigError, VoiceError ...
        log.error("start-up failed: %s", exc)
        return EXIT_STARTUP

    signals = _Signals()
    previous = {sig: signal.signal(sig, signals.handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not signals.stop.wait(0.5):
            if server.thread_error is not None:
                break
        log.info("stopping: draining for up to %.0fs", settings.drain_timeout)
        stopper = threading.Thread(target=server.stop, name="stopper", daemon=True)
        stopper.start()
        while stopper.is_alive():
            stopper.join(0.2)
            if signals.count >= 2:
                log.error("second signal: exiting now without draining")
                return EXIT_FORCED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_ERROR if server.thread_error is not None else EXIT_OK
