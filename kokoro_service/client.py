"""A blocking protocol client: the ``send`` command, the tests and the benchmarks use it.

It speaks only what ``PROTOCOL.md`` says, through :mod:`kokoro_service.protocol`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .protocol import (
    SAMPLE_RATE,
    Audio,
    AudioStreamDecoder,
    Control,
    End,
    encode_bye,
    encode_control,
    encode_hello,
    encode_text,
)


@dataclass
class Reply:
    """What came back on one connection, with arrival times (monotonic seconds)."""

    chunks: list[Audio] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    ended: bool = False
    closed: bool = False

    @property
    def chunk_ids(self) -> list[int]:
        return [c.chunk_id for c in self.chunks]

    def audio(self) -> npt.NDArray[np.float32]:
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([c.to_array() for c in self.chunks])

    @property
    def seconds(self) -> float:
        return sum(len(c.samples) // 4 for c in self.chunks) / SAMPLE_RATE


class Connection:
    """One text connection to the daemon."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = AudioStreamDecoder()
        self.reply = Reply()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, call_id: str) -> None:
        self.send_raw(encode_hello(call_id))

    def text(self, text: str) -> None:
        self.send_raw(encode_text(text, max_text_bytes=0x7FFF_FFFF))

    def control(self, **kw: object) -> None:
        self.send_raw(encode_control(Control(**kw)))  # type: ignore[arg-type]

    def bye(self) -> None:
        self.send_raw(encode_bye())

    def read_some(self, timeout: float) -> bool:
        """Read what arrives within ``timeout``; False once the peer has closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except ConnectionResetError:
            self.reply.closed = True
            return False
        if not data:
            self.reply.closed = True
            return False
        now = time.monotonic()
        for frame in self.decoder.feed(data):
            if isinstance(frame, End):
                self.reply.ended = True
            else:
                self.reply.chunks.append(frame)
                self.reply.arrivals.append(now)
        return True

    def read_until_end(self, timeout: float = 60.0) -> Reply:
        """Read until END and the close that follows it, or until ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.reply.closed:
            self.read_some(min(0.5, max(0.01, deadline - time.monotonic())))
        return self.reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def speak(
    host: str,
    port: int,
    call_id: str,
    texts: list[str],
    *,
    voice: str | None = None,
    speed: float | None = None,
    lang: str | None = None,
    timeout: float = 120.0,
) -> Reply:
    """HELLO, optional CONTROL, every TEXT, BYE; return what came back."""
    with Connection(host, port, timeout=timeout) as conn:
        conn.hello(call_id)
        if voice is not None or speed is not None or lang is not None:
            conn.control(voice=voice, speed=speed, lang=lang)
        for text in texts:
            conn.text(text)
        conn.bye()
        return conn.read_until_end(timeout)
