"""Pacing: how fast this host synthesizes, and how much text a segment may carry.

The workers measure every segment they synthesize; the call lifecycle asks, when it cuts a
call's next segment, how large it may be so that it is ready before the audio already
sent has played out.  Both sides meet here, behind one lock.
"""

from __future__ import annotations

import threading

BUDGET_SAFETY = 0.7  # headroom for estimation error and scheduling jitter
_SMOOTHING = 0.2  # weight of a new measurement in the moving averages


class Pacing:
    """Measured synthesis speed (chars/s and RTF of one worker) and segment budgets.

    Responsibilities: fold each segment's measurement into moving averages, so one slow
    segment (a cold cache, a busy core) does not swing them; cap the load that segment
    sizes answer to at what the workers can feed; turn queued audio into a character
    budget for a call's next segment.
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._lock = threading.Lock()
        self._chars_per_second: float | None = None
        self._rtf: float | None = None

    @property
    def rtf(self) -> float | None:
        """One worker's synthesis seconds per audio second, or None before any segment."""
        with self._lock:
            return self._rtf

    def measure(self, chars: int, synth_seconds: float, audio_seconds: float) -> None:
        if synth_seconds <= 0 or audio_seconds <= 0:
            return
        speed, rtf = chars / synth_seconds, synth_seconds / audio_seconds
        with self._lock:
            old_speed, old_rtf = self._chars_per_second, self._rtf
            self._chars_per_second = (
                speed if old_speed is None else old_speed + _SMOOTHING * (speed - old_speed)
            )
            self._rtf = rtf if old_rtf is None else old_rtf + _SMOOTHING * (rtf - old_rtf)

    def useful_load(self, load: int) -> float:
        """The load that segment sizes should answer to.

        Beyond workers / RTF calls the cores cannot keep every player fed whatever the
        segment size, and cutting finer would only add choppiness and overhead.
        """
        rtf = self.rtf
        if rtf is None or rtf <= 0:
            return float(load)
        return max(1.0, min(float(load), self._workers / rtf))

    def budget(self, queued_audio: float, load: float) -> int | None:
        """Characters a call's next segment may have so that it is ready before
        ``queued_audio`` seconds have played, given the call's share of the workers;
        None while no synthesis speed has been measured."""
        with self._lock:
            rate = self._chars_per_second
        if rate is None:
            return None
        share = min(1.0, self._workers / load)
        return max(0, int(queued_audio * rate * share * BUDGET_SAFETY))
