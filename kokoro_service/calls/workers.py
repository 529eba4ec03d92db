"""Synthesis workers: threads that turn scheduled segments into audio.

Each worker takes the next batch of segments from the scheduler (one segment where
``--max-batch`` is 1), synthesizes them with the shared engine and hands each call its
audio (:meth:`Calls.deliver`), then lets each call cut its next segment
(:meth:`Calls.segment_done`).  A failure inside one segment is logged and that call goes
on with its next one; the other calls in the batch are not touched.

With ``--overlap-delivery`` a batched worker hands its batch's results to a delivery
thread of its own and forms the next batch at once: on the simulated H200 at 256 calls the
device had sat idle for 0.64 s of a 10.6 s round while the worker delivered.  It is off by
default: on the 2-core host it kept the simulated device busier but cost the daemon's GIL
more, and stalls at 128-256 calls went both ways across runs (docs/benchmarks.md).
One batch at most waits for delivery, so a slow delivery holds the worker back rather
than growing a queue.  A call's next segment is claimed only after its delivery (the
scheduler keeps one segment in flight per call), so each call's audio keeps its order.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass

from kokoro_service.calls.scheduler import Scheduler, Segment
from kokoro_service.calls.table import Call, Calls
from kokoro_service.config import TICK
from kokoro_service.ops.trace import SegmentTrace
from kokoro_service.synthesis.engine import Engine, Request, Synthesis

log = logging.getLogger("kokoro_service.calls.workers")


class BatchCounts:
    """How many batches of each size the workers handed to the engine.

    What shows that batching happens, and how full the batches are: the tests read it,
    and a batch-size metric can be read from it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[int] = collections.Counter()

    def add(self, size: int) -> None:
        with self._lock:
            self._counts[size] += 1

    def snapshot(self) -> dict[int, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


@dataclass(slots=True)
class _Done:
    """A synthesized batch, on its way to its calls."""

    wanted: list[tuple[Call, Segment]]
    results: list[Synthesis | Exception]
    claimed: float
    start: float
    end: float


class Worker:
    """One synthesis thread's loop.

    ``prepare()`` runs first in the thread (torch threads, denormal flushing) and then
    ``ready`` is set, so the server knows the worker could start before it says it is up.
    """

    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        calls: Calls,
        *,
        max_batch: int = 1,
        batch_chars: int | None = None,
        counts: BatchCounts | None = None,
        trace: SegmentTrace | None = None,
        overlap_delivery: bool = False,
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.calls = calls
        self.max_batch = max_batch
        self.batch_chars = batch_chars
        self.counts = counts if counts is not None else BatchCounts()
        self.trace = trace
        self.overlap_delivery = overlap_delivery and max_batch > 1
        self._done: queue.Queue[_Done | None] = queue.Queue(maxsize=1)
        self._delivery_error: BaseException | None = None

    def prepare(self) -> None:
        self.engine.bind_thread()

    def run(self) -> None:
        if not self.overlap_delivery:
            self._run()
            return
        name = f"{threading.current_thread().name}-delivery"
        delivery = threading.Thread(target=self._delivery_loop, name=name, daemon=True)
        delivery.start()
        try:
            self._run()
        finally:  # what was synthesized is delivered before the worker ends
            self._done.put(None)
            delivery.join()
        if self._delivery_error is not None:
            raise self._delivery_error

    def _run(self) -> None:
        while True:
            if self._delivery_error is not None:  # the server's guard logs it and stops
                raise self._delivery_error
            jobs = self.scheduler.next_batch(self.max_batch, self.batch_chars, timeout=TICK)
            if not jobs:
                if self.scheduler.stopped:
                    return
                continue
            claimed = time.monotonic()
            wanted: list[tuple[Call, Segment]] = []
            finished: list[tuple[Call, Segment]] = []
            for work, segment in jobs:
                call = self.calls.for_work(work)
                if call is None:
                    self.scheduler.done(work, segment)
                elif self.calls.current(call, segment):
                    wanted.append((call, segment))
                else:  # cancelled, or no destination left, while it waited
                    finished.append((call, segment))
            for _, seg in finished:  # their G2P is no longer wanted
                if seg.phonemes is not None:
                    seg.phonemes.cancel()
            for call, seg in finished:  # free their calls now, not after the batch
                self.calls.segment_done(call, seg)
            if wanted:
                self.counts.add(len(wanted))
                self.calls.metrics.batch_size.observe(len(wanted))
                requests = [
                    Request(s.text, s.voice, s.lang, s.speed, s.phonemes) for _, s in wanted
                ]
                start = time.monotonic()
                results = self._synthesize(requests, wanted)
                end = time.monotonic()
                # What the latency policy cuts batches by: this device's measured times.
                # Only passes that made audio: a batch that failed, or had nothing to
                # speak, says nothing of what the device takes.
                if any(isinstance(r, Synthesis) and r.audio is not None for r in results):
                    longest = max(len(r.text) for r in requests)
                    self.scheduler.clock.record(len(requests), longest, end - start)
                done = _Done(wanted, results, claimed, start, end)
                if self.overlap_delivery:
                    self._done.put(done)  # waits while the batch before is delivered
                else:
                    self._hand_over(done)

    def _delivery_loop(self) -> None:
        while True:
            done = self._done.get()
            if done is None:
                return
            if self._delivery_error is not None:
                continue  # the worker is stopping; nothing more can be handed over
            try:
                self._hand_over(done)
            except BaseException as exc:  # a bug: the worker re-raises it in its thread
                self._delivery_error = exc

    def _hand_over(self, done: _Done) -> None:
        """Each call its audio (or its error logged), then its next segment."""
        for (call, seg), result in zip(done.wanted, done.results, strict=True):
            self._deliver(call, seg, result)
            if self.trace is not None:
                self.trace.write(
                    {
                        "call": call.call_id,
                        "first": seg.first,
                        "chars": len(seg.text),
                        "size": len(done.wanted),
                        "audio_s": _audio_seconds(result),
                        "cut": seg.cut_at,
                        "claimed": done.claimed,
                        "start": done.start,
                        "end": done.end,
                        "delivered": time.monotonic(),
                    }
                )
        for call, seg in done.wanted:
            self.calls.segment_done(call, seg)

    def _synthesize(
        self, requests: list[Request], owners: list[tuple[Call, Segment]]
    ) -> list[Synthesis | Exception]:
        try:
            return self.engine.synthesize_batch(requests)
        except Exception as exc:  # a bug, not bad input: log it, and keep the calls going
            log.exception(
                "synthesis crashed calls=%s", ",".join(call.call_id for call, _ in owners)
            )
            return [exc] * len(requests)

    def _deliver(self, call: Call, seg: Segment, result: Synthesis | Exception) -> None:
        if isinstance(result, Exception):
            log.error(
                "synthesis failed call=%s text=%r: %s; going on with the next segment",
                call.call_id,
                seg.text[:200],
                result,
            )
        elif result.audio is None:
            log.info("nothing to speak call=%s text=%r (no phonemes)", call.call_id, seg.text[:80])
        else:
            chunk = self.calls.deliver(call, seg, result.audio, result.seconds, result.words)
            if chunk is not None:
                log.debug(
                    "segment call=%s chunk=%d chars=%d synth_s=%.3f audio_s=%.3f",
                    call.call_id,
                    chunk,
                    len(seg.text),
                    result.seconds,
                    result.audio_seconds,
                )


def _audio_seconds(result: Synthesis | Exception) -> float:
    return 0.0 if isinstance(result, Exception) else round(result.audio_seconds, 3)
