"""The G2P thread: first segments ahead of the rest, cancelled jobs never run."""

from __future__ import annotations

import functools
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from kokoro_service.synthesis.g2p_pool import PriorityG2P


def test_first_segments_go_ahead_and_the_rest_keep_their_order() -> None:
    pool = PriorityG2P()
    gate, ran = threading.Event(), list[str]()
    busy = pool.submit(lambda: gate.wait(10))  # the thread is busy with this one
    a = pool.submit(lambda: ran.append("a"))
    b = pool.submit(lambda: ran.append("b"))
    urgent = pool.submit(lambda: ran.append("first"), urgent=True)
    gate.set()
    busy.result(10)
    for f in (a, b, urgent):
        f.result(10)
    assert ran == ["first", "a", "b"]


def test_a_job_taken_back_never_runs_and_errors_reach_the_caller() -> None:
    pool = PriorityG2P()
    gate, ran = threading.Event(), list[str]()
    busy = pool.submit(lambda: gate.wait(10))
    taken = pool.submit(lambda: ran.append("taken"))
    assert taken.cancel()  # not started: its batch runs G2P itself
    failing = pool.submit(lambda: 1 / 0)
    gate.set()
    busy.result(10)
    with pytest.raises(ZeroDivisionError):
        failing.result(10)
    assert ran == []


def hold(pool: PriorityG2P) -> tuple[threading.Event, Future[bool]]:
    """Keep the pool's thread busy until the returned gate is set."""
    gate, started = threading.Event(), threading.Event()

    def busy() -> bool:
        started.set()
        return gate.wait(10)

    future = pool.submit(busy)
    assert started.wait(10)  # what is submitted next waits, together
    return gate, future


def test_jobs_waiting_together_are_prepared_as_one_batch() -> None:
    prepared: list[list[object]] = []
    pool = PriorityG2P(prepare=lambda keys: prepared.append(list(keys)))
    ran: list[str] = []
    gate, busy = hold(pool)
    jobs = [pool.submit(functools.partial(ran.append, k), key=k) for k in ("a", "b", "c")]
    taken = pool.submit(lambda: ran.append("taken"), key="taken")
    assert taken.cancel()
    unkeyed = pool.submit(lambda: ran.append("unkeyed"))
    gate.set()
    waited: list[Future[Any]] = [busy, *jobs, unkeyed]
    for f in waited:
        f.result(10)
    # The jobs that waited together were prepared in one call, less the first (it ran at
    # once, as it would alone), a cancelled job and one without a key.
    assert prepared == [["b", "c"]]
    assert ran == ["a", "b", "c", "unkeyed"]


def test_a_first_segment_goes_before_the_rest_of_a_running_batch() -> None:
    prepared: list[list[object]] = []
    pool = PriorityG2P(prepare=lambda keys: prepared.append(list(keys)))
    in_batch, ran = threading.Event(), list[str]()
    gate, busy = hold(pool)

    def first_of_batch() -> None:
        in_batch.set()
        ran.append("a")
        # While the batch runs, a new call's first segment arrives.
        urgent.append(pool.submit(lambda: ran.append("first"), urgent=True, key="first"))

    urgent: list[Future[None]] = []
    later = [pool.submit(first_of_batch, key="a")]
    later += [pool.submit(functools.partial(ran.append, k), key=k) for k in ("b", "c", "d")]
    gate.set()
    waited: list[Future[Any]] = [busy, *later]
    for f in waited:
        f.result(10)
    assert in_batch.is_set()
    assert ran == ["a", "first", "b", "c", "d"]
    # The rest of the batch was put back before it was prepared, and then prepared once.
    assert prepared == [["c", "d"]]


def test_a_failing_prepare_costs_no_job() -> None:
    def fail(keys: object) -> None:
        raise RuntimeError("spaCy failed (injected by the test)")

    pool = PriorityG2P(prepare=fail)
    gate, busy = hold(pool)
    jobs = [pool.submit(functools.partial(int.__mul__, k, 2), key=k) for k in (1, 2, 3)]
    gate.set()
    busy.result(10)
    assert [f.result(10) for f in jobs] == [2, 4, 6]


def test_a_first_segment_arriving_while_a_batch_is_prepared_goes_first() -> None:
    ran: list[str] = []
    pool: PriorityG2P

    def prepare(keys: object) -> None:
        ran.append("prepared")
        urgent.append(pool.submit(lambda: ran.append("first"), urgent=True))

    urgent: list[Future[None]] = []
    pool = PriorityG2P(prepare=prepare)
    gate, busy = hold(pool)
    later = [pool.submit(functools.partial(ran.append, k), key=k) for k in ("a", "b", "c")]
    gate.set()
    waited: list[Future[Any]] = [busy, *later, *urgent]
    for f in waited:
        f.result(10)
    # "a" runs at once; "b" and "c" are being prepared when the first segment arrives.
    assert ran == ["a", "prepared", "first", "b", "c"]


def test_without_prepare_each_thread_takes_one_job_at_a_time() -> None:
    """G2P processes: each thread waits on a process, so jobs must spread over them."""
    pool = PriorityG2P(threads=3)
    barrier = threading.Barrier(3, timeout=10)
    # Each job waits for the other two: they finish only if three threads run them at once.
    jobs = [pool.submit(barrier.wait, key=k) for k in range(3)]
    assert sorted(f.result(10) for f in jobs) == [0, 1, 2]
