"""One TTS request on a new connection, timed from its first byte sent: over the daemon's
binary protocol (HELLO, TEXT frames, BYE) or over Wyoming (``synthesize``, or the
streaming ``synthesize-start`` / ``synthesize-chunk`` / ``synthesize-stop``, as Home
Assistant sends them), to any server that speaks it; and the pieces a streamed text is
sent in.

First audio is the first AUDIO frame / the first ``audio-chunk`` with data; total is END /
``audio-stop``, or ``synthesize-stopped`` for a streamed Wyoming request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from benchmarks.lib.harness import rounded
from benchmarks.lib.wyoming_peer import read_within
from kokoro_service.wire.client import Connection


def pieces_of(text: str, n: int) -> list[str]:
    """``text`` in ``n`` pieces of about equal length, cut after a space (so no word is
    split, and the cuts fall mid-sentence as an LLM's deltas do); concatenated, ``text``."""
    words = text.split(" ")
    if n <= 1 or len(words) <= 1:
        return [text]
    target = len(text) / n
    out: list[str] = []
    cur = ""
    for i, word in enumerate(words):
        cur += word + (" " if i + 1 < len(words) else "")
        if len(out) < n - 1 and len(cur) >= target:
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


@dataclass
class Sample:
    """One request: seconds from its first byte sent, and what came back."""

    first_audio_s: float = math.nan
    total_s: float = math.nan
    audio_start_s: float = math.nan  # the first audio-start (Wyoming only)
    audio_stop_s: float = math.nan  # the last audio-stop / END
    audio_s: float = 0.0
    chunks: int = 0
    audio_starts: int = 0
    audio_stops: int = 0
    fmt: dict[str, int] | None = None
    connect_s: float = math.nan
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.first_audio_s + self.total_s)


def binary_once(
    host: str, port: int, pieces: Sequence[str], delay: float, timeout: float
) -> Sample:
    """HELLO, the pieces as TEXT frames, BYE; time the first AUDIO frame and END."""
    out = Sample()
    c0 = time.monotonic()
    conn = Connection(host, port, timeout=timeout)
    out.connect_s = time.monotonic() - c0
    try:
        t0 = time.monotonic()
        conn.hello(f"wycmp-{os.getpid()}-{time.monotonic_ns()}")

        def send() -> None:
            for i, piece in enumerate(pieces):
                if i and delay > 0:
                    time.sleep(delay)
                conn.text(piece)
            conn.bye()

        sender: threading.Thread | None = None
        if delay > 0 and len(pieces) > 1:
            sender = threading.Thread(target=send, name="pieces", daemon=True)
            sender.start()
        else:
            send()
        deadline = t0 + timeout
        end_at = math.nan
        reply = conn.reply
        while not reply.closed and time.monotonic() < deadline:
            conn.read_some(min(0.25, max(0.01, deadline - time.monotonic())))
            if reply.ended and not math.isfinite(end_at):
                end_at = time.monotonic()
                break
        if sender is not None:
            sender.join(5)
        if reply.arrivals:
            out.first_audio_s = reply.arrivals[0] - t0
        out.total_s = end_at - t0
        out.audio_stop_s = out.total_s
        out.audio_s = reply.seconds
        out.chunks = len(reply.chunks)
        fmt = getattr(reply, "format", None)
        out.fmt = {
            "rate": int(getattr(fmt, "rate", 24_000)),
            "width": int(getattr(fmt, "width", 4)),
            "channels": 1,
        }
        if not reply.ended:
            out.error = "no END" + (" (closed)" if reply.closed else f" within {timeout:.0f}s")
        elif not reply.arrivals:
            out.error = "no AUDIO before END"
    finally:
        conn.close()
    return out


async def _drain_reply(client: AsyncTcpClient, timeout: float) -> None:
    """Read one non-streamed reply to its audio-stop (the reused connection's primer)."""
    while True:
        event = await read_within(client, timeout)
        if event is None or AudioStop.is_type(event.type):
            return
        if Error.is_type(event.type):
            raise RuntimeError(f"primer: {Error.from_event(event).text}")


async def wyoming_once(
    host: str,
    port: int,
    text: str,
    pieces: Sequence[str],
    *,
    streaming: bool,
    delay: float,
    timeout: float,
    primer: str | None = None,
) -> Sample:
    """One Wyoming request on a new connection, written while the reply is read (two
    tasks, as Home Assistant does); ``primer`` is said first, unmeasured, on the same
    connection."""
    out = Sample()
    c0 = time.monotonic()
    client = AsyncTcpClient(host, port)
    await asyncio.wait_for(client.connect(), timeout=timeout)
    out.connect_s = time.monotonic() - c0
    t0 = math.nan
    try:
        if primer is not None:
            p0 = time.monotonic()
            await client.write_event(Synthesize(text=primer).event())
            await _drain_reply(client, timeout)
            out.extra["primer_s"] = rounded(time.monotonic() - p0)

        async def write() -> None:
            nonlocal t0
            t0 = time.monotonic()
            if not streaming:
                await client.write_event(Synthesize(text=text).event())
                return
            await client.write_event(SynthesizeStart().event())
            for i, piece in enumerate(pieces):
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await client.write_event(SynthesizeChunk(text=piece).event())
            # The streaming convention: the whole text once more, for servers that do not
            # stream (Home Assistant sends it), then the stop.
            await client.write_event(Synthesize(text=text).event())
            await client.write_event(SynthesizeStop().event())
            out.extra["stop_sent_s"] = rounded(time.monotonic() - t0)

        writer = asyncio.ensure_future(write())
        nbytes = 0
        try:
            while True:
                try:
                    event = await read_within(client, timeout)
                except asyncio.TimeoutError:
                    out.error = f"no event within {timeout:.0f}s"
                    break
                now = time.monotonic()
                if event is None:
                    out.error = "connection closed before the reply ended"
                    break
                if AudioStart.is_type(event.type):
                    start = AudioStart.from_event(event)
                    out.audio_starts += 1
                    if out.fmt is None:
                        out.fmt = {
                            "rate": start.rate,
                            "width": start.width,
                            "channels": start.channels,
                        }
                        out.audio_start_s = now - t0
                elif AudioChunk.is_type(event.type):
                    chunk = AudioChunk.from_event(event)
                    if chunk.audio:
                        out.chunks += 1
                        if out.chunks == 1:
                            out.first_audio_s = now - t0
                        if out.fmt is None:
                            out.fmt = {
                                "rate": chunk.rate,
                                "width": chunk.width,
                                "channels": chunk.channels,
                            }
                        nbytes += len(chunk.audio)
                elif AudioStop.is_type(event.type):
                    out.audio_stops += 1
                    out.audio_stop_s = now - t0
                    if not streaming:
                        out.total_s = out.audio_stop_s
                        break
                elif SynthesizeStopped.is_type(event.type):
                    out.total_s = now - t0
                    break
                elif Error.is_type(event.type):
                    err = Error.from_event(event)
                    out.error = f"error event: {err.code}: {err.text}"
                    break
        finally:
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        if out.fmt is not None:
            frame = out.fmt["width"] * out.fmt["channels"]
            out.audio_s = nbytes / frame / out.fmt["rate"] if frame and out.fmt["rate"] else 0.0
        if out.error is None and out.chunks == 0:
            out.error = "no audio-chunk with data"
    finally:
        await client.disconnect()
    return out
