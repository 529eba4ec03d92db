"""``nodelay``: an AUDIO frame and the END after it over loopback TCP, ``TCP_NODELAY``
(kept) against Nagle's algorithm, sent the way the daemon's writer sends them."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from benchmarks.levers.common import versus
from kokoro_service.wire.codec import (
    AudioStreamDecoder,
    End,
    audio_payload,
    encode_audio_header,
    encode_end,
)


def _nodelay_once(nodelay: bool, frames: int, samples: int, gap: float) -> dict[str, list[float]]:
    """Seconds from the start of each AUDIO frame's send until it is decoded, and from the
    END sent right behind it until that END is decoded."""
    import numpy as np

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    rx = socket.create_connection(("127.0.0.1", port))
    tx, _ = srv.accept()
    srv.close()
    tx.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
    audio = np.linspace(-0.5, 0.5, samples, dtype=np.float32)
    got_audio: list[float] = []
    got_end: list[float] = []
    done = threading.Event()

    def reader() -> None:
        dec = AudioStreamDecoder()
        while len(got_end) < frames:
            data = rx.recv(1 << 20)
            if not data:
                break
            now = time.perf_counter()
            for frame in dec.feed(data):
                (got_end if isinstance(frame, End) else got_audio).append(now)
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    audio_sent: list[float] = []
    end_sent: list[float] = []
    payload = audio_payload(audio)
    for i in range(frames):
        # The daemon's writer: header and samples in one sendmsg, then END on its own.
        audio_sent.append(time.perf_counter())
        tx.sendmsg([memoryview(encode_audio_header(payload.nbytes, i + 1)), payload])
        end_sent.append(time.perf_counter())
        tx.sendmsg([memoryview(encode_end())])
        time.sleep(gap)
    done.wait(10)
    tx.close()
    rx.close()
    return {
        "audio": [r - s for r, s in zip(got_audio, audio_sent, strict=False)],
        "end": [r - s for r, s in zip(got_end, end_sent, strict=False)],
    }


def lever_nodelay(runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": "loopback, sent as the daemon's writer sends: an AUDIO frame in one sendmsg, "
        "then END; ms from each send to its frame being decoded",
    }
    for samples in (2_400, 60_000):
        on = _nodelay_once(True, runs * 5, samples, 0.02)
        off = _nodelay_once(False, runs * 5, samples, 0.02)
        for what in ("audio", "end"):
            out[f"{what}_after_{samples}_samples_ms"] = versus(on[what], off[what], 1e3)
    return out
