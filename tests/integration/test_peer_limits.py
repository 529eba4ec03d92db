"""No peer can stop the daemon, grow it without bound, forge its log or lose owed audio.

Each test here reproduces an attack or a loss found by probing the daemon, against the
real server, sockets and writers; each failed before its fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time

from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeVoice

from kokoro_service.adapters.http.server import HttpServer
from kokoro_service.config import parse_networks
from kokoro_service.logs import EscapingFormatter
from kokoro_service.synthesis.engine import Engine
from kokoro_service.wire.client import Connection, speak
from kokoro_service.wire.codec import (
    Control,
    encode_control,
    encode_hello,
    encode_register,
    encode_unregister,
)
from tests.conftest import (
    TEST_TIMEOUT,
    DaemonFactory,
    FakeSink,
    LogCapture,
    WyomingFactory,
    assert_clean_reply,
    expected_lengths,
    http_app,
    lengths,
    send_udp,
    wait_for,
)

# No ":" in it: a voice spec reads that as a weight, and the name must reach "unknown voice".
FORGED = "x\nFORGED 2026-01-01 INFO kokoro_service.server.server all calls ended"


def _no_forged_line(logs: LogCapture) -> None:
    for line in logs.lines:
        assert "\n" not in line, f"a peer's newline reached the log: {line!r}"


# ----------------------------------------------------------------------- owed audio


def test_a_reply_that_ends_before_its_sink_fails_gets_its_audio_on_the_text_connection(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture
) -> None:
    """The one-word reply is synthesized and its call ended before the sink is given up
    on; END must wait for the frames.  The retries are pinned long (4 tries, 1.5 s
    doubling: 10.5 s) so that the order holds on a busy host: with the default 0.1 s the
    sink was given up (0.7 s) before a loaded host had synthesized "Hello." (0.9 s)."""
    server = daemon(sink_connect_backoff=1.5)  # nothing listens on base+11
    send_udp(server, encode_register("11"))
    assert logs.wait("register call=11")
    reply = speak(*server.tcp_address, "11", ["Hello."], timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert lengths(reply) == expected_lengths(engine, ["Hello."])
    assert logs.has("delivered on the text connection instead")
    assert not logs.has("undeliverable")


def test_frames_queued_on_a_sink_move_to_the_text_connection_in_order_at_bye(
    daemon: DaemonFactory,
) -> None:
    """A processor that stops reading, then unregisters: the frames stuck in its queue
    go to the text connection at BYE, before any newer one, so ids stay in order."""
    server = daemon(queue_frames=64, write_timeout=2.0)
    sink = FakeSink(server.settings.sink_port_base + 12, read=False)
    texts = [f"Sentence number {n} is spoken to a processor that stopped." for n in range(8)]
    try:
        send_udp(server, encode_register("12"))
        with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
            conn.hello("12")
            assert wait_for(lambda: sink.connections == 1)
            for text in texts:
                conn.text(text)
            call = server.calls.get("12")
            assert call is not None
            assert wait_for(lambda: call.route.chunks_sent >= 6)
            send_udp(server, encode_unregister("12"))
            conn.bye()
            reply = conn.read_until_end(TEST_TIMEOUT)
        assert reply.ended
        ids = reply.chunk_ids
        assert ids == sorted(ids), f"chunk ids out of order on the text connection: {ids}"
        assert len(set(ids)) == len(ids)
        assert ids and ids[-1] == call.route.chunks_sent
    finally:
        sink.close()


# --------------------------------------------------------------- REGISTER/BYE churn


def test_register_bye_churn_keeps_a_call_to_two_sink_writers_and_quiet_logs(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture
) -> None:
    """A processor port that listens but never accepts, and 300 REGISTER/BYE pairs for
    one live call: at most two sink writers at a time, all gone after the last BYE,
    a bounded log, and the call still answered on its text connection."""
    server = daemon()
    never = socket.socket()
    never.bind(("127.0.0.1", server.settings.sink_port_base + 13))
    never.listen(1)  # never accepted: the backlog fills, then connects hang
    peak = 0
    try:
        with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
            conn.hello("13")
            assert wait_for(lambda: server.calls.get("13") is not None)
            call = server.calls.get("13")
            assert call is not None
            threads_before = threading.active_count()
            logs.lines.clear()
            for _ in range(300):
                send_udp(server, encode_register("13"))
                send_udp(server, encode_unregister("13"))
                peak = max(peak, call.route.sink_writers)
                time.sleep(0.005)
            assert wait_for(lambda: call.route.sink_writers == 0, 10.0)
            assert threading.active_count() <= threads_before + 1
            routing = [ln for ln in logs.lines if "sink" in ln or "routed" in ln]
            assert len(routing) <= 30, f"{len(routing)} routing lines for one burst"
            conn.text("Still here.")
            conn.bye()
            reply = conn.read_until_end(TEST_TIMEOUT)
        assert reply.ended
        assert lengths(reply) == expected_lengths(engine, ["Still here."])
        assert peak <= 2
    finally:
        never.close()


def test_a_call_id_with_a_leading_zero_is_not_routed_to_another_calls_sink(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    server = daemon()
    sink = FakeSink(server.settings.sink_port_base + 1)  # call "1"'s processor
    try:
        send_udp(server, encode_register("01"))
        assert logs.wait("register call=01")
        reply = speak(*server.tcp_address, "01", ["Hello."], timeout=TEST_TIMEOUT)
        assert_clean_reply(reply)
        assert reply.chunks
        assert sink.connections == 0
        assert logs.has("not routable call='01'")
    finally:
        sink.close()


def test_a_register_racing_the_calls_hello_routes_the_call(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    """The registrar and the HELLO are held at the registry's lock, each past its own
    look at the other, then let go in whatever order: the call must reach its sink.
    Before the fix the registrar looked the call up before registering, and the HELLO
    could read the registry before the REGISTER: about one try in two went to text."""
    server = daemon()
    for n in range(10):
        call_id = str(60 + n)
        sink = FakeSink(server.settings.sink_port_base + 60 + n)
        try:
            with server.registry._lock:
                send_udp(server, encode_register(call_id))
                time.sleep(0.2)  # the registrar is waiting on the lock now
                conn = Connection(*server.tcp_address, timeout=TEST_TIMEOUT)
                conn.hello(call_id)
                assert wait_for(lambda: server.calls.get(call_id) is not None)  # noqa: B023
                time.sleep(0.1)  # and the HELLO too
            with conn:
                conn.text("Hi.")
                conn.bye()
                reply = conn.read_until_end(TEST_TIMEOUT)
            assert reply.ended
            assert not reply.chunks, f"try {n}: the audio went to the text connection"
            assert sink.wait_end()
        finally:
            sink.close()


# ------------------------------------------------------------------ exhaustion


# Opens connections from another process, so that only the daemon's side of each one
# counts against this process's descriptors: those beyond the limit wait, connected, in
# the listening socket's queue, where the daemon's accept() fails with EMFILE.
_CONNECT_AND_HOLD = """
import socket, sys
sys.stdin.readline()
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(32)]
print(len(held), flush=True)
sys.stdin.read()
"""


def test_the_accept_loop_survives_running_out_of_descriptors(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    server = daemon()
    # Started first: starting a process takes descriptors of this one's.
    peer = subprocess.Popen(
        [sys.executable, "-c", _CONNECT_AND_HOLD, str(server.tcp_address[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert peer.stdin is not None and peer.stdout is not None
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 8, limits[1]))
        try:
            peer.stdin.write("go\n")
            peer.stdin.flush()
            assert peer.stdout.readline().strip() == "32"
            assert logs.wait("accept failed on the text port")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    finally:
        peer.kill()
        peer.communicate()
    assert server.thread_error is None
    reply = speak(*server.tcp_address, "21", ["Hello."], timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)
    assert reply.chunks


def test_a_connection_whose_thread_cannot_start_is_refused_and_the_server_goes_on(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    server = daemon()
    old = threading.stack_size()
    threading.stack_size(1 << 40)  # no thread can get a terabyte of stack: start() fails
    try:
        with socket.create_connection(server.tcp_address) as sock:
            sock.settimeout(TEST_TIMEOUT)
            assert logs.wait("connection refused", "can't start new thread")
            assert sock.recv(16) == b""
    finally:
        threading.stack_size(old)
    assert server.thread_error is None
    reply = speak(*server.tcp_address, "22", ["Hello."], timeout=TEST_TIMEOUT)
    assert_clean_reply(reply)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_the_http_port_caps_connections_and_closes_idle_ones(daemon: DaemonFactory) -> None:
    server = daemon()
    refused: list[int] = []
    http = HttpServer(
        http_app(server),
        "127.0.0.1",
        0,
        max_connections=4,
        first_request_timeout=1.0,
        on_refused=lambda: refused.append(1),
    )
    http.start()
    try:
        idle = [socket.create_connection(http.address) for _ in range(4)]
        time.sleep(0.2)  # the four are accepted before the fifth comes
        extra = socket.create_connection(http.address)
        assert _closed_within(extra, 0.8), "a connection beyond the cap must be closed at once"
        assert refused == [1]
        for sock in idle:  # silent connections are closed after the first-request timeout
            assert _closed_within(sock, TEST_TIMEOUT)
            sock.close()
        extra.close()
        with socket.create_connection(http.address) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(TEST_TIMEOUT)
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        http.stop()


def test_the_wyoming_port_caps_connections_and_closes_idle_ones(
    daemon: DaemonFactory, logs: LogCapture, wyoming: WyomingFactory
) -> None:
    server = daemon(max_wyoming_connections=2, hello_timeout=1.0)
    wy = wyoming(server)
    address = wy.address
    idle = [socket.create_connection(address) for _ in range(2)]
    time.sleep(0.2)
    extra = socket.create_connection(address)
    try:
        assert _closed_within(extra, 0.8)
        assert logs.wait("max_wyoming_connections=2 reached")
        for sock in idle:
            assert _closed_within(sock, TEST_TIMEOUT)
        assert logs.wait("wyoming connection closed", "no event for 1s")
        events = asyncio.run(_describe(*address))
        assert events and events[0].type == "info"
    finally:
        for sock in [*idle, extra]:
            sock.close()


async def _describe(host: str, port: int) -> list[Event]:
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Describe().event())
        event = await asyncio.wait_for(client.read_event(), TEST_TIMEOUT)
    return [event] if event is not None else []


def test_wyoming_refusals_outside_allow_are_logged_once_per_address(
    daemon: DaemonFactory, logs: LogCapture, wyoming: WyomingFactory
) -> None:
    server = daemon(allow=parse_networks("10.0.0.0/8"))
    address = wyoming(server).address
    for _ in range(30):
        with socket.create_connection(address) as sock:
            assert _closed_within(sock, TEST_TIMEOUT)
    assert logs.wait("wyoming connection refused", "not in --allow")
    refusals = [ln for ln in logs.lines if "wyoming connection refused" in ln]
    assert len(refusals) == 1


# ----------------------------------------------------------------- bad input


def test_deeply_nested_control_json_is_a_protocol_error(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    server = daemon()
    body = b"[" * 60_000
    with socket.create_connection(server.tcp_address) as sock:
        sock.sendall(encode_hello("31") + ((0x80000000 | len(body)).to_bytes(4, "big")) + body)
        sock.settimeout(TEST_TIMEOUT)
        while sock.recv(65536):
            pass
    assert logs.wait("bad input", "CONTROL is nested too deeply")
    assert logs.wait("call ended call=31")
    assert not any(ln.startswith("ERROR") for ln in logs.lines)


def test_deeply_nested_wyoming_header_is_bad_input(
    daemon: DaemonFactory, logs: LogCapture, wyoming: WyomingFactory
) -> None:
    server = daemon()
    wy = wyoming(server)
    with socket.create_connection(wy.address) as sock:
        sock.sendall(b"[" * 60_000 + b"\n")
        assert _closed_within(sock, TEST_TIMEOUT)
    assert logs.wait("wyoming bad input", "nested too deeply")
    assert not any(ln.startswith("ERROR") for ln in logs.lines)


# --------------------------------------------------------------- log forging


def test_a_voice_name_from_control_cannot_forge_a_log_line(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    server = daemon()
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello("41")
        conn.send_raw(encode_control(Control(voice=FORGED)))
        conn.send_raw(encode_control(Control(lang=FORGED)))
        conn.bye()
        conn.read_until_end(TEST_TIMEOUT)
    assert logs.wait("voice refused call=41")
    assert logs.wait("lang refused call=41")
    _no_forged_line(logs)


def test_a_voice_name_from_wyoming_cannot_forge_a_log_line(
    daemon: DaemonFactory, logs: LogCapture, wyoming: WyomingFactory
) -> None:
    server = daemon()
    wy = wyoming(server)

    async def ask() -> None:
        async with AsyncTcpClient(*wy.address) as client:
            voice = SynthesizeVoice(name=FORGED)
            await client.write_event(Synthesize(text="Hi.", voice=voice).event())
            await asyncio.wait_for(client.read_event(), TEST_TIMEOUT)
            await client.write_event(Event(type=FORGED))

    asyncio.run(ask())
    assert logs.wait("wyoming voice refused")
    _no_forged_line(logs)


def test_a_datagram_cannot_forge_a_log_line(daemon: DaemonFactory, logs: LogCapture) -> None:
    server = daemon()
    send_udp(server, f"REGISTER:{FORGED}".encode())
    send_udp(server, FORGED.encode())
    assert logs.wait("datagram dropped")
    _no_forged_line(logs)


def test_the_log_format_escapes_control_characters_in_every_message() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "kokoro_service", logging.WARNING, __file__, 1, "voice %s", (FORGED,), None
    )
    line = formatter.format(record)
    assert "\n" not in line
    assert line == "WARNING voice " + FORGED.replace("\n", "\\n")
    assert record.getMessage() == "voice " + FORGED  # the record itself is left as it was


# ------------------------------------------------------------------- HTTP calls


def test_an_http_client_gone_before_the_response_starts_stops_its_call(
    daemon: DaemonFactory,
) -> None:
    server = daemon(write_timeout=120.0)
    http = HttpServer(
        http_app(server),
        "127.0.0.1",
        0,
    )
    http.start()
    try:
        text = " ".join(f"Sentence number {n} of a reply nobody will hear." for n in range(200))
        body = json.dumps({"model": "kokoro", "input": text[:4000], "voice": "af_sky"}).encode()
        head = (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(http.address) as sock:
            sock.sendall(head + body)
            assert wait_for(lambda: server.active_calls == 1)
        assert wait_for(lambda: server.active_calls == 0, 20.0), "the call went on synthesizing"
    finally:
        http.stop()
