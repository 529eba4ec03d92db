"""Fair, deadline-aware scheduling of synthesis work across calls.

Workers ask for the next job, or the next batch of jobs from different calls.  The first
segment of a reply always goes first, so a long reply on one call delays another call's
first audio by at most the segment (or batch) in flight; after that, the call whose
listener will run out of audio soonest goes next (earliest deadline first), which is what
keeps every player fed when calls compete for the cores.

Latency first (the default policy): a batch is cut where its predicted time, from the
batches already measured (:class:`.batchtime.BatchClock`), would pass ``bound_factor``
times a lone segment's measured time.  A first segment that arrives while such a batch
runs waits at most that long, however many calls are speaking, unless urgent work made the
batch longer.  A batch that holds first segments takes no other work but what cannot wait,
so their own pass stays short.  A segment still joins past the bound when it is a first
segment, or when its call's player would run dry within ``URGENT_MARGIN`` of the time this
batch and the next could take: throughput gives way to first audio, never to a stall.
The ``fill`` policy (the earlier one) fills every batch up to ``--max-batch``.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kokoro_service.calls.batchtime import BatchClock, BatchCost
from kokoro_service.config import BATCH_POLICIES

if TYPE_CHECKING:  # the engine imports torch; the scheduler stays light
    from kokoro_service.synthesis.engine import G2PChunk

# A first segment that arrives while a batch runs waits at most this many lone-segment
# times for it, and then takes about one more for its own pass.
BOUND_FACTOR = 2.0
# Audio a player must still hold when its call's next segment joins a batch as urgent:
# beyond the passes themselves, delivery lags under load.  On the simulated H200 at 128
# calls arriving in a second, no margin gave 43 stalls, 0.25 s gave 28, and 0.5 s none,
# at the cost of p95 daemon latency at 64 calls (0.21 s -> 0.27 s).
URGENT_MARGIN = 0.5


@dataclass(frozen=True, slots=True)
class Segment:
    """One unit of synthesis: text plus the call settings in force when it arrived."""

    text: str
    voice: str
    lang: str
    speed: float
    generation: int
    first: bool
    phonemes: Future[list[G2PChunk]] | None = None
    """G2P started when the segment was cut (batched serving), so the batch need not wait."""
    cut_at: float = field(default_factory=time.monotonic)
    """When the segment's last character had arrived and it was cut (monotonic seconds)."""


@dataclass(eq=False, slots=True)
class CallWork:
    """The scheduler's view of one call."""

    key: str
    has_room: Callable[[], bool]
    pending: collections.deque[Segment] = field(default_factory=collections.deque)
    in_flight: Segment | None = None
    generation: int = 0
    input_closed: bool = False
    finished: bool = False
    last_served: int = -1
    pending_chars: int = 0
    deadline: float = 0.0
    """When the call's player runs dry (monotonic seconds): the earliest goes first."""

    @property
    def idle(self) -> bool:
        return not self.pending and self.in_flight is None


