"""Latency-first batching: batch times learned from measurements, batches cut to a bound.

The clock is taught a pinned cost model, so what is asserted is the policy's decision for
that model, never how fast this host is.
"""

from __future__ import annotations

import time

import pytest

from kokoro_service.calls.batchtime import BatchClock
from kokoro_service.calls.scheduler import BOUND_FACTOR, CallWork, Scheduler, Segment

FIXED, PER_CHAR = 0.09, 1e-4  # a launch-bound device: 90 ms a pass, then 0.1 ms a char
CHARS = 100  # every continuation segment; padded work is size * CHARS


def cost(size: int, longest: int) -> float:
    return FIXED + PER_CHAR * size * longest


def taught(clock: BatchClock) -> BatchClock:
    for size in (1, 1, 1, 2, 4, 8, 1):
        clock.record(size, CHARS, cost(size, CHARS))
    return clock


def seg(text: str, *, first: bool = False) -> Segment:
    return Segment(text, "af_sky", "a", 1.0, 0, first)


def loaded(
    policy: str, calls: int, *, deadline_in: float = 30.0
) -> tuple[Scheduler, list[CallWork]]:
    """A scheduler with ``calls`` calls, each with a continuation segment due later."""
    s = Scheduler(policy, taught(BatchClock()))
    works = []
    for i in range(calls):
        w = CallWork(f"c{i}", has_room=lambda: True)
        s.add(w)
        s.set_deadline(w, time.monotonic() + deadline_in)
        s.submit(w, [seg("x" * CHARS)])
        works.append(w)
    return s, works


def test_the_clock_fits_the_cost_model_it_measured() -> None:
    clock = taught(BatchClock())
    fitted = clock.cost
    assert fitted is not None
    assert fitted.fixed == pytest.approx(FIXED, rel=1e-6)
    assert fitted.per_char == pytest.approx(PER_CHAR, rel=1e-6)
    assert clock.lone_seconds() == pytest.approx(cost(1, CHARS))


def test_the_clock_predicts_nothing_until_the_work_varies() -> None:
    clock = BatchClock()
    for _ in range(10):
        clock.record(1, CHARS, 0.1)
    assert clock.cost is None  # one shape cannot tell the fixed part from the rest


def test_a_full_queue_is_cut_to_the_bound_so_a_first_segment_waits_little() -> None:
    s, _ = loaded("latency", 64)
    bound = s.bound()
    assert bound is not None
    assert bound == pytest.approx(BOUND_FACTOR * cost(1, CHARS))
    running = s.next_batch(64, None, timeout=0)
    # The batch in flight is what a first segment arriving now waits behind.
    assert 1 < len(running) < 64
    assert cost(len(running), CHARS) <= bound + 1e-9
    assert cost(len(running) + 1, CHARS) > bound + 1e-9
    newcomer = CallWork("new", has_room=lambda: True)
    s.add(newcomer)
    s.submit(newcomer, [seg("Hello there.", first=True)])
    following = s.next_batch(64, None, timeout=0)
    assert following[0][0] is newcomer  # next pass, ahead of every continuation


def test_the_fill_policy_fills_the_batch() -> None:
    s, _ = loaded("fill", 64)
    assert s.bound() is None
    assert len(s.next_batch(64, None, timeout=0)) == 64


def test_first_segments_join_past_the_bound() -> None:
    s = Scheduler("latency", taught(BatchClock()))
    for i in range(20):
        w = CallWork(f"f{i}", has_room=lambda: True)
        s.add(w)
        s.submit(w, [seg("y" * CHARS, first=True)])
    assert len(s.next_batch(64, None, timeout=0)) == 20  # no caller is left in silence


def test_a_call_about_to_run_dry_joins_past_the_bound() -> None:
    # Players that run dry before this batch and the next could finish must go now,
    # whatever it costs the batch's time: a stall is worse than a slower first audio.
    s, _ = loaded("latency", 40, deadline_in=0.1)
    assert len(s.next_batch(64, None, timeout=0)) == 40


def test_no_bound_before_any_batch_was_measured() -> None:
    s = Scheduler("latency", BatchClock())
    assert s.bound() is None  # a cold daemon serves as the fill policy would


def test_sustained_load_without_a_lone_pass_still_gets_a_bound() -> None:
    """A daemon started straight into load may never run a batch of one: the fit of its
    batches predicts the lone pass, and the bound follows from that."""
    clock = BatchClock()
    for size in (8, 16, 32, 64, 12):
        clock.record(size, CHARS, cost(size, CHARS))
    assert clock.lone_seconds() == pytest.approx(cost(1, CHARS))
    s = Scheduler("latency", clock)
    assert s.bound() == pytest.approx(BOUND_FACTOR * cost(1, CHARS))


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="batch policy"):
        Scheduler("greedy")


def test_a_batch_of_first_segments_takes_only_what_cannot_wait() -> None:
    s, works = loaded("latency", 8)  # continuation due in 30 s: it can wait
    late = works[0]
    s.set_deadline(late, time.monotonic() + 0.05)  # this one cannot
    newcomer = CallWork("new", has_room=lambda: True)
    s.add(newcomer)
    s.submit(newcomer, [seg("Hello there.", first=True)])
    batch = s.next_batch(64, None, timeout=0)
    assert [w.key for w, _ in batch] == ["new", late.key]
