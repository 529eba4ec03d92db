"""One G2P thread that serves first segments before the rest.

G2P started when a segment is cut (:meth:`.engine.Engine.phonemes_ahead`) is ready by the
time the segment's batch forms, unless the thread is still busy with other calls' later
segments: in a burst of new calls a FIFO thread left first segments to be phonemized
inside the synthesis worker, one after another, while the device waited (the simulated
H200 at 128 calls: first segments' passes took 0.38 s at the median, mostly G2P).  Here a
first segment goes ahead of every segment that is not one, and otherwise arrival order
holds.  A job not yet started can be cancelled, and then never runs.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class PriorityG2P:
    """Worker threads taking urgent jobs first; started on first use.

    One thread by default (misaki is not thread-safe); one per G2P process when the jobs
    only hand work to processes (:mod:`.g2p_procs`) and wait for it.
    """

    def __init__(self, name: str = "g2p", threads: int = 1) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._wanted = threads

    def submit(self, fn: Callable[[], T], *, urgent: bool = False) -> Future[T]:
        future: Future[T] = Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return  # taken back by its batch, which ran it itself
            try:
                result = fn()
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)

        with self._cond:
            heapq.heappush(self._heap, (0 if urgent else 1, next(self._seq), job))
            while len(self._threads) < self._wanted:
                name = f"{self._name}-{len(self._threads)}"
                thread = threading.Thread(target=self._run, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
            self._cond.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                _, _, job = heapq.heappop(self._heap)
            job()
