"""The daemon over real loopback sockets: seed clients, routing, isolation, bad input."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine
from kokoro_service.wire.client import Connection, Reply, speak
from kokoro_service.wire.codec import (
    Control,
    End,
    encode_bye,
    encode_control,
    encode_hello,
    encode_register,
    encode_text,
    encode_unregister,
)
from tests.conftest import (
    TEST_TIMEOUT,
    DaemonFactory,
    FakeSink,
    LogCapture,
    assert_clean_reply,
    expected_lengths,
    lengths,
    read_reply,
    send_udp,
    wait_for,
)

SENTENCES = [
    "Hello there, thanks for calling.",
    "Your appointment is on Tuesday at three.",
    "Is there anything else I can help with?",
]


# --------------------------------------------------------------------------- seed client


def test_seed_client_gets_streamed_audio_then_end(daemon: DaemonFactory, engine: Engine) -> None:
    server = daemon()
    host, port = server.tcp_address
    reply = speak(host, port, "1001", SENTENCES, timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert lengths(reply) == expected_lengths(engine, SENTENCES)
    assert len(reply.chunks) >= len(SENTENCES)  # streamed per segment, not one blob


def test_raw_seed_bytes(daemon: DaemonFactory) -> None:
    """A client written from PROTOCOL.md alone: raw struct packing, no project code."""
    server = daemon()
    with socket.create_connection(server.tcp_address, timeout=TEST_TIMEOUT) as s:
        s.sendall(struct.pack(">I", 2) + b"77")
        for text in (b"Good morning. ", b"How are you?"):
            s.sendall(struct.pack(">I", len(text)) + text)
        s.sendall(b"\x00\x00\x00\x00")  # KEEPALIVE
        s.sendall(b"\xff\xff\xff\xff")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    ids = []
    pos = 0
    while True:
        size, rate, cid = struct.unpack_from(">III", data, pos)
        pos += 12
        if size == rate == cid == 0:
            break
        assert rate == 24000
        assert size % 4 == 0 and size > 0
        samples = np.frombuffer(data, dtype="<f4", count=size // 4, offset=pos)
        assert np.isfinite(samples).all()
        pos += size
        ids.append(cid)
    assert pos == len(data), "bytes after END"
    assert ids == list(range(1, len(ids) + 1)) and ids


def test_text_in_token_pieces_matches_whole_text(daemon: DaemonFactory, engine: Engine) -> None:
    server = daemon()
    text = "Sure, I can help you with that. Let me check the calendar for you now."
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]  # not on word boundaries
    reply = speak(*server.tcp_address, "1002", pieces, timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert lengths(reply) == expected_lengths(engine, [text])


def test_first_segment_is_short(daemon: DaemonFactory) -> None:
    server = daemon()
    reply = speak(*server.tcp_address, "1003", [" ".join(SENTENCES)], timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    first, rest = lengths(reply)[0], lengths(reply)[1:]
    assert first < min(rest), "the first clause should be the shortest segment"


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("order", ["register-before-hello", "register-after-hello"])
def test_registered_call_audio_goes_to_sink(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture, order: str
) -> None:
    server = daemon()
    call_id = "7"
    sink = FakeSink(server.settings.sink_port_base + 7)
    try:
        with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
            if order == "register-before-hello":
                send_udp(server, encode_register(call_id))
                assert logs.wait("register call=7")
                conn.hello(call_id)
            else:
                conn.hello(call_id)
                assert logs.wait("call started call=7")
                send_udp(server, encode_register(call_id))
            assert logs.wait("call routed to sink call=7")
            for text in SENTENCES:
                conn.text(text)
            conn.bye()
            reply = conn.read_until_end(TEST_TIMEOUT)
        assert sink.wait_end()
        assert reply.ended and not reply.chunks, "audio leaked onto the text connection"
        audio = [f for f in sink.frames if not isinstance(f, End)]
        assert sink.call_ids == [call_id]
        assert [a.chunk_id for a in audio] == list(range(1, len(audio) + 1))
        assert [len(a.samples) // 4 for a in audio] == expected_lengths(engine, SENTENCES)
        assert isinstance(sink.frames[-1], End)
    finally:
        sink.close()


def test_unregister_mid_call_returns_audio_to_text_connection(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    server = daemon()
    sink = FakeSink(server.settings.sink_port_base + 8)
    try:
        send_udp(server, encode_register("8"))
        assert logs.wait("register call=8")
        with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
            conn.hello("8")
            conn.text(SENTENCES[0])
            assert wait_for(lambda: any(not isinstance(f, End) for f in sink.frames))
            send_udp(server, encode_unregister("8"))
            assert sink.wait_end(), "sink must get END on registration BYE"
            assert logs.wait("call unrouted from sink call=8")
            conn.text(SENTENCES[1])
            conn.bye()
            reply = conn.read_until_end(TEST_TIMEOUT)
        sink_ids = [f.chunk_id for f in sink.frames if not isinstance(f, End)]
        assert reply.ended and reply.chunks
        # chunk ids continue across destinations
        assert sink_ids + reply.chunk_ids == list(range(1, len(sink_ids) + len(reply.chunks) + 1))
    finally:
        sink.close()


def test_refused_sink_falls_back_to_text_connection(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture
) -> None:
    server = daemon(sink_connect_attempts=2, sink_connect_backoff=0.05)
    send_udp(server, encode_register("9"))  # nothing listens on base+9
    assert logs.wait("register call=9")
    reply = speak(*server.tcp_address, "9", SENTENCES[:2], timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert lengths(reply) == expected_lengths(engine, SENTENCES[:2])
    assert logs.has("sink connect failed call=9")
    assert logs.has("sink failed call=9") or logs.has("delivered on the text connection")


def test_non_decimal_call_id_stays_on_text(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon()
    send_udp(server, encode_register("abc"))
    assert logs.wait("register call=abc")
    reply = speak(*server.tcp_address, "abc", ["Hello."], timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert reply.chunks
    assert logs.has("not routable call='abc'")


# --------------------------------------------------------------------------- isolation


def test_concurrent_calls_never_mix(daemon: DaemonFactory, engine: Engine) -> None:
    server = daemon(workers=2)
    scripts = {
        "201": ["One short line."],
        "202": ["A second call, with a rather different and longer sentence to say."],
        "203": ["Third.", "It speaks in two frames."],
    }
    replies: dict[str, Reply] = {}

    def run(call_id: str) -> None:
        replies[call_id] = speak(
            *server.tcp_address, call_id, scripts[call_id], timeout=TEST_TIMEOUT
        )

    threads = [threading.Thread(target=run, args=(c,)) for c in scripts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TEST_TIMEOUT)
    for call_id, texts in scripts.items():
        assert_clean_reply(replies[call_id])
        assert lengths(replies[call_id]) == expected_lengths(engine, texts), call_id


def test_never_reading_client_does_not_delay_others(daemon: DaemonFactory) -> None:
    server = daemon(queue_frames=2, write_timeout=30.0)
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(server.tcp_address)
    long_text = " ".join(["This call never reads a single byte of its audio."] * 40)
    hog.sendall(encode_hello("301") + encode_text(long_text))
    try:
        # The hog is now mid-reply; another call must get its whole reply regardless.
        assert wait_for(lambda: server.active_calls == 1)
        reply = speak(
            *server.tcp_address, "302", ["Am I stuck behind the hog?"], timeout=TEST_TIMEOUT
        )
        assert_clean_reply(reply)
        assert server.active_calls == 1, "the hog's reply should still be owed"
    finally:
        hog.close()


def test_long_reply_does_not_starve_a_new_call(daemon: DaemonFactory, engine: Engine) -> None:
    server = daemon(workers=1)
    long_text = " ".join(SENTENCES * 6)
    owed = expected_lengths(engine, [long_text])
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as long_call:
        long_call.hello("401")
        long_call.text(long_text)
        assert wait_for(lambda: long_call.read_some(0.05) and bool(long_call.reply.chunks))
        reply = speak(*server.tcp_address, "402", ["Quick question."], timeout=TEST_TIMEOUT)
        assert_clean_reply(reply)
        long_call.read_some(0.05)
        # The new call finished while the long one still had most of its reply to send.
        assert len(long_call.reply.chunks) < len(owed) // 2
        long_call.bye()
        done = long_call.read_until_end(TEST_TIMEOUT)
        assert_clean_reply(done)
        assert lengths(done) == owed


def test_cancel_drops_pending_audio(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture
) -> None:
    server = daemon(queue_frames=2)
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello("501")
        conn.text(" ".join(SENTENCES * 8))
        assert wait_for(lambda: conn.read_some(0.05) and bool(conn.reply.chunks))
        conn.control(cancel=True)
        assert logs.wait("cancel call=501")
        conn.text("After the barge in.")
        conn.bye()
        reply = conn.read_until_end(TEST_TIMEOUT)
    assert_clean_reply(reply)
    after = expected_lengths(engine, ["After the barge in."])
    assert lengths(reply)[-len(after) :] == after
    # 24 segments were owed before the cancel; only those already in flight got out.
    assert len(reply.chunks) - len(after) <= 1 + 2 + 3


def test_cancel_of_queued_frames_keeps_chunk_ids_contiguous(
    daemon: DaemonFactory, engine: Engine
) -> None:
    """Frames dropped from the queue by a cancel never reach the peer, so the frames
    after it continue the numbering where the peer's last frame left it."""
    server = daemon(queue_frames=3)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a peer that reads nothing
        s.connect(server.tcp_address)
        s.sendall(encode_hello("502") + encode_text(" ".join(SENTENCES * 8)))

        def queue_full() -> bool:
            call = server.calls.get("502")
            return call is not None and call.route.text.queued_audio >= 3

        assert wait_for(queue_full)
        s.sendall(
            encode_control(Control(cancel=True)) + encode_text("After the barge in.") + encode_bye()
        )
        reply = read_reply(s)
    assert_clean_reply(reply)  # chunk ids 1, 2, 3 ... without a gap
    after = expected_lengths(engine, ["After the barge in."])
    assert lengths(reply)[-len(after) :] == after


