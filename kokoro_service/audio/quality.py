"""Audio quality measures shared by the start-up precision check, the tests and benchmarks.

Only numpy: a log-mel spectrogram distance (how far one rendering of a sentence is from
another, in log10 power averaged over time and mel bands) and the seam measures that
tell a click, a DC offset or clipping where two segments' audio meet.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kokoro_service.types import SAMPLE_RATE

Audio = npt.NDArray[np.float32]

_N_FFT = 1024
_HOP = 256
_N_MELS = 80
_FLOOR = 1e-10  # -100 dB: silence in both renderings must not count as a difference


@functools.lru_cache(maxsize=4)
def mel_filters(
    sample_rate: int = SAMPLE_RATE, n_fft: int = _N_FFT, n_mels: int = _N_MELS
) -> Audio:
    """Triangular mel filters (HTK mel scale), shape ``(n_mels, n_fft // 2 + 1)``."""
    mel = 2595.0 * np.log10(1.0 + np.array([0.0, sample_rate / 2]) / 700.0)
    edges = 700.0 * (10.0 ** (np.linspace(mel[0], mel[1], n_mels + 2) / 2595.0) - 1.0)
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    bank = np.zeros((n_mels, freqs.size), np.float32)
    for i in range(n_mels):
        lo, mid, hi = edges[i : i + 3]
        rise = (freqs - lo) / (mid - lo)
        fall = (hi - freqs) / (hi - mid)
        bank[i] = np.clip(np.minimum(rise, fall), 0.0, None)
    return bank


def log_mel(audio: Audio, sample_rate: int = SAMPLE_RATE) -> Audio:
    """log10 mel power, shape ``(frames, mels)``; 1024-point frames every 256 samples."""
    padded = np.pad(np.asarray(audio, np.float32), (_N_FFT // 2, _N_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * np.hanning(_N_FFT), axis=1)) ** 2
    return np.log10(np.maximum(power @ mel_filters(sample_rate).T, _FLOOR)).astype(np.float32)


def log_mel_distance(a: Audio, b: Audio) -> float:
    """Mean absolute log10 mel-power difference of two renderings of the same phonemes.

    Both must have the same timing (the same durations): Kokoro's durations come from the
    text side of the model, so renderings that differ only in the decoder line up sample
    for sample.  A length mismatch of a few samples is trimmed.
    """
    n = min(len(a), len(b))
    if n == 0:
        raise ValueError("cannot compare empty audio")
    return float(np.mean(np.abs(log_mel(a[:n]) - log_mel(b[:n]))))


@dataclass(frozen=True, slots=True)
class Seam:
    """What happens where one segment's audio ends and the next one's begins."""

    jump: float
    """|first sample of the next segment - last sample of this one|."""
    local_step: float
    """The largest sample-to-sample step within 5 ms either side, the seam excluded."""
    edge_rms: float
    """RMS of the 5 ms either side of the seam."""


def seam(before: Audio, after: Audio, sample_rate: int = SAMPLE_RATE) -> Seam:
    """Measure the seam between two consecutive segments' audio."""
    w = max(2, sample_rate // 200)
    left = np.asarray(before[-w:], np.float64)
    right = np.asarray(after[:w], np.float64)
    steps = np.concatenate([np.abs(np.diff(left)), np.abs(np.diff(right))])
    edges = np.concatenate([left, right])
    return Seam(
        jump=float(abs(right[0] - left[-1])),
        local_step=float(steps.max()) if steps.size else 0.0,
        edge_rms=float(np.sqrt(np.mean(edges**2))),
    )


def dc_offset(audio: Audio) -> float:
    """Mean sample value: a non-zero mean is a DC offset that thumps at every start/stop."""
    return float(np.mean(np.asarray(audio, np.float64)))


def clipped_samples(audio: Audio, limit: float = 1.0) -> int:
    """Samples at or beyond full scale, which a float-to-PCM converter would clip."""
    return int(np.count_nonzero(np.abs(audio) >= limit))
