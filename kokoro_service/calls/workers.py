"""Synthesis workers: threads that turn scheduled segments into audio.

Each worker takes the next batch of segments from the scheduler (one segment where
``--max-batch`` is 1), synthesizes them with the shared engine and hands each call its
audio (:meth:`Calls.deliver`), then lets each call cut its next segment
(:meth:`Calls.segment_done`).  A failure inside one segment is logged and that call goes
on with its next one; the other calls in the batch are not touched.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

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
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.calls = calls
        self.max_batch = max_batch
        self.batch_chars = batch_chars
        self.counts = counts if counts is not None else BatchCounts()
        self.trace = trace

    def prepare(self) -> None:
        self.engine.bind_thread()

    def run(self) -> None:
        while True:
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
                for (call, seg), result in zip(wanted, results, strict=True):
                    self._deliver(call, seg, result)
                    if self.trace is not None:
                        self.trace.write(
                            {
                                "call": call.call_id,
                                "first": seg.first,
                                "chars": len(seg.text),
                                "size": len(requests),
                                "audio_s": _audio_seconds(result),
                                "cut": seg.cut_at,
                                "claimed": claimed,
                                "start": start,
                                "end": end,
                                "delivered": time.monotonic(),
                            }
                        )
            for call, seg in wanted:
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
