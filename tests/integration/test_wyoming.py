"""The Wyoming port over real sockets, with Wyoming's own client: describe, synthesize,
streaming, bad input, a full instance, and calls shared with the phone calls.  Each
request is a call on the real engine over a small random-weight checkpoint, so the
number of samples it answers with is known in advance.
"""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from kokoro_service.adapters.wyoming import WyomingServer
from kokoro_service.errors import StartupError
from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine
from kokoro_service.wire.client import Connection
from tests.conftest import (
    TEST_TIMEOUT,
    DaemonFactory,
    LogCapture,
    WyomingFactory,
    wait_for,
)
from tests.integration.test_telephony_features import TEXTS, segments


async def _events_until(client: AsyncTcpClient, last: str) -> list[Event]:
    events = []
    while True:
        event = await asyncio.wait_for(client.read_event(), TEST_TIMEOUT)
        assert event is not None, f"connection closed before {last}"
        events.append(event)
        if event.type == last:
            return events


def _pcm_samples(events: list[Event]) -> int:
    return sum(len(e.payload or b"") // 2 for e in events if e.type == "audio-chunk")


def _samples_of(engine: Engine, texts: list[str]) -> int:
    """The samples the engine speaks ``texts`` in, cut as the daemon cuts them."""
    spoken = (engine.synthesize(t, voice="af_sky", lang="a") for t in segments(texts))
    return sum(len(s.audio) for s in spoken if s.audio is not None)


def test_wyoming_describe_synthesize_and_stream(
    daemon: DaemonFactory, engine: Engine, wyoming: WyomingFactory
) -> None:
    server = daemon()
    wy = wyoming(server)
    want = _samples_of(engine, TEXTS)

    async def talk() -> None:
        async with AsyncTcpClient(*wy.address) as client:
            await client.write_event(Describe().event())
            info = Info.from_event((await _events_until(client, "info"))[-1])
            program = info.tts[0]
            assert program.supports_synthesize_streaming
            assert {v.name for v in program.voices} == set(engine.voices.names)

            await client.write_event(Synthesize(text=" ".join(TEXTS)).event())
            events = await _events_until(client, "audio-stop")
            assert events[0].type == "audio-start" and events[0].data["rate"] == 24_000
            assert _pcm_samples(events) == want

            # Streamed as an LLM writes it, with the whole text again for older servers
            # before the stop, as Home Assistant sends it: spoken once.
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice("af_sky")).event())
            for piece in ("Thanks for call", "ing Acme Dental. How can I ", "help you today?"):
                await client.write_event(SynthesizeChunk(text=piece).event())
            await client.write_event(Synthesize(text=" ".join(TEXTS)).event())
            await client.write_event(SynthesizeStop().event())
            events = await _events_until(client, "synthesize-stopped")
            types = [e.type for e in events]
            assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]
            assert _pcm_samples(events) == want

            await client.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice("zz")).event())
            error = (await _events_until(client, "error"))[-1]
            assert "zz" in error.data["text"]

    before = server.calls.opened
    asyncio.run(talk())
    assert server.calls.opened - before == 2  # each synthesis was a call of the daemon's own


def test_wyoming_and_phone_calls_share_the_workers(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture, wyoming: WyomingFactory
) -> None:
    # One worker: the Wyoming request and the phone call are served by the same
    # scheduler, so both complete, and each as a call in the same call table.
    server = daemon(workers=1)
    wy = wyoming(server)

    async def both() -> tuple[list[Event], list[int]]:
        async with AsyncTcpClient(*wy.address) as client:
            await client.write_event(Synthesize(text=" ".join(TEXTS)).event())
            loop = asyncio.get_running_loop()
            phone = loop.run_in_executor(None, _phone_call, server)
            events = await _events_until(client, "audio-stop")
            return events, await phone

    events, chunk_ids = asyncio.run(both())
    assert _pcm_samples(events) > 0 and chunk_ids == [1, 2]
    assert logs.has("call started call=wyoming-") and logs.has("call started call=55")


def _phone_call(server: Server) -> list[int]:
    with Connection(*server.tcp_address) as conn:
        conn.hello("55")
        for text in TEXTS:
            conn.text(text)
        conn.bye()
        return conn.read_until_end(TEST_TIMEOUT).chunk_ids


def test_a_busy_wyoming_port_fails_start_up(daemon: DaemonFactory) -> None:
    server = daemon()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        wy = WyomingServer(server.local_calls(), port)
        with pytest.raises(StartupError, match=f"wyoming:{port}"):
            wy.start()