def test_control_applies_to_the_text_that_follows(daemon: DaemonFactory, engine: Engine) -> None:
    """Text sent before a CONTROL keeps the old settings even when it is not cut yet
    (no sentence end): the CONTROL cuts it, then the new settings apply."""
    server = daemon()
    with socket.create_connection(server.tcp_address, timeout=TEST_TIMEOUT) as s:
        s.sendall(
            encode_hello("503")
            + encode_text("Hello there")
            + encode_control(Control(speed=2.0, voice="bf_emma"))
            + encode_text("and goodbye.")
            + encode_bye()
        )
        reply = read_reply(s)
    assert_clean_reply(reply)
    before = engine.synthesize("Hello there", voice="af_sky", lang="a").audio
    after = engine.synthesize("and goodbye.", voice="bf_emma", lang="a", speed=2.0).audio
    assert before is not None and after is not None
    assert lengths(reply) == [len(before), len(after)]


# --------------------------------------------------------------------------- bad input


def _owed_then_bad(server: Server, bad: bytes) -> Reply:
    """Send a good TEXT, then ``bad``; return what came back before the close."""
    with socket.create_connection(server.tcp_address, timeout=TEST_TIMEOUT) as s:
        s.sendall(encode_hello("601") + encode_text("Owed audio.") + bad)
        return read_reply(s)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (struct.pack(">I", 2) + b"\xc3\x28", "TEXT is not valid UTF-8"),
        (struct.pack(">I", 70_000), "TEXT length 70000 exceeds 65536"),
        (struct.pack(">I", 0x8000_0003) + b"{x}", "CONTROL is not valid JSON"),
        (struct.pack(">I", 0x8000_000E) + b'{"volume": 11}', "unknown key"),
        (struct.pack(">I", 0x8001_0000), "CONTROL length 65536 exceeds 65535"),
    ],
)
def test_bad_frame_closes_after_owed_audio(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture, bad: bytes, reason: str
) -> None:
    server = daemon()
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as bystander:
        bystander.hello("602")
        bystander.text(SENTENCES[0])
        reply = _owed_then_bad(server, bad)
        assert reply.ended
        assert lengths(reply) == expected_lengths(engine, ["Owed audio."])
        assert logs.wait("bad input peer=127.0.0.1:", "call=601", reason)
        bystander.text(SENTENCES[1])
        bystander.bye()
        other = bystander.read_until_end(TEST_TIMEOUT)
    assert_clean_reply(other)
    assert lengths(other) == expected_lengths(engine, SENTENCES[:2])
    assert_clean_reply(speak(*server.tcp_address, "603", ["Still fine."], timeout=TEST_TIMEOUT))


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (encode_bye(), "first frame must be HELLO"),
        (struct.pack(">I", 0x8000_0002) + b"{}", "first frame must be HELLO"),
        (struct.pack(">I", 3) + b"a\nb", "control character U+000A"),
        (struct.pack(">I", 5000), "HELLO length 5000 exceeds 1024"),
        (struct.pack(">I", 2) + b"\xff\xfe", "HELLO call_id is not valid UTF-8"),
    ],
)
def test_bad_hello_closes_connection(
    daemon: DaemonFactory, logs: LogCapture, first: bytes, reason: str
) -> None:
    server = daemon()
    with socket.create_connection(server.tcp_address, timeout=TEST_TIMEOUT) as s:
        s.sendall(first)
        assert s.recv(100) == b"", "nothing may be sent before a valid HELLO"
    assert logs.wait("bad input peer=127.0.0.1:", "call=-", reason)
    assert_clean_reply(speak(*server.tcp_address, "604", ["Fine."], timeout=TEST_TIMEOUT))


