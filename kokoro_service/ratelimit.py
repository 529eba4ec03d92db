"""Log lines that a flood of bad input cannot multiply."""

from __future__ import annotations

import collections
import logging
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

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
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
        self._logger.log(level, msg + suffix, *args)
        return True
