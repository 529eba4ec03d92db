"""Batches across calls, over real sockets: mixed calls, a lone call, a cancel and a
client vanishing while their segments are inside a batch.

The engine is the real one.  Where a test must act while a batch is in flight, it serves
through :class:`GatedEngine`, which holds each batch at a gate the test opens: the batch
then runs on the real engine, unchanged.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, cast

import pytest

from kokoro_service.calls.scheduler import CallWork, Scheduler, Segment
from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine, Request, Synthesis
from kokoro_service.wire.client import Connection, Reply, speak
from tests.conftest import (
    TEST_TIMEOUT,
    DaemonFactory,
    assert_clean_reply,
    expected_lengths,
    lengths,
    wait_for,
)


class GatedEngine:
    """The real engine; each ``synthesize_batch`` waits at a gate after announcing itself."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.entered: queue.Queue[list[str]] = queue.Queue()
        self._gate = threading.Semaphore(0)
        self._open = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def synthesize_batch(self, requests: list[Request]) -> list[Synthesis | Exception]:
        self.entered.put([r.text for r in requests])
        if not self._open.is_set():
            assert self._gate.acquire(timeout=TEST_TIMEOUT), "the test never opened the gate"
        return self._engine.synthesize_batch(requests)

    def next_batch(self) -> list[str]:
        return self.entered.get(timeout=TEST_TIMEOUT)

    def release(self) -> None:
        self._gate.release()

    def open(self) -> None:
        self._open.set()
        self._gate.release(100)


def queued(server: Server, call_id: str) -> bool:
    call = server.calls.get(call_id)
    return call is not None and server.scheduler.queued(call.work) > 0


def gated_server(
    daemon: DaemonFactory, engine: Engine, **settings: object
) -> tuple[Server, GatedEngine]:
    gated = GatedEngine(engine)
    return daemon(engine=cast(Engine, gated), workers=1, **settings), gated


def test_mixed_calls_share_batches_and_each_gets_its_own_audio(
    daemon: DaemonFactory, engine: Engine
) -> None:
    server, gated = gated_server(daemon, engine, max_batch=4)
    calls = {
        "601": (["Hello there, thanks for calling."], "af_sky", 1.0),
        "602": (["One moment.", "I am looking that up for you now."], "af_bella", 1.3),
        "603": (["Your appointment is on Tuesday at three thirty."], "am_adam", 0.8),
        "604": (["Goodbye."], "bf_emma", 1.0),
    }
    replies: dict[str, Reply] = {}

    def run(call_id: str) -> None:
        texts, voice, speed = calls[call_id]
        replies[call_id] = speak(
            *server.tcp_address, call_id, texts, voice=voice, speed=speed, timeout=TEST_TIMEOUT
        )

    first = threading.Thread(target=run, args=("601",))
    first.start()
    assert len(gated.next_batch()) == 1  # alone: a lone call does not wait for company
    others = [threading.Thread(target=run, args=(c,)) for c in ("602", "603", "604")]
    for t in others:
        t.start()
    # While 601's segment is in flight, the three other first segments queue up...
    assert wait_for(lambda: all(queued(server, c) for c in ("602", "603", "604")))
    gated.open()
    # ...and go together, the shortest budget-permitting, in one forward pass.
    batch = gated.next_batch()
    assert {"One moment.", "Goodbye."} <= set(batch) and len(batch) >= 3
    for t in [first, *others]:
        t.join(TEST_TIMEOUT)
    for call_id, (texts, voice, speed) in calls.items():
        assert_clean_reply(replies[call_id])
        assert lengths(replies[call_id]) == expected_lengths(engine, texts, voice, speed), call_id
    assert max(server.batches.snapshot()) >= 3


