"""Call routing: UDP registrations, per-destination writers, and each call's audio path.

A call's audio goes back on its text connection unless an audio processor has registered
the call (``REGISTER:<N>``), in which case it goes to ``sink_host:(sink_port_base + N)``.
Every destination has its own writer (:mod:`.writers`), so a peer that reads slowly or
never stalls only itself.  Chunk ids are numbered per call across destinations.

Over 400 lines: every change of destination (REGISTER, BYE, a sink's failure, END) must
keep each frame's place, so the route's states stay in one module.
"""

from __future__ import annotations

import collections
import itertools
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from kokoro_service.calls.writers import AudioItem, Conn, FrameWriter, RawItem, SinkWriter
from kokoro_service.logs import RateLimitedLog
from kokoro_service.wire.codec import END_FRAME, SAMPLE_RATE

log = logging.getLogger("kokoro_service.calls.routing")

# Canonical decimals only: "01" and "1" are two calls, and must not share a processor port.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,9}")
# Sink writers alive per call at once: the current one and one still closing.  REGISTER/BYE
# churn beyond it waits for one to close, so a peer cannot pile up threads and sockets.
MAX_SINKS_PER_CALL = 2


def route_log() -> RateLimitedLog:
    """The budget for routing's peer-triggered lines, shared by every call's route."""
    return RateLimitedLog(log)


def sink_port(call_id: str, base: int) -> int | None:
    """The sink port of a call_id in canonical decimal (no leading zero), or None when
    the id cannot be routed."""
    if not _DECIMAL.fullmatch(call_id):
        return None
    port = base + int(call_id)
    return port if port <= 65535 else None


# ------------------------------------------------------------------------ registrations


class Registry:
    """Which call_ids an audio processor has registered; bounded, oldest evicted first.

    REGISTER may arrive before the call's HELLO, so entries for unknown calls are kept,
    up to ``capacity``, which bounds what a REGISTER flood can cost.  In a fleet every
    instance hears every REGISTER (PROTOCOL.md 5.4): an entry whose call this instance
    does not hold is forgotten ``ttl`` seconds after the REGISTER, or after its call
    ended here; ``ttl`` 0 keeps entries until BYE or eviction.
    """

    def __init__(self, capacity: int, ttl: float = 0.0) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._ids: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def register(self, call_id: str) -> tuple[bool, str | None]:
        """Record ``call_id``; return (newly added, call_id evicted to make room)."""
        with self._lock:
            new = call_id not in self._ids
            self._ids[call_id] = time.monotonic()
            self._ids.move_to_end(call_id)
            evicted = None
            if len(self._ids) > self._capacity:
                evicted, _ = self._ids.popitem(last=False)
            return new, evicted

    def unregister(self, call_id: str) -> bool:
        with self._lock:
            return self._ids.pop(call_id, None) is not None

    def touch(self, call_id: str) -> None:
        """Restart ``call_id``'s time to live, if it is registered (its call just ended)."""
        with self._lock:
            if call_id in self._ids:
                self._ids[call_id] = time.monotonic()
                self._ids.move_to_end(call_id)

    def expire(self, active: Callable[[str], bool]) -> list[str]:
        """Forget the entries older than the time to live whose call is not ``active``
        here; return their call_ids.  An active call's entry is kept and its clock
        restarted, so it outlives its call by the time to live."""
        if self._ttl <= 0:
            return []
        now = time.monotonic()
        with self._lock:
            old = list(
                itertools.takewhile(lambda cid: now - self._ids[cid] >= self._ttl, self._ids)
            )
        held = {call_id for call_id in old if active(call_id)}  # not under our lock: a leaf
        expired: list[str] = []
        with self._lock:
            for call_id in old:
                at = self._ids.get(call_id)
                if at is None or now - at < self._ttl:
                    continue  # gone, or registered again meanwhile
                if call_id in held:
                    self._ids[call_id] = now
                    self._ids.move_to_end(call_id)
                else:
                    del self._ids[call_id]
                    expired.append(call_id)
        return expired

    def __contains__(self, call_id: object) -> bool:
        with self._lock:
            return call_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


