"""A per-segment trace for benchmarks and tuning (``--trace-file``): where the time goes.

One JSON line per synthesized segment, with the monotonic times of its stages as the
daemon's own clock saw them: ``cut`` (its last character had arrived and the segmenter cut
it), ``claimed`` (a worker took it into a batch), ``start`` and ``end`` (the engine's
forward pass, G2P not started ahead included, audio on the host), and ``delivered`` (the
audio encoded and queued to the call's writer).  ``CLOCK_MONOTONIC`` is one clock for every
process on a Linux host, so a client on the same host can put its own receive times beside
these (``benchmarks/density.py`` does).

Each line is written whole under a lock, with the file line-buffered: one ``write`` a
segment (a few microseconds; hundreds of segments a second at most), and a reader never
sees a line the daemon has finished but kept back.  The file stops growing at
:data:`MAX_BYTES`, with one logged line: a trace left on must not fill the disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import IO

log = logging.getLogger("kokoro_service.ops.trace")

# About a million segments (a line is some 250 bytes): hours of hundreds of calls.
MAX_BYTES = 256 * 1024 * 1024


class SegmentTrace:
    """Appends trace records to a file; :meth:`close` flushes and closes it.

    A write that fails (a full disk) ends the trace with one logged line: a trace is for
    tuning, and must never cost a call its audio.
    """

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = path.open("a", encoding="utf-8", buffering=1)
        self._max = max_bytes
        self._left = max_bytes - self._file.tell()  # appending: what is there counts

    def write(self, record: dict[str, object]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                return
            self._left -= len(line)  # JSON is ASCII: characters are bytes
            if self._left < 0:
                log.warning("--trace-file %s stopped: it reached %d bytes", self.path, self._max)
                self._close()
                return
            try:
                self._file.write(line)
            except OSError as exc:
                log.error("--trace-file %s stopped: %s", self.path, exc)
                self._close()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # already reported, or nothing more to lose
                self._file.close()
            self._file = None
