"""The G2P thread: first segments ahead of the rest, cancelled jobs never run."""

from __future__ import annotations

import threading

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