def test_call_id_in_use_is_refused(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon()
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as first:
        first.hello("700")
        assert logs.wait("call started call=700")
        with socket.create_connection(server.tcp_address, timeout=TEST_TIMEOUT) as dup:
            dup.sendall(encode_hello("700"))
            assert dup.recv(100) == b""
        assert logs.wait("call refused", "call=700", "already in use")
        first.text("Still mine.")
        first.bye()
        assert_clean_reply(first.read_until_end(TEST_TIMEOUT))


def test_bad_voice_control_is_a_per_call_error(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon()
    reply = speak(*server.tcp_address, "701", ["Hello."], voice="nobody", timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert reply.chunks
    assert logs.has("voice refused call=701", "unknown voice 'nobody'")


def test_voice_blend_control(daemon: DaemonFactory, engine: Engine) -> None:
    server = daemon()
    reply = speak(
        *server.tcp_address,
        "702",
        ["Hello."],
        voice="af_sky:0.7,af_bella:0.3",
        timeout=TEST_TIMEOUT,
    )
    assert_clean_reply(reply)
    assert lengths(reply) == expected_lengths(engine, ["Hello."], voice="af_sky:0.7,af_bella:0.3")


def test_garbage_datagrams_are_dropped(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon()
    for payload in (b"\xff\xfe\xfd", b"HELLO:1", b"R" * 600, b"REGISTER:"):
        send_udp(server, payload)
    send_udp(server, encode_unregister("12345"))  # BYE without REGISTER
    assert logs.wait("datagram dropped peer=127.0.0.1:")
    assert logs.wait("unregister call=12345", "was_registered=False")
    assert_clean_reply(speak(*server.tcp_address, "703", ["Fine."], timeout=TEST_TIMEOUT))


def test_hello_timeout(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon(hello_timeout=0.5)
    with socket.create_connection(server.tcp_address, timeout=TEST_TIMEOUT) as s:
        assert s.recv(10) == b""
    assert logs.wait("no HELLO within 0.5s")


def test_idle_timeout_ends_call_with_end(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon(idle_timeout=0.5)
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello("704")
        conn.text("Hello.")
        reply = conn.read_until_end(TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert logs.has("reason=idle for 0.5s")


def test_slowloris_frame_timeout(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon(frame_timeout=0.6)
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello("705")
        frame = encode_text("One byte at a time.")
        for b in frame[:8]:
            conn.send_raw(bytes([b]))
            time.sleep(0.2)
        reply = conn.read_until_end(TEST_TIMEOUT)
    assert reply.ended and reply.closed
    assert logs.has("frame incomplete after 0.6s")


def test_max_connections(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon(max_connections=1)
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as first:
        first.hello("706")
        assert logs.wait("call started call=706")
        with socket.create_connection(server.tcp_address, timeout=TEST_TIMEOUT) as extra:
            assert extra.recv(10) == b""
        assert logs.wait("max_connections=1 reached")
        first.text("Unharmed.")
        first.bye()
        assert_clean_reply(first.read_until_end(TEST_TIMEOUT))


def test_pending_text_limit_refuses_new_text(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon(max_pending_chars=300)
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello("707")
        for _ in range(10):
            conn.text("This sentence is exactly fifty characters long ok. ")
        conn.bye()
        reply = conn.read_until_end(TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert logs.has("text refused call=707", "max_pending_chars=300")


def test_stop_sends_end_to_open_calls(daemon: DaemonFactory) -> None:
    server = daemon()
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello("708")
        conn.text("A reply that is still being spoken when the daemon stops.")
        assert wait_for(lambda: conn.read_some(0.05) and bool(conn.reply.chunks))
        stopper = threading.Thread(target=server.stop, kwargs={"drain_timeout": 10.0})
        stopper.start()
        reply = conn.read_until_end(TEST_TIMEOUT)
        stopper.join(TEST_TIMEOUT)
    assert_clean_reply(reply)
    with pytest.raises(OSError):
        socket.create_connection(server.tcp_address, timeout=1).close()


def test_turn_without_punctuation_is_spoken_when_the_llm_goes_quiet(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    server = daemon(flush_timeout=0.3)
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello("709")
        conn.text("let me know if that works for you")  # no BYE: the call goes on
        assert wait_for(lambda: conn.read_some(0.05) and bool(conn.reply.chunks))
        assert not conn.reply.ended
        conn.bye()
        reply = conn.read_until_end(TEST_TIMEOUT)
    assert_clean_reply(reply)


def test_growing_segments_under_load(daemon: DaemonFactory) -> None:
    """The default (growth) segmenter: several calls at once still get every frame in order."""
    # Growth sizes segments by the measured speed, and a budget's segment may carry several
    # sentences (the whole reply, under the default cap); with a 40-character cap no
    # segment exceeds 48 (a budget may overshoot by a quarter to reach punctuation), so
    # the 112 characters are cut into at least three segments however fast the host is.
    server = daemon(segment_growth=2.0, workers=2, max_segment_chars=40)
    text = " ".join(SENTENCES)
    replies: dict[str, Reply] = {}

    def run(call_id: str) -> None:
        replies[call_id] = speak(*server.tcp_address, call_id, [text], timeout=TEST_TIMEOUT)

    threads = [threading.Thread(target=run, args=(f"80{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TEST_TIMEOUT)
    for reply in replies.values():
        assert_clean_reply(reply)
        assert len(reply.chunks) >= 3
