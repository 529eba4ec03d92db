"""What every layer shares, and imports nothing of the package's: the audio the model
speaks and the words it times.  The wire codec (:mod:`kokoro_service.wire.codec`) sends
them; synthesis and audio make them without knowing the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

SAMPLE_RATE: Final = 24_000
"""Kokoro's output rate, and the wire's default."""
# Audio formats a call may ask for (PROTOCOL.md section 5.1), with their bytes per sample.
SAMPLE_WIDTHS: Final = {"f32le": 4, "s16le": 2, "mulaw": 1, "alaw": 1}


@dataclass(frozen=True, slots=True)
class Word:
    """A word heard in an AUDIO frame: seconds from the frame's first sample."""

    word: str
    start: float
    end: float