# ------------------------------------------------------------------------------ calls


class CallRoute:
    """One call's audio path: chunk numbering, destination choice, END, and fallback.

    Responsibilities: number AUDIO frames 1..n across destinations; send each to the
    registered sink when there is one and back on the text connection otherwise; follow
    REGISTER and BYE as they come (:meth:`follow_registration`); on a sink that cannot be
    reached, move its unsent frames to the text connection (logged, never dropped); send
    END to every destination when the call ends, on the text connection only once no
    sink can hand frames back to it.

    Frames queued on a sink that is unregistered move to the text connection at once,
    ahead of any newer frame, so chunk ids stay in order.  At most
    :data:`MAX_SINKS_PER_CALL` sink writers run per call.
    """

    def __init__(
        self,
        call_id: str,
        peer: str,
        text_sock: Conn,
        *,
        sink_host: str,
        sink_port_base: int,
        write_timeout: float,
        sink_attempts: int,
        sink_backoff: float,
        on_progress: Callable[[], None],
        on_dead: Callable[[CallRoute], None],
        registered: Callable[[str], bool] = lambda _call_id: False,
        sink_tls: ssl.SSLContext | None = None,
        on_sink_failure: Callable[[], None] = lambda: None,
        noise: RateLimitedLog | None = None,
    ) -> None:
        self.call_id = call_id
        self.peer = peer
        self._sink_host = sink_host
        self._sink_port_base = sink_port_base
        self._write_timeout = write_timeout
        self._sink_attempts = sink_attempts
        self._sink_backoff = sink_backoff
        self._on_progress = on_progress
        self._on_dead = on_dead
        self._registered = registered
        self._sink_tls = sink_tls
        self._on_sink_failure = on_sink_failure
        self._noise = noise if noise is not None else route_log()
        self._lock = threading.RLock()
        self._chunk_id = 0
        self._ended = False
        self._text_ended = False
        # Registered, but MAX_SINKS_PER_CALL were still closing: dial at the next frame.
        self._sink_wanted = False
        self.text = FrameWriter(
            f"text:{call_id}",
            sock=text_sock,
            write_timeout=write_timeout,
            on_failure=self._writer_failed,
            on_progress=on_progress,
        )
        self.text.start()
        self.sink: SinkWriter | None = None
        self._sinks: list[SinkWriter] = []  # every sink writer whose thread may still run

    @property
    def chunks_sent(self) -> int:
        return self._chunk_id

    def _current(self) -> FrameWriter | None:
        """The destination for the next frame.  Caller holds ``_lock``."""
        if self.sink is not None and self.sink.failed:
            # Its thread failed and has not told us yet: hand its frames back first, so
            # that no newer frame overtakes them.
            self._sink_failed(self.sink)
        if self.sink is not None and self.sink.alive:
            return self.sink
        return self.text if self.text.alive else None

    def has_room(self, bound: int) -> bool:
        """Whether the current destination can take another frame without exceeding ``bound``."""
        with self._lock:
            dest = self._current()
            return dest is None or dest.queued_audio < bound

    def queued_frames(self) -> int:
        """AUDIO frames queued on the call's writers, not yet sent."""
        with self._lock:
            sink = self.sink.queued_audio if self.sink is not None else 0
            return self.text.queued_audio + sink

    @property
    def deliverable(self) -> bool:
        """Whether any destination can still receive this call's audio."""
        with self._lock:
            return self._current() is not None

    @property
    def sink_writers(self) -> int:
        """Sink writer threads of this call still running."""
        with self._lock:
            self._sinks = [w for w in self._sinks if not w.join(0)]
            return len(self._sinks)

    def follow_registration(self) -> None:
        """Route to the sink while the call is registered, else to the text connection.

        The registry is read under the route's lock, after the registrar has changed it,
        so a REGISTER or BYE racing the call's HELLO cannot leave the call on the wrong
        destination.
        """
        with self._lock:
            if self._registered(self.call_id):
                self._attach()
            else:
                self._detach("registration BYE")

    def _attach(self) -> None:
        if self._ended or self.sink is not None:
            return
        port = sink_port(self.call_id, self._sink_port_base)
        if port is None:
            self._noise.warning(
                f"unroutable:{self.call_id}",
                "registered call is not routable call=%r: call_id must be a decimal N "
                "without leading zeros, with sink_port_base+N <= 65535; audio stays on the "
                "text connection",
                self.call_id,
            )
            return
        if self.sink_writers >= MAX_SINKS_PER_CALL:
            self._sink_wanted = True
            self._noise.warning(
                f"sinkcap:{self.call_id}",
                "sink not dialled yet call=%s: %d sink connections of this call are still "
                "closing; audio stays on the text connection until one has",
                self.call_id,
                MAX_SINKS_PER_CALL,
            )
            return
        writer = SinkWriter(
            f"sink:{self.call_id}",
            call_id=self.call_id,
            host=self._sink_host,
            port=port,
            attempts=self._sink_attempts,
            backoff=self._sink_backoff,
            write_timeout=self._write_timeout,
            on_failure=self._writer_failed,
            on_progress=self._on_progress,
            on_settled=self._writer_settled,
            tls=self._sink_tls,
            noise=self._noise,
        )
        try:
            writer.start()
        except RuntimeError as exc:  # the process is out of threads
            self._noise.warning(
                "sinkthread",
                "cannot start a sink writer call=%s: %s; audio stays on the text connection",
                self.call_id,
                exc,
            )
            return
        self._sink_wanted = False
        self.sink = writer
        self._sinks.append(writer)
        self._noise.info(
            f"route:{self.call_id}",
            "call routed to sink call=%s sink=%s:%d",
            self.call_id,
            self._sink_host,
            port,
        )

    def _detach(self, reason: str) -> None:
        self._sink_wanted = False
        sink, self.sink = self.sink, None
        if sink is None or self._ended:
            self.sink = sink  # after END the sink finishes what it has
            return
        # Frames not yet on the wire belong to the text connection now, ahead of newer.
        moved = sink.take_audio()
        if moved and not self.text.offer_all(list(moved)):
            self._lost(moved, "the text connection is gone too")
        if sink.offer(RawItem(END_FRAME, "END")):
            sink.withdraw()  # a sink still dialling gives up: nothing is left to send it
        self._noise.info(
            f"unroute:{self.call_id}",
            "call unrouted from sink call=%s reason=%s moved_frames=%d",
            self.call_id,
            reason,
            len(moved),
        )

    def send_audio(
        self,
        samples: npt.NDArray[np.generic],
        *,
        sample_rate: int = SAMPLE_RATE,
        words: bytes | None = None,
    ) -> int | None:
        """Queue one AUDIO frame, after its WORDS body if given, on the current
        destination; return its chunk id."""
        with self._lock:
            if self._sink_wanted:
                self.follow_registration()
            dest = self._current()
            if dest is None or self._ended:
                return None
            self._chunk_id += 1
            if not dest.offer(AudioItem(self._chunk_id, samples, sample_rate, words)):
                self._chunk_id -= 1
                return None
            return self._chunk_id

    def purge(self) -> int:
        """Drop every queued AUDIO frame; return how many.

        The dropped frames never reach the peer, so when they are the newest ids (the
        usual case) those ids are given again and the ids a peer sees still rise by 1
        (docs/protocol.md).  Were a newer frame already on its way elsewhere (a sink
        switch mid-queue), the count goes on: a gap, but never an id twice.
        """
        with self._lock:
            dropped = self.text.purge_audio()
            if self.sink is not None:
                dropped += self.sink.purge_audio()
            newest = range(self._chunk_id - len(dropped) + 1, self._chunk_id + 1)
            if dropped and sorted(dropped) == list(newest):
                self._chunk_id -= len(dropped)
            return len(dropped)

    def end(self) -> None:
        """Send END everywhere the call has a live destination, then close them.

        The text connection's END waits until the current sink has sent its END or
        failed: a sink that fails hands its frames to the text connection, and they must
        go out before END there.
        """
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._sink_wanted = False
            self._current()  # a sink that already failed hands its frames back now
            sink = self.sink
            if sink is not None and sink.offer(RawItem(END_FRAME, "END")):
                sink.finish()
            elif sink is not None:
                sink.abort()
            self._end_text()

    def _end_text(self) -> None:
        """END on the text connection once no sink can hand it frames.  Under ``_lock``."""
        if not self._ended or self._text_ended:
            return
        if self.sink is not None and not self.sink.settled:
            return  # _writer_settled or _sink_failed comes back here
        self._text_ended = True
        if self.text.offer(RawItem(END_FRAME, "END")):
            self.text.finish()
        else:
            self.text.abort()

    def abort(self) -> None:
        with self._lock:
            self._ended = self._text_ended = True
            for writer in (self.text, *self._sinks):
                writer.abort()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            writers: list[FrameWriter] = [self.text, *self._sinks]
        ok = True
        for writer in writers:
            ok = writer.join(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def _writer_settled(self, writer: FrameWriter) -> None:
        with self._lock:
            if writer is self.sink:
                self._end_text()

    def _writer_failed(self, writer: FrameWriter, reason: str) -> None:
        with self._lock:
            if isinstance(writer, SinkWriter):
                self._sink_failed(writer)
            else:
                audio = [i for i in writer.take_items() if isinstance(i, AudioItem)]
                level = logging.WARNING if reason != "aborted" else logging.DEBUG
                log.log(
                    level,
                    "text connection lost call=%s peer=%s: %s (%d frame(s) unsent)",
                    self.call_id,
                    self.peer,
                    reason,
                    len(audio),
                )
            dead = self._current() is None
        if dead:
            self._on_dead(self)
        self._on_progress()

    def _sink_failed(self, writer: SinkWriter) -> None:
        """A sink could not take its frames: they go to the text connection, in order.
        Idempotent; under ``_lock``, from the writer's thread or whichever saw it first."""
        if writer.failure_handled:
            return
        writer.failure_handled = True
        self._on_sink_failure()
        audio = [i for i in writer.take_items() if isinstance(i, AudioItem)]
        where = f"{writer.host}:{writer.port}"
        if writer is not self.sink:
            # Unregistered before it failed: its queue moved to the text connection then;
            # what is left was on the wire to a processor that had said BYE.
            self._noise.warning(
                f"sinkfail:{self.call_id}",
                "sink failed after BYE call=%s sink=%s: %s (%d frame(s) in flight not resent)",
                self.call_id,
                where,
                writer.failure_reason,
                len(audio),
            )
            return
        self.sink = None
        if audio and self.text.offer_all(list(audio)):
            self._noise.warning(
                f"sinkfail:{self.call_id}",
                "sink failed call=%s sink=%s: %s; %d frame(s) delivered on the text "
                "connection instead, and the rest of the call follows them",
                self.call_id,
                where,
                writer.failure_reason,
                len(audio),
            )
        elif audio:
            self._lost(
                audio,
                f"sink {where} failed ({writer.failure_reason}) and the text "
                "connection is gone too",
            )
        else:
            self._noise.warning(
                f"sinkfail:{self.call_id}",
                "sink failed call=%s sink=%s: %s",
                self.call_id,
                where,
                writer.failure_reason,
            )
        self._end_text()

    def _lost(self, audio: list[AudioItem], why: str) -> None:
        self._noise.warning(
            f"lost:{self.call_id}",
            "%d frame(s) undeliverable call=%s: %s",
            len(audio),
            self.call_id,
            why,
        )
