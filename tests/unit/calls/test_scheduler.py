"""Scheduler: order within a call, first segments first, deadlines, cancel, finish."""

from __future__ import annotations

from kokoro_service.calls.scheduler import CallWork, Scheduler, Segment


def seg(text: str, *, first: bool = False, gen: int = 0) -> Segment:
    return Segment(text, "af_sky", "a", 1.0, gen, first)


def work(key: str, room: bool = True) -> CallWork:
    return CallWork(key, has_room=lambda: room)


def test_segments_of_a_call_stay_in_order_one_in_flight() -> None:
    s = Scheduler()
    a = work("a")
    s.add(a)
    s.submit(a, [seg("1", first=True), seg("2"), seg("3")])
    job = s.next_job(0)
    assert job is not None and job[1].text == "1"
    assert s.next_job(0) is None  # one in flight per call
    s.done(a, job[1])
    job = s.next_job(0)
    assert job is not None and job[1].text == "2"


def test_first_segment_of_a_new_call_goes_next() -> None:
    s = Scheduler()
    long, new = work("long"), work("new")
    s.add(long)
    s.add(new)
    s.submit(long, [seg("l1", first=True), *[seg(f"l{i}") for i in range(2, 20)]])
    job = s.next_job(0)
    assert job is not None
    s.done(long, job[1])
    s.set_deadline(long, -100.0)  # even a long call that is late...
    s.submit(new, [seg("n1", first=True), seg("n2")])
    job = s.next_job(0)
    assert job is not None and job[1].text == "n1"  # ...waits for a first segment


def test_earliest_deadline_first() -> None:
    s = Scheduler()
    a, b = work("a"), work("b")
    for w, d in ((a, 10.0), (b, 5.0)):
        s.add(w)
        s.set_deadline(w, d)
        s.submit(w, [seg(w.key)])
    job = s.next_job(0)
    assert job is not None and job[0] is b


def test_full_destination_is_skipped() -> None:
    s = Scheduler()
    blocked, free = work("blocked", room=False), work("free")
    for w in (blocked, free):
        s.add(w)
        s.submit(w, [seg(w.key, first=True)])
    job = s.next_job(0)
    assert job is not None and job[0] is free
    s.done(free, job[1])
    assert s.next_job(0) is None


def test_cancel_drops_pending_and_bumps_generation() -> None:
    s = Scheduler()
    a = work("a")
    s.add(a)
    s.submit(a, [seg("1"), seg("2"), seg("3")])
    assert s.pending_chars(a) == 3
    dropped, gen = s.cancel(a)
    assert (dropped, gen) == (3, 1)
    assert s.pending_chars(a) == 0
    assert s.next_job(0) is None


def test_finished_only_when_input_closed_and_idle() -> None:
    s = Scheduler()
    a = work("a")
    s.add(a)
    s.submit(a, [seg("1")])
    assert not s.close_input(a)
    job = s.next_job(0)
    assert job is not None
    drained, finished = s.done(a, job[1])
    assert drained and finished
    assert not s.close_input(a)  # reported once


def test_stop_releases_waiting_workers() -> None:
    s = Scheduler()
    s.stop()
    assert s.next_job(5.0) is None
    assert s.stopped


def test_dropped_segments_give_up_their_g2p() -> None:
    from concurrent.futures import Future

    from kokoro_service.synthesis.engine import G2PChunk

    s = Scheduler()
    a = work("a")
    s.add(a)
    ahead: list[Future[list[G2PChunk]]] = [Future(), Future()]
    s.submit(
        a, [Segment(t, "af_sky", "a", 1.0, 0, False, f) for t, f in zip("xy", ahead, strict=True)]
    )
    s.cancel(a)
    assert all(f.cancelled() for f in ahead), "nobody will read their phonemes"