def test_a_lone_call_runs_in_batches_of_one(daemon: DaemonFactory, engine: Engine) -> None:
    server = daemon(max_batch=8)
    texts = ["Hello there, thanks for calling.", "How can I help you today?"]
    reply = speak(*server.tcp_address, "611", texts, timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert lengths(reply) == expected_lengths(engine, texts)
    assert set(server.batches.snapshot()) == {1}


def test_cancel_inside_a_batch_drops_only_that_calls_audio(
    daemon: DaemonFactory, engine: Engine
) -> None:
    server, gated = gated_server(daemon, engine, max_batch=4)
    with (
        Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as a,
        Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as b,
        Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as c,
    ):
        a.hello("621")
        a.text("Hello there.")
        assert len(gated.next_batch()) == 1
        b.hello("622")
        b.text("This answer is cancelled. So is this one.")
        c.hello("623")
        c.text("This one is spoken in full.")
        assert wait_for(lambda: queued(server, "622") and queued(server, "623"))
        gated.release()  # 621's segment
        assert len(gated.next_batch()) == 2
        b.control(cancel=True)  # while 622's segment is inside the batch
        assert wait_for(lambda: not queued(server, "622"))
        gated.open()
        b.text("After the barge in.")
        for conn in (a, b, c):
            conn.bye()
        replies = [conn.read_until_end(TEST_TIMEOUT) for conn in (a, b, c)]
    for reply in replies:
        assert_clean_reply(reply)
    assert lengths(replies[0]) == expected_lengths(engine, ["Hello there."])
    assert lengths(replies[1]) == expected_lengths(engine, ["After the barge in."])
    assert lengths(replies[2]) == expected_lengths(engine, ["This one is spoken in full."])


def test_a_client_vanishing_inside_a_batch_harms_no_other_call(
    daemon: DaemonFactory, engine: Engine
) -> None:
    server, gated = gated_server(daemon, engine, max_batch=4)
    texts = ["Stay with me.", "There is more to say after this."]
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as a:
        a.hello("631")
        a.text("Hello there.")
        assert len(gated.next_batch()) == 1
        b = Connection(*server.tcp_address, timeout=TEST_TIMEOUT)
        b.hello("632")
        b.text(" ".join(texts))
        gone = Connection(*server.tcp_address, timeout=TEST_TIMEOUT)
        gone.hello("633")
        gone.text("Nobody will hear this sentence. Nor this one.")
        assert wait_for(lambda: queued(server, "632") and queued(server, "633"))
        gated.release()
        assert len(gated.next_batch()) == 2
        gone.sock.close()  # vanishes, its segment inside the batch
        gated.open()
        a.bye()
        b.bye()
        assert_clean_reply(a.read_until_end(TEST_TIMEOUT))
        reply = b.read_until_end(TEST_TIMEOUT)
        b.close()
    assert_clean_reply(reply)
    assert lengths(reply) == expected_lengths(engine, texts)
    assert wait_for(lambda: server.active_calls == 0), "the vanished call was not ended"
    after = speak(*server.tcp_address, "634", ["Still here?"], timeout=TEST_TIMEOUT)
    assert_clean_reply(after)


# ------------------------------------------------------------------------------ scheduler


def _seg(text: str, first: bool = True) -> Segment:
    return Segment(text, "af_sky", "a", 1.0, 0, first)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "serial"])
