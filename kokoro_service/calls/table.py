"""The call lifecycle: the call table, and what each event does to a call.

Events come from a connection (HELLO, TEXT, CONTROL, quiet, input closed), from the UDP
registrar (REGISTER, BYE), from a route (no destination left) and from the workers (a
segment synthesized).  Each is one method here; they share the call table and the lock
order below, which is why they stay in one module.

Lock order, for the whole daemon, outermost first:

    Calls._lock or a Call.lock (never both) -> Scheduler -> CallRoute -> FrameWriter

The scheduler takes a route's and its writer's lock while it picks a job (``has_room``),
so a route never calls into the scheduler or the calls while it holds its own lock: its
callbacks (``on_dead``, ``on_progress``) run after it lets go.  ``Pacing``, ``Registry``,
``VoiceTable`` and ``RateLimitedLog`` locks are leaves.  A call is ended exactly once:
only the thread to which the scheduler reports the call finished ends it.

Over 400 lines: a call's lifecycle (admission, text, control, cancel, END, end reasons)
changes under one lock.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

from kokoro_service.audio.formats import SEED_FORMAT, AudioFormat, CallEncoder
from kokoro_service.calls.pacing import Pacing
from kokoro_service.calls.routing import CallRoute, Registry, route_log
from kokoro_service.calls.scheduler import CallWork, Scheduler, Segment
from kokoro_service.calls.writers import Conn
from kokoro_service.config import Settings
from kokoro_service.errors import VoiceError
from kokoro_service.logs import RateLimitedLog
from kokoro_service.ops.metrics import Metrics
from kokoro_service.synthesis.engine import Engine
from kokoro_service.text.segmenter import Segmenter
from kokoro_service.wire.codec import SAMPLE_RATE, Control, Word, words_body

log = logging.getLogger("kokoro_service.calls.table")

# Reasons a call's input closes that are the normal course of things, logged at INFO.
_ORDINARY_CLOSES = ("BYE", "closed without BYE", "daemon shutting down")


class Refusal(Enum):
    """Why a HELLO opened no call."""

    BUSY = "busy"
    """``--max-calls`` are active (PROTOCOL.md 5.3): answered with END, then closed."""
    DUPLICATE = "duplicate_call_id"
    """The call_id is in use by another connection: closed."""
    RESOURCES = "resources"
    """The process is out of threads or descriptors: closed, logged, counted."""


@dataclass(eq=False)
class Call:
    """A live call: its settings, segmenter, scheduler entry, audio route and counters.

    ``format`` and ``encoder`` are the audio format it asked for (PROTOCOL.md 5.1), fixed
    once its first TEXT arrives; ``words`` whether it gets WORDS frames (5.2).
    """

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
    text_at: float = field(default_factory=time.monotonic)
    """When the reply now being spoken got its first TEXT: time to first audio counts
    from here."""
    playback_start: float | None = None
    heard_until: float | None = None
    """When the listener will have played every frame handed over so far (stalls)."""
    drained: bool = True
    input_closed: bool = False
    end_reason: str = ""
    format: AudioFormat = SEED_FORMAT
    encoder: CallEncoder | None = None
    words: bool = False
    text_seen: bool = False


class Calls:
    """Owns the call table and applies every call event.

    Responsibilities: open a call (refusing a call_id in use, and any call beyond
    ``max_calls``) and give it a route; accept its text within ``max_pending_chars`` and
    cut segments only when a worker needs one; apply CONTROL (voice, lang, speed, cancel,
    format, rate, words); deliver synthesized audio in order, in the call's format and with
    its words when asked, following each listener for the first-audio and stall metrics;
    end the call once, with END, when its input is closed and its work is done.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        voice: str,
        scheduler: Scheduler,
        registry: Registry,
        pacing: Pacing,
        g2p_ahead: bool = False,
        metrics: Metrics | None = None,
        max_calls: int | None = None,
        sink_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.max_calls = max_calls
        """Calls served at once (PROTOCOL.md 5.3); None: no limit."""
        self.sink_tls = sink_tls
        self.g2p_ahead = g2p_ahead  # batched serving: G2P off the workers' path
        self.engine = engine
        self.voice = voice
        self.scheduler = scheduler
        self.registry = registry
        self.pacing = pacing
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}
        self._reserved: set[str] = set()
        """Places held for in-process adapters' calls whose HELLO is on its way."""
        self._by_work: dict[int, Call] = {}
        self._ending: list[Call] = []
        # A peer may repeat a refused TEXT or CONTROL frame without end: one line per call
        # and kind every few seconds, with a count of the rest.
        self._refusals = RateLimitedLog(log)
        # One line per peer every few seconds however fast refused callers retry.
        self._busy = RateLimitedLog(log)
        # Peer-triggered routing lines (REGISTER/BYE churn, sinks that fail) share one budget.
        self._routing = route_log()
        self.opened = 0
        self.ended = 0

    # ------------------------------------------------------------------ the table

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    @property
    def full(self) -> bool:
        """Whether ``max_calls`` calls are open: a HELLO now would be refused as busy."""
        with self._lock:
            return self._full()

    def _full(self) -> bool:
        open_or_held = len(self._calls) + len(self._reserved)
        return self.max_calls is not None and open_or_held >= self.max_calls

    def reserve(self, call_id: str, peer: str) -> bool:
        """Hold a place for ``call_id`` before its HELLO is sent (the Wyoming and HTTP
        adapters), so that they can answer "busy" in their own protocol rather than get an
        END that reads as silence.  False, logged and counted as busy, when full."""
        with self._lock:
            if not self._full():
                self._reserved.add(call_id)
                return True
            active = len(self._calls)
        self._refuse_busy(call_id, peer, active)
        return False

    def release(self, call_id: str) -> None:
        """Give back a place :meth:`reserve` held whose HELLO will never come."""
        with self._lock:
            self._reserved.discard(call_id)

    def get(self, call_id: str) -> Call | None:
        with self._lock:
            return self._calls.get(call_id)

    def for_work(self, work: CallWork) -> Call | None:
        with self._lock:
            return self._by_work.get(id(work))

    def live(self) -> list[Call]:
        with self._lock:
            return list(self._calls.values())

    # ------------------------------------------------------------------ connection events

    def open(self, call_id: str, peer: str, conn: Conn) -> Call | Refusal:
        """HELLO: a new call whose audio goes back on ``conn`` until a sink registers."""
        s = self.settings
        with self._lock:
            held = call_id in self._reserved  # a place reserve() kept for it
            self._reserved.discard(call_id)
            other = self._calls.get(call_id)
            if other is not None:
                log.warning(
                    "call refused peer=%s call=%s: call_id already in use by peer=%s",
                    peer,
                    call_id,
                    other.peer,
                )
                self.metrics.refused(Refusal.DUPLICATE.value)
                return Refusal.DUPLICATE
            if not held and self._full():
                self._refuse_busy(call_id, peer, len(self._calls))
                return Refusal.BUSY
            try:
                route = self._route(call_id, peer, conn)
            except (OSError, RuntimeError) as exc:  # out of descriptors or threads
                self._refusals.warning(
                    "resources",
                    "call refused call=%s peer=%s: %s",
                    call_id,
                    peer,
                    exc.strerror if isinstance(exc, OSError) and exc.strerror else exc,
                )
                self.metrics.refused(Refusal.RESOURCES.value)
                return Refusal.RESOURCES
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
            self.opened += 1
            self.scheduler.add(work)
        self.metrics.calls_started.inc()
        log.info(
            "call started call=%s peer=%s registered=%s", call_id, peer, call_id in self.registry
        )
        route.follow_registration()
        return call

    def _route(self, call_id: str, peer: str, conn: Conn) -> CallRoute:
        """The call's route, writing to a duplicate of ``conn``; nothing is left open when
        a descriptor or a thread cannot be had."""
        s = self.settings
        text_sock = conn.dup()
        try:
            return CallRoute(
                call_id,
                peer,
                text_sock,
                sink_host=s.sink_host,
                sink_port_base=s.sink_port_base,
                write_timeout=s.write_timeout,
                sink_attempts=s.sink_connect_attempts,
                sink_backoff=s.sink_connect_backoff,
                sink_tls=self.sink_tls,
                on_progress=self.scheduler.notify,
                on_dead=self.route_dead,
                registered=self.registry.__contains__,
                on_sink_failure=self.metrics.sink_failures.inc,
                noise=self._routing,
            )
        except BaseException:
            text_sock.close()
            raise

    def _refuse_busy(self, call_id: str, peer: str, active: int) -> None:
        """Log and count a call refused because ``max_calls`` are open (PROTOCOL.md 5.3)."""
        self._busy.warning(
            f"busy:{peer.rsplit(':', 1)[0]}",
            "busy: call refused call=%s peer=%s: %d calls active, max_calls=%s",
            call_id,
            peer,
            active,
            self.max_calls,
        )
        self.metrics.refused(Refusal.BUSY.value)

    def text(self, call: Call, text: str) -> None:
        """TEXT: buffer it, refusing what would exceed ``max_pending_chars``."""
        s = self.settings
        with call.lock:
            call.text_seen = True  # the audio format is fixed from here on
            backlog = call.segmenter.pending_chars + self.scheduler.pending_chars(call.work)
            if backlog + len(text) > s.max_pending_chars:
                self._refusals.warning(
                    f"text:{call.call_id}",
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
                call.text_at = time.monotonic()
            call.segmenter.append(text)
            self._refill(call)

    def control(self, call: Call, ctl: Control) -> None:
        """CONTROL: cancel first, then voice, lang and speed for the TEXT that follows.

        Text received before the frame but not yet cut keeps the settings it came under:
        it is cut now.  A voice is only validated here; its pack (a blend included) is
        built when a segment is synthesized, in the voice table's bounded cache.
        """
        if ctl.cancel:
            with call.lock:
                t0 = time.monotonic()
                call.segmenter.reset()
                dropped, _ = self.scheduler.cancel(call.work)
                frames = call.route.purge()
                if call.encoder is not None:  # its held tail belongs to the dropped audio
                    call.encoder.reset()
            log.info(
                "cancel call=%s peer=%s dropped_segments=%d dropped_frames=%d took_ms=%.1f",
                call.call_id,
                call.peer,
                dropped,
                frames,
                (time.monotonic() - t0) * 1e3,
            )
        voice = lang = None
        if ctl.voice is not None:
            try:
                self.engine.voices.check(ctl.voice)
                voice = ctl.voice
            except VoiceError as exc:
                self._refused(call, "voice", exc, call.voice)
        if ctl.lang is not None:
            # Outside the call's lock: loading a language takes seconds, and the workers
            # need that lock to deliver this call's audio meanwhile.
            try:
                self.engine.pipeline(ctl.lang)
                lang = ctl.lang.strip().lower()
            except VoiceError as exc:
                self._refused(call, "lang", exc, call.lang)
        with call.lock:
            speed = call.speed if ctl.speed is None else ctl.speed
            new = (voice or call.voice, lang or call.lang, speed)
            if new != (call.voice, call.lang, call.speed) and call.segmenter.pending_chars:
                first = call.segmenter.at_utterance_start
                self._submit(call, call.segmenter.flush(), first=first)
            call.voice, call.lang, call.speed = new
        if voice or lang or ctl.speed is not None:
            log.debug("settings call=%s voice=%s lang=%s speed=%s", call.call_id, *new)
        if ctl.sets_format:
            self._set_format(call, ctl)
        if ctl.words is not None:
            with call.lock:
                call.words = ctl.words

    def _set_format(self, call: Call, ctl: Control) -> None:
        """CONTROL format/rate: only before the call's first TEXT (PROTOCOL.md 5.1)."""
        with call.lock:
            fmt = AudioFormat(ctl.format or call.format.encoding, ctl.rate or call.format.rate)
            if call.text_seen:
                if fmt != call.format:
                    self._refusals.warning(
                        f"format:{call.call_id}",
                        "format refused call=%s peer=%s: %s asked after the call's first TEXT; "
                        "keeping %s",
                        call.call_id,
                        call.peer,
                        fmt,
                        call.format,
                    )
                return
            call.format = fmt
            call.encoder = None if fmt.is_seed else CallEncoder(fmt)
        log.info("format call=%s peer=%s format=%s", call.call_id, call.peer, fmt)

    def _refused(self, call: Call, what: str, exc: Exception, kept: str) -> None:
        self._refusals.warning(
            f"{what}:{call.call_id}",
            "%s refused call=%s peer=%s: %s; keeping %s",
            what,
            call.call_id,
            call.peer,
            exc,
            kept,
        )

    def has_unsent_text(self, call: Call) -> bool:
        """Whether text waits in the call's segmenter, not yet cut into a segment."""
        with call.lock:
            return call.segmenter.pending_chars > 0

    def flush_quiet(self, call: Call, *, whole_words_only: bool) -> None:
        """The LLM went quiet mid-sentence: speak what it sent rather than wait for more."""
        with call.lock:
            if not self.scheduler.idle(call.work):
                return  # text is still being taken segment by segment; nothing is stuck
            first = call.segmenter.at_utterance_start
            segments = call.segmenter.flush(keep_partial_word=whole_words_only)
            if segments:
                log.debug("quiet flush call=%s segments=%d", call.call_id, len(segments))
            self._submit(call, segments, first=first)

    def close_input(self, call: Call, reason: str) -> None:
        """BYE, a close, an error or shutdown: no more text; speak what is owed, then END."""
        with call.lock:
            call.end_reason = reason
            call.input_closed = True
            self._refill(call)
            finished = self.scheduler.close_input(call.work)
        level = logging.INFO if reason in _ORDINARY_CLOSES else logging.WARNING
        log.log(
            level, "call input closed call=%s peer=%s reason=%s", call.call_id, call.peer, reason
        )
        if finished:
            self._end(call, reason)

    # ------------------------------------------------------------------ route events

    def route_dead(self, route: CallRoute) -> None:
        """No destination can take the call's audio any more: drop its pending work."""
        call = self.get(route.call_id)
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

    # ------------------------------------------------------------------ worker events

    def current(self, call: Call, seg: Segment) -> bool:
        """Whether ``seg`` is still wanted: not cancelled and deliverable."""
        return seg.generation == self.scheduler.generation(call.work) and call.route.deliverable

    def deliver(
        self,
        call: Call,
        seg: Segment,
        audio: npt.NDArray[np.float32],
        synth_seconds: float,
        words: tuple[Word, ...] = (),
    ) -> int | None:
        """Hand a segment's audio to the call's route, in the call's format and after its
        WORDS frame if asked, unless it was cancelled meanwhile; return its chunk id."""
        audio_seconds = len(audio) / SAMPLE_RATE
        with call.lock:
            if seg.generation != self.scheduler.generation(call.work):
                return None
            payload: npt.NDArray[np.generic] = audio
            lag = 0.0
            if call.encoder is not None:
                encoded = call.encoder.encode(audio)
                payload, lag = encoded.payload, encoded.lag
            if not payload.size:  # an empty AUDIO frame would read as END
                return None
            body = None
            if call.words:
                body = words_body([Word(w.word, w.start + lag, w.end + lag) for w in words])
            chunk = call.route.send_audio(payload, sample_rate=call.format.rate, words=body)
            if chunk is None:
                return None
            self.pacing.measure(len(seg.text), synth_seconds, audio_seconds)
            self._heard(call, audio_seconds)
            self.metrics.segment(synth_seconds, audio_seconds)
            call.segments += 1
            call.synth_seconds += synth_seconds
            call.audio_seconds += audio_seconds
            if call.playback_start is None:
                call.playback_start = time.monotonic()
            self.scheduler.set_deadline(call.work, call.playback_start + call.audio_seconds)
            return chunk

    def _heard(self, call: Call, audio_seconds: float) -> None:
        """Follow the call's listener: first audio, and any silence before this frame.

        The listener plays each frame from when it is handed over or when the previous
        one ends, whichever is later; a frame handed over after the previous ones have
        played out is a stall.  Caller holds ``call.lock``.
        """
        now = time.monotonic()
        if call.heard_until is None:
            self.metrics.ttfa.observe(now - call.text_at)
        elif now > call.heard_until:
            self.metrics.stalls.observe(now - call.heard_until)
        call.heard_until = max(now, call.heard_until or now) + audio_seconds

    def segment_done(self, call: Call, seg: Segment) -> None:
        """A worker is done with ``seg``: cut the next segment, or finish the call."""
        with call.lock:
            self._refill(call)  # before done(), so a call with text left is not finished
        drained, finished = self.scheduler.done(call.work, seg)
        if drained:
            with call.lock:
                self._flush_format(call)
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
            self._end(call, call.end_reason)

    # ------------------------------------------------------------------ shutdown

    def abandon(self, call: Call, reason: str) -> None:
        """Shutdown past the drain: drop what the call still owes and send END now."""
        with call.lock:
            dropped = self.scheduler.finish(call.work)
            frames = call.route.purge()
        if dropped is None:
            return  # a worker finished it at this very moment, and ends it
        log.warning(
            "drain timeout call=%s: dropped %d segment(s) and %d frame(s); sending END",
            call.call_id,
            dropped,
            frames,
        )
        self._end(call, reason)

    def join_routes(self, deadline: float) -> None:
        """Wait for ended calls' writers to send END, then abort the laggards."""
        with self._lock:
            ending, self._ending = self._ending, []
        for call in ending:
            if not call.route.join(max(0.5, deadline - time.monotonic())):
                call.route.abort()
                call.route.join(1.0)

    # ------------------------------------------------------------------ internals

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
        load = self.pacing.useful_load(self.scheduler.load(call.work))
        budget = None
        if call.playback_start is not None:
            queued_audio = self.scheduler.deadline(call.work) - time.monotonic()
            budget = self.pacing.budget(queued_audio, load)
        segment = call.segmenter.take(final=call.input_closed, load=load, budget=budget)
        if segment is not None:
            self._submit(call, [segment], first=first)

    def _flush_format(self, call: Call) -> None:
        """The call's speech paused: send what its resampler holds back (a few ms), so the
        end of a reply is not kept until the next one.  Caller holds ``call.lock``."""
        if call.encoder is None:
            return
        tail = call.encoder.flush()
        if tail is not None and tail.size:
            body = words_body([]) if call.words else None
            call.route.send_audio(tail, sample_rate=call.format.rate, words=body)

    def _submit(self, call: Call, texts: list[str], *, first: bool) -> None:
        if not texts:
            return
        gen = self.scheduler.generation(call.work)
        segs = [
            Segment(
                t,
                call.voice,
                call.lang,
                call.speed,
                gen,
                first and i == 0,
                (
                    self.engine.phonemes_ahead(t, call.lang, first=first and i == 0)
                    if self.g2p_ahead
                    else None
                ),
            )
            for i, t in enumerate(texts)
        ]
        if call.drained:
            call.drained = False
            call.utterance_started = time.monotonic()
            call.playback_start = call.heard_until = None
            self.scheduler.set_deadline(call.work, call.utterance_started)
        self.scheduler.submit(call.work, segs)

    def _end(self, call: Call, reason: str) -> None:
        """Send END and forget the call; only the thread that finished it gets here."""
        with self._lock:
            if self._calls.get(call.call_id) is call:
                del self._calls[call.call_id]
            self._by_work.pop(id(call.work), None)
            self._ending = [c for c in self._ending if not c.route.join(0)]
            self._ending.append(call)
            self.ended += 1
        self.scheduler.remove(call.work)
        self.registry.touch(call.call_id)  # its registration's time to live starts now
        self.metrics.call_ended(reason or call.end_reason)
        with call.lock:  # a worker's flush at the drain may not have run yet
            self._flush_format(call)
        call.route.end()
        log.info(
            "call ended call=%s peer=%s chunks=%d reason=%s",
            call.call_id,
            call.peer,
            call.route.chunks_sent,
            reason or call.end_reason,
        )