class Scheduler:
    """Hands segments to workers, one in flight per call.

    Responsibilities: keep each call's segments in order; serve first segments first and
    then the earliest playback deadline (ties: least recently served); skip a call whose
    destination queue is full, which is how a slow reader throttles only its own call;
    say when a call has nothing left so the server can send END.
    """

    def __init__(
        self,
        policy: str = "latency",
        clock: BatchClock | None = None,
        bound_factor: float = BOUND_FACTOR,
    ) -> None:
        if policy not in BATCH_POLICIES:
            raise ValueError(f"unknown batch policy {policy!r}; one of {BATCH_POLICIES}")
        self._cond = threading.Condition()
        self._calls: list[CallWork] = []
        self._ticket = itertools.count()
        self._stopped = False
        self.policy = policy
        self.clock = clock if clock is not None else BatchClock()
        self.bound_factor = bound_factor

    def add(self, work: CallWork) -> None:
        with self._cond:
            self._calls.append(work)

    def remove(self, work: CallWork) -> None:
        with self._cond:
            if work in self._calls:
                self._calls.remove(work)

    def submit(self, work: CallWork, segments: list[Segment]) -> None:
        if not segments:
            return
        with self._cond:
            if work.finished:
                return
            work.pending.extend(segments)
            work.pending_chars += sum(len(s.text) for s in segments)
            self._cond.notify_all()

    def queued(self, work: CallWork) -> int:
        """Segments of ``work`` waiting for a worker (not counting the one in flight)."""
        with self._cond:
            return len(work.pending)

    def load(self, work: CallWork) -> int:
        """``work`` plus every other call with synthesis queued or in flight."""
        with self._cond:
            return 1 + sum(1 for w in self._calls if w is not work and not w.idle)

    def depths(self) -> tuple[int, int]:
        """Segments waiting for a worker, and segments being synthesized, over all calls."""
        with self._cond:
            waiting = sum(len(w.pending) for w in self._calls)
            return waiting, sum(1 for w in self._calls if w.in_flight is not None)

    def pending_chars(self, work: CallWork) -> int:
        with self._cond:
            return work.pending_chars

    def cancel(self, work: CallWork) -> tuple[int, int]:
        """Drop queued segments; results of the one in flight become stale.

        Returns (segments dropped, new generation).
        """
        with self._cond:
            dropped = len(work.pending)
            _drop(work.pending)
            work.pending_chars = 0
            work.generation += 1
            return dropped, work.generation

    def generation(self, work: CallWork) -> int:
        with self._cond:
            return work.generation

    def idle(self, work: CallWork) -> bool:
        """Whether ``work`` has nothing queued and nothing in flight."""
        with self._cond:
            return work.idle

    def finish(self, work: CallWork) -> int | None:
        """Finish ``work`` now, dropping what it has queued (shutdown past the drain).

        Returns the segments dropped, or None when the call was already finished.  Only
        one caller ever finishes a call: a worker finishing the segment in flight at the
        same moment gets ``finished=False`` from :meth:`done`, so the call ends once.
        """
        with self._cond:
            work.input_closed = True
            if work.finished:
                return None
            work.finished = True
            dropped = len(work.pending)
            _drop(work.pending)
            work.pending_chars = 0
            work.generation += 1
            self._cond.notify_all()
            return dropped

    def close_input(self, work: CallWork) -> bool:
        """No more text will come; return True if the call is finished right now."""
        with self._cond:
            work.input_closed = True
            return self._finish_if_done(work)

    def done(self, work: CallWork, segment: Segment) -> tuple[bool, bool]:
        """A worker finished ``segment``; return (call drained, call finished)."""
        with self._cond:
            if work.in_flight is segment:
                work.in_flight = None
            drained = work.idle
            finished = self._finish_if_done(work)
            self._cond.notify_all()
            return drained, finished

    def _finish_if_done(self, work: CallWork) -> bool:
        if work.input_closed and work.idle and not work.finished:
            work.finished = True
            return True
        return False

    def next_job(self, timeout: float | None = None) -> tuple[CallWork, Segment] | None:
        """Block until a segment is runnable (or ``timeout``/stop); claim and return it."""
        jobs = self.next_batch(1, None, timeout)
        return jobs[0] if jobs else None

    def next_batch(
        self, max_items: int, max_chars: int | None, timeout: float | None = None
    ) -> list[tuple[CallWork, Segment]]:
        """Block until a segment is runnable (or ``timeout``/stop); claim a batch of them.

        The batch holds the most urgent segment, then other calls' segments in the same
        order while the batch stays within ``max_items`` and, counted as its size times
        its longest segment (what a padded forward pass costs), ``max_chars``.  It never
        waits for company: a lone runnable segment goes at once, alone.  Empty on timeout
        or stop.
        """
        with self._cond:
            while not self._stopped:
                jobs = self._pick(max_items, max_chars)
                if jobs:
                    return jobs
                if not self._cond.wait(timeout):
                    return []
            return []

    def deadline(self, work: CallWork) -> float:
        with self._cond:
            return work.deadline

    def set_deadline(self, work: CallWork, deadline: float) -> None:
        with self._cond:
            work.deadline = deadline

    def bound(self) -> float | None:
        """The longest a batch may be predicted to take (latency policy), or None: no
        bound yet (too few batches measured) or the ``fill`` policy."""
        if self.policy != "latency":
            return None
        lone = self.clock.lone_seconds()
        return None if lone is None else self.bound_factor * lone

    def _pick(self, max_items: int, max_chars: int | None) -> list[tuple[CallWork, Segment]]:
        # First segments of a reply go first (a caller is waiting in silence), then the
        # call whose player runs dry soonest, then the one served longest ago.
        bound = self.bound()
        cost = self.clock.cost if bound is not None else None
        # A call whose player runs dry before this batch and the next could both finish,
        # with the margin, must be in this one.
        urgent = 2 * bound + URGENT_MARGIN if bound is not None else None
        urgent_before = time.monotonic() + urgent if urgent is not None else 0.0
        ready = sorted(
            (
                ((not w.pending[0].first, w.deadline, w.last_served), i, w)
                for i, w in enumerate(self._calls)
                if w.in_flight is None and w.pending
            ),
            key=lambda entry: entry[:2],
        )
        jobs: list[tuple[CallWork, Segment]] = []
        longest = 0
        for _, _, work in ready:
            if len(jobs) >= max_items:
                break
            size = max(longest, len(work.pending[0].text))
            # The most urgent segment always goes, however long; a later one joins only
            # if the padded batch stays within budget (a shorter one further down may).
            if jobs and max_chars is not None and size * (len(jobs) + 1) > max_chars:
                continue
            if jobs and not _joins(work, jobs, size, cost, bound, urgent_before):
                continue
            if not work.has_room():
                continue
            segment = work.pending.popleft()
            work.pending_chars -= len(segment.text)
            work.in_flight = segment
            work.last_served = next(self._ticket)
            jobs.append((work, segment))
            longest = size
        return jobs

    def notify(self) -> None:
        """Something outside changed (a writer drained): re-check who can run."""
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        with self._cond:
            return self._stopped


def _joins(
    work: CallWork,
    jobs: list[tuple[CallWork, Segment]],
    size: int,
    cost: BatchCost | None,
    bound: float | None,
    urgent_before: float,
) -> bool:
    """Latency policy: whether ``work``'s next segment may join the batch ``jobs``, which
    would then be ``len(jobs) + 1`` segments padded to ``size`` characters."""
    if cost is None or bound is None:
        return True  # the fill policy, or too few batches measured yet
    if work.pending[0].first or work.deadline <= urgent_before:
        return True  # a caller in silence, or a player about to run dry
    if jobs[0][1].first:
        return False  # keep the pass that first segments wait for short
    return cost.seconds(len(jobs) + 1, size) <= bound


def _drop(pending: collections.deque[Segment]) -> None:
    """Forget queued segments, and their G2P if it has not started: a peer that cancels
    again and again must not queue G2P work nobody will read."""
    for segment in pending:
        if segment.phonemes is not None:
            segment.phonemes.cancel()
    pending.clear()