def test_wyoming_bad_input_is_refused_without_reading_it(
    daemon: DaemonFactory, logs: LogCapture, wyoming: WyomingFactory
) -> None:
    server = daemon()
    wy = wyoming(server)
    with socket.create_connection(wy.address, timeout=TEST_TIMEOUT) as sock:
        header = {"type": "synthesize", "data_length": 1 << 40}
        sock.sendall(json.dumps(header).encode() + b"\n")
        assert sock.recv(1) == b""  # closed at once: the data was never waited for
    assert logs.wait("wyoming bad input", "bad lengths")
    with socket.create_connection(wy.address, timeout=TEST_TIMEOUT) as sock:
        sock.sendall(b"not json\n")
        assert sock.recv(1) == b""

    async def bad_then_gone() -> None:
        async with AsyncTcpClient(*wy.address) as client:
            # Data it cannot use: an error event, no call opened, the connection goes on.
            await client.write_event(Event(type="synthesize", data={"text": 5}))
            error = (await _events_until(client, "error"))[-1]
            assert error.data["code"] == "bad-request"
            await client.write_event(Describe().event())
            await _events_until(client, "info")
            # A client that leaves mid-synthesis: its call ends with it.
            await client.write_event(Synthesize(text=" ".join(TEXTS * 3)).event())
            await _events_until(client, "audio-start")

    opened = server.calls.opened
    asyncio.run(bad_then_gone())
    assert server.calls.opened == opened + 1
    assert wait_for(lambda: len(server.calls) == 0), "the departed client's call lingers"
    # The server goes on serving.
    with Connection(*server.tcp_address) as conn:
        conn.hello("56")
        conn.text("Okay.")
        conn.bye()
        assert conn.read_until_end(TEST_TIMEOUT).ended
    assert np.isfinite(server.calls.opened)


def test_a_full_instance_tells_a_wyoming_client_it_is_busy(
    daemon: DaemonFactory, wyoming: WyomingFactory
) -> None:
    server = daemon(max_calls=1)
    wy = wyoming(server)
    with Connection(*server.tcp_address) as held:
        held.hello("57")
        assert wait_for(lambda: server.calls.full)

        async def refused() -> Event:
            async with AsyncTcpClient(*wy.address) as client:
                # Blank text takes no call: no audio, not `busy`.
                await client.write_event(Synthesize(text=" ").event())
                blank = await _events_until(client, "audio-stop")
                assert [e.type for e in blank] == ["audio-start", "audio-stop"]
                await client.write_event(Synthesize(text="Okay.").event())
                return (await _events_until(client, "error"))[-1]

        assert asyncio.run(refused()).data["code"] == "busy"
        held.bye()
    busy = server.metrics.registry.get_sample_value(
        "kokoro_calls_refused_total", {"reason": "busy"}
    )
    assert busy == 1 and server.calls.opened == 1


async def _served_after(client: AsyncTcpClient) -> None:
    """The same connection still speaks a normal request in full."""
    await client.write_event(Synthesize(text="Okay.").event())
    events = await _events_until(client, "audio-stop")
    assert events[0].type == "audio-start" and _pcm_samples(events) > 0
    assert "error" not in {e.type for e in events}


@pytest.mark.parametrize("text", ["", "   ", " \n\t "], ids=["empty", "spaces", "whitespace"])
def test_wyoming_blank_text_is_an_empty_audio_pair(
    daemon: DaemonFactory, logs: LogCapture, wyoming: WyomingFactory, text: str
) -> None:
    # Home Assistant waits for audio-stop: nothing to say is said as no audio, not a
    # crash, an EOF or an error it would wait past.
    server = daemon()
    wy = wyoming(server)

    async def talk() -> list[str]:
        async with AsyncTcpClient(*wy.address) as client:
            await client.write_event(Synthesize(text=text).event())
            events = await _events_until(client, "audio-stop")
            assert server.calls.opened == 0  # answered without a call
            await _served_after(client)
            return [e.type for e in events]

    assert asyncio.run(talk()) == ["audio-start", "audio-stop"]
    assert server.calls.opened == 1 and logs.has("wyoming synthesize with no text")
    assert wait_for(lambda: len(server.calls) == 0), "a call lingers"
    assert not logs.has("wyoming handler crashed")


def test_wyoming_stream_of_empty_chunks_is_an_empty_audio_pair(
    daemon: DaemonFactory, logs: LogCapture, wyoming: WyomingFactory
) -> None:
    server = daemon()
    wy = wyoming(server)

    async def talk() -> list[str]:
        async with AsyncTcpClient(*wy.address) as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice("af_sky")).event())
            for piece in ("", "  ", "", "\n"):
                await client.write_event(SynthesizeChunk(text=piece).event())
            await client.write_event(Synthesize(text="").event())  # HA's copy for old servers
            await client.write_event(SynthesizeStop().event())
            events = await _events_until(client, "synthesize-stopped")
            await _served_after(client)
            return [e.type for e in events]

    assert asyncio.run(talk()) == ["audio-start", "audio-stop", "synthesize-stopped"]
    assert wait_for(lambda: len(server.calls) == 0), "a call lingers"
    assert not logs.has("wyoming handler crashed")


def test_wyoming_empty_chunks_within_a_stream_lose_no_audio(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture, wyoming: WyomingFactory
) -> None:
    server = daemon()
    wy = wyoming(server)
    want = _samples_of(engine, TEXTS)

    async def talk() -> list[Event]:
        async with AsyncTcpClient(*wy.address) as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice("af_sky")).event())
            pieces = ("", "Thanks for call", "", "ing Acme Dental. How can I ", "")
            for piece in (*pieces, "help you today?", ""):
                await client.write_event(SynthesizeChunk(text=piece).event())
            await client.write_event(SynthesizeStop().event())
            events = await _events_until(client, "synthesize-stopped")
            await _served_after(client)
            return events

    events = asyncio.run(talk())
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert set(types[1:-2]) == {"audio-chunk"}
    assert _pcm_samples(events) == want
    assert wait_for(lambda: len(server.calls) == 0), "a call lingers"
    assert not logs.has("wyoming handler crashed")
