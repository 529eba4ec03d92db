"""A blocking protocol client: the ``send`` command, the tests and the benchmarks use it.

It speaks only what ``PROTOCOL.md`` says, through :mod:`kokoro_service.wire.codec`, and
decodes the audio formats a call may ask for with :mod:`kokoro_service.audio.formats`.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from kokoro_service.audio.formats import SEED_FORMAT, AudioFormat, decode_samples
from kokoro_service.errors import ProtocolError
from kokoro_service.wire.codec import (
    Audio,
    AudioStreamDecoder,
    Control,
    End,
    Word,
    Words,
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
    words: dict[int, tuple[Word, ...]] = field(default_factory=dict)
    """The WORDS frames, by the chunk id of the AUDIO frame each came before."""
    format: AudioFormat = SEED_FORMAT
    ended: bool = False
    closed: bool = False

    @property
    def chunk_ids(self) -> list[int]:
        return [c.chunk_id for c in self.chunks]

    def audio(self) -> npt.NDArray[np.float32]:
        """Every AUDIO frame decoded to float32, at the call's rate (``format.rate``)."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(
            [decode_samples(c.samples, self.format.encoding) for c in self.chunks]
        )

    @property
    def seconds(self) -> float:
        samples = sum(len(c.samples) // self.format.width for c in self.chunks)
        return samples / self.format.rate

    def words_heard(self, played: float) -> list[Word]:
        """The words a listener has heard after ``played`` seconds of this call's audio.

        What a client does at barge-in: each AUDIO frame starts where the frames before it
        end in playback time, and its WORDS frame times each word from that start.  A word
        counts as heard once its end has been played.  Times in the result are from the
        start of the call's audio.
        """
        heard: list[Word] = []
        start = 0.0
        for chunk in self.chunks:
            for w in self.words.get(chunk.chunk_id, ()):
                if start + w.end <= played:
                    heard.append(Word(w.word, start + w.start, start + w.end))
            start += len(chunk.samples) / self.format.width / self.format.rate
        return heard


class Connection:
    """One text connection to the daemon, over TLS when given a client context
    (PROTOCOL.md 5.5: the framing inside is the same)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 30.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.decoder = AudioStreamDecoder()
        self.reply = Reply()
        self._text_sent = False

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, call_id: str) -> None:
        self.send_raw(encode_hello(call_id))

    def text(self, text: str) -> None:
        self.send_raw(encode_text(text, max_text_bytes=0x7FFF_FFFF))
        self._text_sent = True

    def control(self, **kw: object) -> None:
        """Send CONTROL; a ``format`` or ``rate`` also sets how the reply is decoded, so
        it may only come before the first TEXT, as the daemon only takes it then."""
        ctl = Control(**kw)  # type: ignore[arg-type]
        if ctl.sets_format and self._text_sent:
            raise ProtocolError("format and rate may only be set before the call's first TEXT")
        self.send_raw(encode_control(ctl))
        if ctl.sets_format:
            fmt = self.reply.format
            self.reply.format = AudioFormat(ctl.format or fmt.encoding, ctl.rate or fmt.rate)
            self.decoder.width = self.reply.format.width

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
            elif isinstance(frame, Words):
                self.reply.words[frame.chunk_id] = frame.words
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
    format: str | None = None,
    rate: int | None = None,
    words: bool | None = None,
    timeout: float = 120.0,
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """HELLO, one CONTROL with the settings given (if any), every TEXT, BYE; return what
    came back."""
    settings = {"voice": voice, "speed": speed, "lang": lang, "format": format, "rate": rate}
    settings["words"] = words
    given = {k: v for k, v in settings.items() if v is not None}
    with Connection(host, port, timeout=timeout, tls=tls) as conn:
        conn.hello(call_id)
        if given:
            conn.control(**given)
        for text in texts:
            conn.text(text)
        conn.bye()
        return conn.read_until_end(timeout)
