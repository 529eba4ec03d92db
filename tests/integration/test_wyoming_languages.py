"""Languages over the real Wyoming port: ``describe`` lists each voice under the language a
request naming it is spoken in, only where that language's G2P imports here; a request
speaks that language, or the one it asks for; a language this host cannot speak is a
logged reason, never a crash.

The engine is a small random-weight checkpoint with one voice for each of Kokoro's
language prefixes (and one outside Kokoro's naming), so each request's sample count, fixed
by the phonemes its language's G2P gives, is known in advance.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from kokoro_service.adapters.wyoming import WyomingServer
from kokoro_service.synthesis.engine import Engine
from kokoro_service.synthesis.models.checkpoint import build_random_checkpoint
from kokoro_service.synthesis.models.sources import model_dir_source
from tests.conftest import DaemonFactory, LogCapture, WyomingFactory
from tests.integration.test_wyoming import _events_until
from tests.unit.synthesis.test_languages import SENTENCES

# A voice for each prefix, named as Kokoro names them, and a custom voice.
VOICES = {
    "af_one": "en-US",
    "bm_two": "en-GB",
    "ef_three": "es",
    "ff_four": "fr",
    "hf_five": "hi",
    "im_six": "it",
    "pf_seven": "pt-BR",
    "jf_eight": "ja",
    "zm_nine": "zh",
    "custom": "fr",  # no language in its name: the daemon's --lang, here f
}


@pytest.fixture(scope="module")
def nine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = build_random_checkpoint(
        tmp_path_factory.mktemp("nine"), size="tiny", seed=3, voices=tuple(VOICES)
    )
    return Engine(model_dir_source(path), device="cpu", default_lang="f")


@pytest.fixture
def port(daemon: DaemonFactory, wyoming: WyomingFactory, nine: Engine) -> Iterator[WyomingServer]:
    yield wyoming(daemon(engine=nine, voice="af_one", lang="f"))


def _describe(port: WyomingServer) -> dict[str, list[str]]:
    async def ask() -> Info:
        async with AsyncTcpClient(*port.address) as client:
            await client.write_event(Describe().event())
            return Info.from_event((await _events_until(client, "info"))[-1])

    return {v.name: v.languages for v in asyncio.run(ask()).tts[0].voices}


def _samples(port: WyomingServer, text: str, voice: SynthesizeVoice | dict[str, str]) -> int:
    """The samples a ``synthesize`` is answered with; ``voice`` as a dict is sent as it is,
    as a client writing its own JSON would (Wyoming's own drops a language beside a name)."""

    async def ask() -> list[Event]:
        async with AsyncTcpClient(*port.address) as client:
            if isinstance(voice, dict):
                await client.write_event(Event("synthesize", {"text": text, "voice": voice}))
            else:
                await client.write_event(Synthesize(text=text, voice=voice).event())
            return await _events_until(client, "audio-stop")

    events = asyncio.run(ask())
    assert not [e for e in events if e.type == "error"], events
    return sum(len(e.payload or b"") // 2 for e in events if e.type == "audio-chunk")


def _spoken(engine: Engine, text: str, voice: str, lang: str) -> int:
    """The samples of ``text`` (one sentence: one segment) in ``voice`` and ``lang``."""
    audio = engine.synthesize(text, voice=voice, lang=lang).audio
    return 0 if audio is None else len(audio)


def test_describe_lists_each_voice_under_the_language_it_is_spoken_in(
    port: WyomingServer,
) -> None:
    assert _describe(port) == {name: [tag] for name, tag in VOICES.items()}


def _settled(logs: LogCapture, voice: str, lang: str) -> bool:
    """Whether a Wyoming call was set to ``voice`` and ``lang``, as the daemon logs it."""
    return logs.has("settings call=wyoming-", f"voice={voice} lang={lang} ")


@pytest.mark.parametrize(("voice", "lang"), [("jf_eight", "j"), ("zm_nine", "z"), ("bm_two", "b")])
def test_a_voice_named_alone_speaks_its_own_language(
    port: WyomingServer, nine: Engine, logs: LogCapture, voice: str, lang: str
) -> None:
    text = SENTENCES[lang]
    assert _samples(port, text, SynthesizeVoice(name=voice)) == _spoken(nine, text, voice, lang)
    assert _settled(logs, voice, lang)


def test_a_language_asked_for_is_spoken_by_a_voice_of_it(
    port: WyomingServer, nine: Engine, logs: LogCapture
) -> None:
    ja, en = SENTENCES["j"], SENTENCES["a"]
    # Wyoming's client: a language alone, spoken by the voice whose language it is.
    assert _samples(port, ja, SynthesizeVoice(language="ja-JP")) == _spoken(
        nine, ja, "jf_eight", "j"
    )
    assert _settled(logs, "jf_eight", "j")
    # A client's own JSON with both: that voice, reading that language.
    both = {"name": "af_one", "language": "ja"}
    assert _samples(port, ja, both) == _spoken(nine, ja, "af_one", "j")
    assert _settled(logs, "af_one", "j")
    # A language Kokoro has not: said why, and spoken by the daemon's voice in its language.
    assert _samples(port, en, SynthesizeVoice(language="de\nFORGED")) == _spoken(
        nine, en, "af_one", "f"
    )
    assert logs.wait("wyoming language not spoken here", "language='de\\nFORGED'", "speaking f")


def test_a_language_whose_g2p_does_not_import_is_not_listed_or_spoken(
    monkeypatch: pytest.MonkeyPatch,
    daemon: DaemonFactory,
    wyoming: WyomingFactory,
    nine: Engine,
    logs: LogCapture,
) -> None:
    # None in sys.modules is how Python spells "this module cannot be imported": the
    # port asks each language's G2P as it starts.
    monkeypatch.setitem(sys.modules, "pyopenjtalk", None)
    port = wyoming(daemon(engine=nine, voice="af_one", lang="f"))
    # The Japanese voice is listed in the language it is now spoken in: the default.
    assert _describe(port) == {n: ["fr" if t == "ja" else t] for n, t in VOICES.items()}
    assert logs.has("wyoming listening", "languages=a,b,e,f,h,i,p,z")
    ja = "はい。"  # short: French reads each kana as a spelled-out character name
    assert _samples(port, ja, SynthesizeVoice(name="jf_eight")) == _spoken(
        nine, ja, "jf_eight", "f"
    )
    assert _settled(logs, "jf_eight", "f")
    assert _samples(port, ja, SynthesizeVoice(language="ja")) > 0
    assert logs.wait("wyoming language not spoken here", "language='ja'", "speaking f")
    assert not logs.has("lang refused")  # the port never asks the daemon for it
