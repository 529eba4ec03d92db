"""What a batch costs, learned from the batches the workers ran.

A padded forward pass costs about ``fixed + per_char * size * longest``: a fixed part (on a
GPU, kernel launches and synchronisation: 62 ms of a batch-1 pass on the H200 run in
benchmarks/results/h200-2026-11-27-density-gpu.json) and a part that grows with the padded
work.  :class:`BatchClock` fits those two numbers by least squares over the most recent
batches, so the scheduler can cut a batch to a time bound on any device without a table of
device speeds.  Until it has seen batches of two different sizes it predicts nothing.

A lone segment's time, which the bound is a multiple of, is the median of lone passes when
there were any.  A daemon started straight into sustained load may never run one: the fit
then predicts it, for the median longest segment of recent batches (a little long, as a
batch's longest is its longest, so the bound errs towards larger batches).
"""

from __future__ import annotations

import collections
import collections.abc
import threading
from collections.abc import Sequence
from dataclasses import dataclass

# Enough recent batches to average out noise, few enough to follow a change of load.
_WINDOW = 128
_MIN_SAMPLES = 4


@dataclass(frozen=True, slots=True)
class BatchCost:
    """A fitted cost model: seconds = fixed + per_char * size * longest."""

    fixed: float
    per_char: float

    def seconds(self, size: int, longest: int) -> float:
        return self.fixed + self.per_char * size * longest


class BatchClock:
    """Measured batch times, and the cost model fitted to them.  Thread-safe."""

    def __init__(self, window: int = _WINDOW) -> None:
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)
        self._lone: collections.deque[float] = collections.deque(maxlen=window)
        self._longest: collections.deque[int] = collections.deque(maxlen=window)
        self._cost: BatchCost | None = None

    def record(self, size: int, longest: int, seconds: float) -> None:
        """One batch of ``size`` segments, the longest ``longest`` characters, took
        ``seconds`` from the engine's call to its return."""
        if size < 1 or longest < 1 or not seconds > 0:  # NaN too
            return
        with self._lock:
            self._samples.append((float(size * longest), seconds))
            self._longest.append(longest)
            if size == 1:
                self._lone.append(seconds)
            self._cost = fit_cost(self._samples)

    @property
    def cost(self) -> BatchCost | None:
        with self._lock:
            return self._cost

    def lone_seconds(self) -> float | None:
        """What a first segment's own pass costs: the median recent lone pass, else the
        fit's prediction for a lone segment of the median longest; None before either."""
        with self._lock:
            if self._lone:
                return _median(self._lone)
            if self._cost is None:
                return None
            return self._cost.seconds(1, int(_median(self._longest)))


def _median(values: collections.abc.Iterable[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def fit_cost(samples: Sequence[tuple[float, float]]) -> BatchCost | None:
    """Least squares of seconds on padded work, (work, seconds) pairs; None with fewer
    than four of them or while the work does not vary.  The simulated device's
    calibration is fitted by the same function (``benchmarks/lib/simdevice.py``)."""
    n = len(samples)
    if n < _MIN_SAMPLES:
        return None
    mean_x = sum(x for x, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    var = sum((x - mean_x) ** 2 for x, _ in samples)
    if var <= 1e-9 * max(1.0, mean_x**2):
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in samples) / var
    slope = max(0.0, slope)
    fixed = max(0.0, mean_y - slope * mean_x)
    return BatchCost(fixed, slope)
