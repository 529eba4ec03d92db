"""Log lines that a flood of bad input cannot multiply, nor a peer's text forge."""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import threading
import time


class RateLimitedLog:
    """Logs at most one line per key per ``interval``, and at most ``burst`` lines plus
    ``rate`` per second across all keys, each with a count of what it held back.

    The per-key limit keeps one noisy peer to a line every few seconds; the total limit
    covers datagrams from many source addresses, each a new key.  The key table is an
    LRU of ``max_keys``: a forgotten key can log again, but only within the total limit.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 5.0,
        max_keys: int = 1024,
        burst: int = 20,
        rate: float = 1.0,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._max_keys = max_keys
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        self._keys: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()
        self._held_total = 0
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def exception(self, key: str, msg: str, *args: object) -> bool:
        """An ERROR with the traceback of the exception being handled."""
        return self.log(logging.ERROR, key, msg, *args, exc_info=True)

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless a limit holds it back; return whether it was logged."""
        now = time.monotonic()
        with self._lock:
            last, held = self._keys.get(key, (-1e18, 0))
            if now - last < self._interval:
                self._keys[key] = (last, held + 1)
                self._keys.move_to_end(key)
                return False
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
            self._refilled = now
            if self._tokens < 1.0:
                self._held_total += 1
                return False
            self._tokens -= 1.0
            held_total, self._held_total = self._held_total, 0
            self._keys[key] = (now, 0)
            self._keys.move_to_end(key)
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        notes = []
        if held:
            notes.append(f"{held} similar suppressed")
        if held_total:
            notes.append(f"{held_total} other line(s) suppressed by the total log limit")
        suffix = f" ({'; '.join(notes)})" if notes else ""
        self._logger.log(level, msg + suffix, *args, exc_info=exc_info)
        return True


def quiet_loop_errors(loop: asyncio.AbstractEventLoop, budget: RateLimitedLog, port: str) -> None:
    """Send ``loop``'s own error reports through ``budget``.

    asyncio reports an accept that failed for want of descriptors, with a traceback, and
    retries it a second later, for as long as the shortage lasts; unbudgeted, that wrote
    18 MB in 8 s.  Descriptor errors get one line per kind; others keep their traceback.
    """

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", "error"))
        key = f"{port}:{message}:{type(exc).__name__}"
        if isinstance(exc, OSError):
            budget.warning(key, "%s port: %s: %s", port, message, exc.strerror or exc)
        else:
            budget.log(logging.ERROR, key, "%s port: %s: %r", port, message, exc)

    loop.set_exception_handler(handler)


# C0 controls but tab, DEL, C1 controls and the Unicode line separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in each message, so that no peer-supplied text can
    begin a line of its own (a forged log line).  Peer strings are also logged quoted
    where they are logged; this is the net under every line.  Tracebacks are formatted
    apart from the message and keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        message = record.message
        if _CONTROL.search(message):
            record.message = _CONTROL.sub(lambda m: ascii(m.group())[1:-1], message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message
