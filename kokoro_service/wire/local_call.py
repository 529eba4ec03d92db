"""An in-process adapter's side of its call: the audio read back from the socket pair
that :meth:`~kokoro_service.server.server.Server.open_local_call` returns.

The Wyoming server and the HTTP speech API each turn these frames into their own
protocol's audio; reading them, and saying when the call ended without END, is here once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

from kokoro_service.errors import CallIncompleteError, ProtocolError
from kokoro_service.wire.codec import Audio, AudioStreamDecoder, End

log = logging.getLogger("kokoro_service.wire.local_call")


async def call_audio(
    call_id: str, reader: asyncio.StreamReader, *, width: int
) -> AsyncGenerator[Audio, None]:
    """The call's AUDIO frames until END; :class:`CallIncompleteError` (logged) when the
    socket closed, broke or carried bytes outside the protocol before it."""
    decoder = AudioStreamDecoder(width=width)
    try:
        while data := await reader.read(1 << 16):
            for frame in decoder.feed(data):
                if isinstance(frame, End):
                    return
                if isinstance(frame, Audio):
                    yield frame
    except (ConnectionError, ProtocolError) as exc:
        log.warning("local call=%s: reading its audio failed: %s", call_id, exc)
    log.warning("local call=%s: the call ended without END", call_id)
    raise CallIncompleteError(f"call {call_id} ended without END")
