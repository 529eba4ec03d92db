"""One G2P thread that serves first segments before the rest, and tags queued ones together.

G2P started when a segment is cut (:meth:`.engine.Engine.phonemes_ahead`) is ready by the
time the segment's batch forms, unless the thread is still busy with other calls' later
segments: in a burst of new calls a FIFO thread left first segments to be phonemized
inside the synthesis worker, one after another, while the device waited (the simulated
H200 at 128 calls: first segments' passes took 0.38 s at the median, mostly G2P).  Here a
first segment goes ahead of every segment that is not one, and otherwise arrival order
holds.  A job not yet started can be cancelled, and then never runs.

Given a ``prepare`` hook, jobs waiting together at one priority are taken as one batch,
up to :data:`MAX_BATCH`.  The first runs at once; the others are handed to ``prepare``
before they run: the engine tags their texts in one spaCy pass (:mod:`.g2p_batch`).  A
first segment that arrives while later segments' batch is prepared or runs goes next,
before the rest of that batch.  Without ``prepare`` (G2P processes, one thread each)
every thread takes one job at a time, as before.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger("kokoro_service.synthesis.g2p_pool")

T = TypeVar("T")

# Jobs taken as one batch by default (--g2p-batch).  spaCy's per-segment cost falls from
# about 2 ms alone to 0.5 ms at 16 (g2p_batch's docstrings), while a batch's second job
# waits for the rest to be tagged: 16 keeps that wait near 12 ms.
MAX_BATCH = 16


class _Job:
    __slots__ = ("future", "key", "prepared", "run")

    def __init__(self, run: Callable[[], None], key: object, future: Future[Any]) -> None:
        self.run, self.key, self.future = run, key, future
        self.prepared = False  # its key was prepared: not again if it is put back


class PriorityG2P:
    """Worker threads taking urgent jobs first; started on first use.

    One thread by default (misaki is not thread-safe); one per G2P process when the jobs
    only hand work to processes (:mod:`.g2p_procs`) and wait for it.  ``prepare`` gets
    the keys of a batch's jobs not yet cancelled, before they run; a batch is at most
    ``batch`` jobs.
    """

    def __init__(
        self,
        name: str = "g2p",
        threads: int = 1,
        prepare: Callable[[Sequence[object]], None] | None = None,
        batch: int = MAX_BATCH,
    ) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, _Job]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._wanted = threads
        self._prepare = prepare
        self._batch = batch if prepare is not None else 1

    def submit(self, fn: Callable[[], T], *, urgent: bool = False, key: object = None) -> Future[T]:
        """Run ``fn`` in the pool; ``key`` is what ``prepare`` gets for it."""
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # taken back by its batch, which ran it itself
            try:
                result = fn()
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)

        with self._cond:
            heapq.heappush(
                self._heap, (0 if urgent else 1, next(self._seq), _Job(run, key, future))
            )
            while len(self._threads) < self._wanted:
                name = f"{self._name}-{len(self._threads)}"
                thread = threading.Thread(target=self._run, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
            self._cond.notify()
        return future

    def _take(self) -> list[tuple[int, int, _Job]]:
        """The most urgent job and those waiting at its priority, up to a batch."""
        with self._cond:
            while not self._heap:
                self._cond.wait()
            batch = [heapq.heappop(self._heap)]
            while self._heap and self._heap[0][0] == batch[0][0] and len(batch) < self._batch:
                batch.append(heapq.heappop(self._heap))
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if self._put_back(batch):
                continue
            # The head runs first, as it would alone: a batch's tagging would delay it by
            # the whole batch's (the lever: 30 ms against 9 for the first of a burst).
            batch[0][2].run()
            rest = batch[1:]
            if self._put_back(rest):
                continue
            fresh = [
                job
                for _, _, job in rest
                if job.key is not None and not job.prepared and not job.future.cancelled()
            ]
            if self._prepare is not None and len(fresh) > 1:
                for job in fresh:
                    job.prepared = True
                try:
                    self._prepare([job.key for job in fresh])
                except Exception:  # each job still runs, as it would alone
                    log.exception("preparing a G2P batch of %d failed", len(fresh))
            for i, (_, _, job) in enumerate(rest):
                if self._put_back(rest[i:]):
                    break
                job.run()

    def _put_back(self, rest: list[tuple[int, int, _Job]]) -> bool:
        """Put back the ``rest`` of a batch of later segments if a first segment waits:
        it goes first.  The entries keep their order; a job already prepared is not
        prepared again."""
        if not rest or rest[0][0] == 0:
            return False
        with self._cond:
            if not self._heap or self._heap[0][0] != 0:
                return False
            for entry in rest:
                heapq.heappush(self._heap, entry)
            return True