def test_the_next_batch_runs_while_the_last_is_delivered(
    daemon: DaemonFactory, engine: Engine, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    """``--overlap-delivery``: a batch's audio is handed to its calls in another thread,
    so another call's batch reaches the engine meanwhile; with it off, not until then."""
    server, gated = gated_server(daemon, engine, max_batch=4, overlap_delivery=overlap)
    gated.open()
    real = server.calls.deliver
    holding, release = threading.Event(), threading.Event()

    def deliver(*args: Any, **kwargs: Any) -> int | None:
        if not holding.is_set():  # the first delivery waits for the test
            holding.set()
            assert release.wait(TEST_TIMEOUT)
        return real(*args, **kwargs)

    monkeypatch.setattr(server.calls, "deliver", deliver)
    texts = {"611": "Thanks for calling.", "612": "One moment."}
    replies: dict[str, Reply] = {}

    def run(call_id: str) -> None:
        replies[call_id] = speak(*server.tcp_address, call_id, [texts[call_id]])

    threads = [threading.Thread(target=run, args=("611",))]
    threads[0].start()
    assert gated.next_batch() == [texts["611"]]
    assert holding.wait(TEST_TIMEOUT)  # 611's audio is being delivered
    threads.append(threading.Thread(target=run, args=("612",)))
    threads[1].start()
    if overlap:
        assert gated.next_batch() == [texts["612"]]  # while 611's delivery waits
    else:
        with pytest.raises(queue.Empty):  # the worker itself is delivering
            gated.entered.get(timeout=1.0)
    release.set()
    if not overlap:
        assert gated.next_batch() == [texts["612"]]
    for t in threads:
        t.join(TEST_TIMEOUT)
    for call_id, text in texts.items():
        assert_clean_reply(replies[call_id])
        assert lengths(replies[call_id]) == expected_lengths(engine, [text], "af_sky", 1.0)


def test_a_delivery_that_fails_stops_the_daemon_as_a_worker_would(
    daemon: DaemonFactory, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the delivery thread is not lost there: the worker re-raises it, and the
    server records it and stops, as for a failure in the worker itself."""
    server = daemon(max_batch=4, overlap_delivery=True)

    def deliver(*args: Any, **kwargs: Any) -> int | None:
        raise RuntimeError("a bug in delivery (injected by the test)")

    monkeypatch.setattr(server.calls, "deliver", deliver)
    client = threading.Thread(
        target=lambda: speak(*server.tcp_address, "621", ["Hello."], timeout=TEST_TIMEOUT),
        daemon=True,
    )
    client.start()
    assert wait_for(lambda: server.thread_error is not None)
    assert "injected by the test" in str(server.thread_error)
    assert server.stop(drain_timeout=0.0) is False  # the call was abandoned, not drained
    client.join(TEST_TIMEOUT)
    assert not client.is_alive()


def test_batch_takes_one_segment_per_call_most_urgent_first() -> None:
    s = Scheduler()
    works = [CallWork(str(i), has_room=lambda: True) for i in range(5)]
    for i, w in enumerate(works):
        s.add(w)
        s.set_deadline(w, 10.0 - i)  # the later a call was added, the sooner it runs dry
        s.submit(w, [_seg(f"call {i} first", first=i != 0), _seg(f"call {i} second", False)])
    jobs = s.next_batch(3, None, timeout=0)
    # Call 0's segment is not a first segment: the three first segments go, by deadline.
    assert [w.key for w, _ in jobs] == ["4", "3", "2"]
    assert all(seg.text.endswith("first") for _, seg in jobs)
    assert [w.key for w, _ in s.next_batch(3, None, timeout=0)] == ["1", "0"]
    assert s.next_batch(3, None, timeout=0) == []  # one segment per call in flight


def test_batch_budget_keeps_a_long_segment_from_padding_short_ones() -> None:
    s = Scheduler()
    short = [CallWork(f"s{i}", has_room=lambda: True) for i in range(3)]
    long = CallWork("long", has_room=lambda: True)
    for i, w in enumerate([short[0], long, *short[1:]]):
        s.add(w)
        s.set_deadline(w, float(i))
    for w in short:
        s.submit(w, [_seg("x" * 20)])
    s.submit(long, [_seg("y" * 200)])
    # 4 x 200 would exceed 300, so the long segment waits for the next batch.
    jobs = s.next_batch(8, 300, timeout=0)
    assert [w.key for w, _ in jobs] == ["s0", "s1", "s2"]
    # The most urgent segment always goes, even alone beyond the budget.
    assert [w.key for w, _ in s.next_batch(8, 100, timeout=0)] == ["long"]


def test_a_lone_segment_is_handed_out_without_waiting() -> None:
    s = Scheduler()
    w = CallWork("alone", has_room=lambda: True)
    s.add(w)
    s.submit(w, [_seg("just me")])
    jobs = s.next_batch(64, 4000, timeout=0)  # timeout 0: nothing waits for company
    assert [seg.text for _, seg in jobs] == ["just me"]
