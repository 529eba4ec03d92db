"""Each of Kokoro's nine languages phonemizes here, offline, with its own G2P: nothing
fetched, Japanese without fugashi or unidic, and the G2P processes choosing as the daemon
does.  A G2P that is missing, or text one cannot read, is a reason, not a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kokoro_service.errors import VoiceError
from kokoro_service.synthesis.engine import Engine
from kokoro_service.synthesis.g2p_procs import G2PProcesses
from kokoro_service.synthesis.languages import (
    LANG_CODES,
    LANGUAGES,
    G2PError,
    JapaneseG2P,
    language_code,
    new_pipeline,
    speakable,
    unavailable,
    voice_language,
)
from kokoro_service.synthesis.models.architecture import REPO_ID
from kokoro_service.synthesis.models.checkpoint import kokoro_vocab
from kokoro_service.synthesis.models.sources import model_dir_source
from kokoro_service.text.segmenter import Segmenter, SegmenterConfig
from tests.conftest import REPO

# One everyday sentence a language, two or three seconds spoken.
SENTENCES: dict[str, str] = {
    "a": "Your prescription is ready at the pharmacy.",
    "b": "Your appointment is on Tuesday afternoon.",
    "e": "Su cita es el martes.",
    "f": "Votre rendez-vous est mardi.",
    "h": "मंगलवार को मिलते हैं।",
    "i": "Il suo appuntamento è martedì.",
    "p": "A sua consulta é na terça.",
    "j": "ご予約は火曜日です。",
    "z": "您的预约在星期二。",
}
# The language each one's phonemes are compared with: English, or for English, British.
REFERENCE = {code: "b" if code == "a" else "a" for code in LANG_CODES}

# In a fresh interpreter, so nothing is imported or cached yet: every language's pipeline
# is built and reads its sentence with network access and child processes forbidden
# (spaCy's model download runs pip; the hub and the dictionaries would open sockets).
# ldconfig alone may run: ctypes asks it where espeak-ng's library is, on this machine.
_OFFLINE = textwrap.dedent(
    """
    import json, sys

    def forbid(event, args):
        local = event == "subprocess.Popen" and args[0] == "/sbin/ldconfig"
        if not local and event in ("socket.connect", "socket.getaddrinfo",
                                   "subprocess.Popen", "os.system", "os.exec", "urllib.Request"):
            raise RuntimeError(f"forbidden while phonemizing: {event} {args!r:.120}")

    sys.addaudithook(forbid)
    from kokoro_service.synthesis.languages import new_pipeline
    sentences = json.loads(sys.argv[1])
    out = {}
    for code, text in sentences.items():
        pipe = new_pipeline(code, sys.argv[2])
        out[code] = [r.phonemes for r in pipe(text, voice=None, split_pattern=None)]
    print(json.dumps(out))
    """
)


def test_every_language_phonemizes_offline_with_its_own_g2p(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _OFFLINE, json.dumps(SENTENCES), REPO_ID],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    phonemes: dict[str, list[str]] = json.loads(run.stdout.strip().splitlines()[-1])
    vocab = kokoro_vocab()
    for code in LANG_CODES:
        got = phonemes[code]
        assert len(got) == 1 and got[0], f"{code}: no phonemes"
        # Every symbol is one the model was trained on: nothing it would silently skip.
        assert not {c for c in got[0] if c not in vocab}, (code, got)
        # Its own G2P, not the reference language's: the same text reads otherwise there.
        assert got != phonemes[REFERENCE[code]] or code == REFERENCE[code]


def test_every_language_is_speakable_here() -> None:
    # The environment the daemon ships in: each extra installed, nothing to download.
    assert speakable() == LANG_CODES == ("a", "b", "e", "f", "h", "i", "p", "j", "z")
    assert all(unavailable(code) is None for code in LANG_CODES)


def test_japanese_is_read_through_openjtalk_without_fugashi() -> None:
    g2p = JapaneseG2P()
    # Kanji read from OpenJTalk's dictionary, a digit read as a number, は read as "wa".
    assert g2p("東京駅で3時に会いましょう。") == ("toːkʲoː ekʲi de saɲʥi ɲi ai maɕoː.", None)
    assert g2p("こんにちは、今日はお元気ですか？")[0] == "koɲɲiʨiβa, kʲoː βa o ɡeŋkʲi desɨ ka?"
    assert g2p("") == ("", None)
    assert "fugashi" not in sys.modules and "unidic" not in sys.modules


def test_text_the_japanese_g2p_chokes_on_is_an_escaped_reason() -> None:
    # Arabic-Indic digits are digits to Python but not to the romanizer's number reader.
    with pytest.raises(G2PError) as info:
        JapaneseG2P()("١٢٣\nFORGED log line")
    message = str(info.value)
    assert "Japanese G2P cannot read" in message and "KeyError" in message
    assert "\n" not in message and "\\n" in message  # the peer's text, escaped


def test_a_missing_g2p_is_a_reason_and_not_spoken(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path
) -> None:
    # None in sys.modules is how Python spells "this module cannot be imported".
    monkeypatch.setitem(sys.modules, "pyopenjtalk", None)
    why = unavailable("j")
    assert why is not None and "Japanese needs pyopenjtalk" in why
    assert "j" not in speakable() and "z" in speakable()
    eng = Engine(model_dir_source(tiny_dir), device="cpu", default_lang="e")
    with pytest.raises(VoiceError, match="language 'j' is unavailable here: Japanese needs"):
        eng.pipeline("j")
    with pytest.raises(VoiceError, match=r"unknown language 'q\\n"):
        eng.pipeline("q\nFORGED")
    assert unavailable("q") == "unknown language 'q'; kokoro knows a, b, e, f, h, i, p, j, z"


@pytest.mark.parametrize(
    ("voice", "code"),
    [
        ("af_sky", "a"),
        ("am_adam", "a"),
        ("bf_emma", "b"),
        ("bm_george", "b"),
        ("ef_dora", "e"),
        ("ff_siwis", "f"),
        ("hf_alpha", "h"),
        ("if_sara", "i"),
        ("pf_dora", "p"),
        ("jm_kumo", "j"),
        ("zf_xiaobei", "z"),
        ("af_sky:0.7,bf_emma:0.3", "a"),  # a blend: its first voice
        ("emily", None),  # a custom voice outside Kokoro's naming
        ("xf_someone", None),
    ],
)
def test_a_voice_name_gives_its_language(voice: str, code: str | None) -> None:
    assert voice_language(voice) == code


@pytest.mark.parametrize(
    ("tag", "code"),
    [
        ("en-US", "a"),
        ("en", "a"),
        ("en_GB", "b"),
        ("en-AU", "a"),
        ("es", "e"),
        ("fr-FR", "f"),
        ("hi", "h"),
        ("it", "i"),
        ("pt-BR", "p"),
        ("pt-PT", "p"),
        ("ja", "j"),
        ("zh-CN", "z"),
        ("de", None),
        ("", None),
    ],
)
def test_a_language_tag_gives_its_code(tag: str, code: str | None) -> None:
    assert language_code(tag) == code
    if code is not None and "-" not in tag and "_" not in tag:
        assert LANGUAGES[code].tag.split("-")[0] == tag


def test_g2p_processes_choose_each_language_g2p_as_the_daemon_does() -> None:
    procs = G2PProcesses(1, REPO_ID, "j")  # Japanese built first: quicker than English
    try:
        for code in ("j", "z"):
            here = [r.phonemes for r in new_pipeline(code, REPO_ID)(SENTENCES[code])]
            there = procs.submit(SENTENCES[code], code).result(120)
            assert [ph for ph, _ in there] == here
    finally:
        procs.close()


# ----------------------------------------------------- cutting text with no spaces
# The segmenter (kokoro_service.text) is tested here for what these languages need of it.


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        (
            "ご予約は火曜日の午後です。お薬は薬局でお受け取りください。",
            ["ご予約は火曜日の午後です。", "お薬は薬局でお受け取りください。"],
        ),
        (
            "您的预约在星期二下午。请准时到达！谢谢",
            ["您的预约在星期二下午。", "请准时到达！", "谢谢"],
        ),
        (
            "आपकी अपॉइंटमेंट मंगलवार को है। कृपया समय पर आएं।",
            ["आपकी अपॉइंटमेंट मंगलवार को है।", "कृपया समय पर आएं।"],
        ),
    ],
)
def test_japanese_chinese_and_hindi_sentences_are_cut_at_their_full_stops(
    text: str, segments: list[str]
) -> None:
    whole = Segmenter(SegmenterConfig(growth=0))
    assert [*whole.push(text), *whole.flush()] == segments
    # Streamed a character at a time, as an LLM's tokens come: the same cuts.
    streamed = Segmenter(SegmenterConfig(growth=0))
    pieces = [s for ch in text for s in streamed.push(ch)]
    assert [*pieces, *streamed.flush()] == segments


def test_a_closing_bracket_stays_with_its_sentence() -> None:
    seg = Segmenter(SegmenterConfig(growth=0))
    text = "「はい」と言った。「いいえ。」次"
    assert [*seg.push(text), *seg.flush()] == ["「はい」と言った。", "「いいえ。」", "次"]


def test_a_long_unspaced_run_is_cut_at_a_clause_not_mid_word() -> None:
    # Two sentences of over 100 characters: each is cut at its commas (、), and the
    # first segment of the reply at the first one, so first audio does not wait.
    clause = "本日はお電話いただきありがとうございます、"
    text = (clause * 6)[:-1] + "。" + (clause * 6)[:-1] + "。"
    seg = Segmenter()
    out = [*seg.push(text), *seg.flush()]
    assert "".join(out) == text
    assert out[0] == clause
    assert all(s.endswith(("、", "。")) for s in out)
    assert all(len(s) <= SegmenterConfig().max_chars for s in out)
