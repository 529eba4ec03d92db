"""The OpenAI-style speech API on the HTTP port, called by the official ``openai`` client
over real sockets, on the tiny random-weight checkpoint (sizes and behaviour; what the
audio says is checked with real weights in test_intelligibility)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import openai
import pytest
import soundfile as sf

from kokoro_service.adapters.http.openai import wav_header
from kokoro_service.synthesis.engine import Engine
from tests.conftest import Ops, expected_lengths, wait_for

TEXT = "Your appointment is on Tuesday at noon."


def client(o: Ops, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=o.base + "/v1", api_key=key, max_retries=0, timeout=60)


def stream(o: Ops, **kw: Any) -> bytes:
    args: dict[str, Any] = {"model": "kokoro", "voice": "af_sky", "input": TEXT}
    args.update(kw)
    with client(o).audio.speech.with_streaming_response.create(**args) as resp:
        assert resp.status_code == 200
        return b"".join(resp.iter_bytes())


def post(o: Ops, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        o.base + "/v1/audio/speech",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_pcm_and_wav_stream_the_calls_audio(ops: Callable[..., Ops], engine: Engine) -> None:
    o = ops()
    samples = sum(expected_lengths(engine, [TEXT]))
    pcm = stream(o, response_format="pcm")
    assert len(pcm) == 2 * samples
    wav = stream(o, response_format="wav")
    assert wav[:44] == wav_header(24000, 2)
    assert len(wav) == 44 + len(pcm)  # the vocoder's noise differs from call to call
    audio, rate = sf.read(io.BytesIO(wav[:44] + pcm), dtype="int16")
    assert rate == 24000 and len(audio) == samples
    started = o.server.metrics.registry.get_sample_value("kokoro_calls_started_total")
    assert started == 2  # each request was a call, scheduled and counted like any other


def decoded(data: bytes) -> tuple[np.ndarray, int]:
    """What FFmpeg's decoders read back from a reply (libsndfile has no AAC)."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    rate = frames[0].sample_rate
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]), rate


MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac"}
ENCODED = list(MEDIA_TYPES)


def test_encoded_formats_decode_to_the_calls_length(
    ops: Callable[..., Ops], engine: Engine
) -> None:
    o = ops()
    samples = sum(expected_lengths(engine, [TEXT]))
    for fmt in ENCODED:
        audio, rate = decoded(stream(o, response_format=fmt))
        assert rate == (48000 if fmt == "opus" else 24000), fmt  # Opus decodes at 48 kHz
        got = len(audio) * 24000 / rate
        assert abs(got - samples) < 0.05 * samples, fmt  # codecs pad a frame or two
        assert np.abs(audio).max() > 0.001, fmt  # sound, not an encoder's silence


def chunked_body(o: Ops, body: dict[str, Any]) -> tuple[dict[str, str], list[bytes]]:
    """POST ``body`` over a raw socket and return the headers and each HTTP chunk as it
    came on the wire (http.client would join them)."""
    host, port = o.base.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        reader = sock.makefile("rb")
        status = reader.readline()
        assert b" 200 " in status, status
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers.get("transfer-encoding") == "chunked", headers
        chunks = []
        while (size := int(reader.readline().split(b";")[0], 16)) > 0:
            chunks.append(reader.read(size))
            reader.readline()
        return headers, chunks


def test_encoded_formats_stream_frame_by_frame(ops: Callable[..., Ops]) -> None:
    """Each AUDIO frame's encoding leaves as it is made: the reply comes in several
    chunks, the first long before the last, where the whole file used to be sent once
    it was encoded."""
    o = ops()
    text = " ".join(f"Sentence number {n} of a longer reply." for n in range(4))
    for fmt, media_type in MEDIA_TYPES.items():
        body = {"model": "kokoro", "voice": "af_sky", "input": text, "response_format": fmt}
        headers, chunks = chunked_body(o, body)
        assert headers["content-type"].startswith(media_type), headers
        assert len([c for c in chunks if c]) >= 3, (fmt, [len(c) for c in chunks])
        assert len(decoded(b"".join(chunks))[0]) > 0, fmt


def test_sse_carries_every_format(ops: Callable[..., Ops], engine: Engine) -> None:
    o = ops()
    samples = sum(expected_lengths(engine, [TEXT]))
    for fmt in ["pcm", "wav", *ENCODED]:
        raw = stream(o, response_format=fmt, extra_body={"stream_format": "sse"})
        events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line]
        assert events[-1]["type"] == "speech.audio.done", fmt
        assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}, fmt
        data = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
        if fmt == "pcm":
            assert len(data) == 2 * samples
        elif fmt == "wav":
            assert data[:44] == wav_header(24000, 2) and len(data) == 44 + 2 * samples
        else:
            audio, rate = decoded(data)
            assert abs(len(audio) * 24000 / rate - samples) < 0.05 * samples, fmt


def test_long_input_streams_in_every_format(ops: Callable[..., Ops]) -> None:
    """OpenAI's 4096-character limit was ours only while mp3 was encoded whole."""
    o = ops()
    long_text = " ".join([TEXT] * 120)  # 4,800 characters
    assert len(long_text) > 4096
    with client(o).audio.speech.with_streaming_response.create(
        model="kokoro", voice="af_sky", input=long_text, response_format="mp3"
    ) as resp:
        assert resp.status_code == 200
        first = next(c for c in resp.iter_bytes() if c)
    assert first[:3] == b"ID3" or first[0] == 0xFF  # an mp3 stream's first frame
    assert wait_for(lambda: o.server.active_calls == 0)


def test_speed_is_clamped_to_what_kokoro_speaks(ops: Callable[..., Ops], engine: Engine) -> None:
    o = ops()
    fast = stream(o, response_format="pcm", speed=4.0)
    assert len(fast) == 2 * sum(expected_lengths(engine, [TEXT], speed=2.0))


def test_bad_requests_get_clear_4xx(ops: Callable[..., Ops]) -> None:
    o = ops()
    good = {"model": "kokoro", "voice": "af_sky", "input": TEXT}
    cases: list[tuple[bytes, int, str]] = [
        (b"{not json", 400, "not JSON"),
        (json.dumps([1]).encode(), 400, "JSON object"),
        (json.dumps({**good, "voice": "nobody"}).encode(), 400, "nobody"),
        (json.dumps({**good, "input": "  "}).encode(), 400, "input"),
        (json.dumps({**good, "input": "a" * 70_000}).encode(), 400, "longer than 65536"),
        (json.dumps({**good, "response_format": "ogg"}).encode(), 400, "response_format"),
        (json.dumps({**good, "speed": 9}).encode(), 400, "speed"),
        (json.dumps({**good, "stream_format": "text"}).encode(), 400, "sse"),
        (b"[" * 100_000, 400, "not JSON"),  # deeper than the parser goes
        (b'{"input": "\\ud800", "voice": "af_sky"}', 400, "cannot be used"),  # lone surrogate
        (json.dumps({**good, "response_format": []}).encode(), 400, "response_format"),
        (json.dumps({**good, "speed": 10**400}).encode(), 400, "speed"),
        (json.dumps({**good, "voice": "af_sky," * 400}).encode(), 400, "voice"),
    ]
    for body, status, needle in cases:
        got, answer = post(o, body)
        assert got == status, (body[:40], answer)
        assert needle in answer["error"]["message"], answer
    # A body announced too large is refused from its header, before it is read.
    host, port = o.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n")
        sock.sendall(b"Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n{")
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 413
        assert "at most" in json.loads(answer.read())["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="nobody"):
        stream(o, voice="nobody")
    assert o.server.calls.opened == 0  # no call was opened for a bad request


def test_models_and_voices_are_listed(ops: Callable[..., Ops]) -> None:
    o = ops()
    ids = [m.id for m in client(o).models.list()]
    assert "kokoro" in ids and "tts-1" in ids
    status, body = o.get("/v1/voices")
    assert status == 200 and "af_sky" in body["voices"]
    # OpenAI's names are listed too, each standing for a voice this model has.
    assert {"alloy", "echo", "nova", "shimmer"} <= set(body["voices"])
    assert set(body["aliases"].values()) <= set(body["voices"])


def test_openai_voice_names_speak_as_their_aliases(ops: Callable[..., Ops], engine: Engine) -> None:
    """pipecat sends only OpenAI's names: each speaks as the model voice it stands for
    (the tiny model has af_sky, af_bella, am_adam and bf_emma, not af_alloy)."""
    o = ops(voice_alias=(("agent", "bf_emma:0.5,af_sky:0.5"), ("echo", "bf_emma")))
    _, body = o.get("/v1/voices")
    assert body["aliases"]["alloy"] == "af_bella"  # no af_alloy: the model's first af_ voice
    assert body["aliases"]["ash"] == "am_adam"  # present: the voice itself
    assert body["aliases"]["echo"] == "bf_emma"  # --voice-alias replaces a built-in one
    for name, voice in (("alloy", "af_bella"), ("echo", "bf_emma")):
        got = stream(o, response_format="pcm", voice=name)
        assert len(got) == 2 * sum(expected_lengths(engine, [TEXT], voice=voice)), name
    assert len(stream(o, response_format="pcm", voice="agent")) > 0  # an alias of a blend


def test_api_key_and_the_loopback_rule(ops: Callable[..., Ops]) -> None:
    keyed = ops(api_key="s3cret")
    with pytest.raises(openai.AuthenticationError):
        stream(keyed)
    ok = client(keyed, "s3cret").audio.speech.create(
        model="kokoro", voice="af_sky", input=TEXT, response_format="pcm"
    )
    assert len(ok.content) > 0
    # Beyond loopback with neither TLS nor a key, the API is off (health is not).
    open_port = ops(http_host="0.0.0.0")
    with pytest.raises(openai.PermissionDeniedError, match="off"):
        stream(open_port)
    assert open_port.get("/healthz")[0] == 200


def test_a_full_instance_answers_503(ops: Callable[..., Ops]) -> None:
    o = ops(max_calls=1)
    from kokoro_service.wire.client import Connection

    with Connection(*o.server.tcp_address) as held:
        held.hello("1")
        assert wait_for(lambda: o.server.calls.full)
        with pytest.raises(openai.InternalServerError) as info:
            stream(o)
        assert info.value.status_code == 503 and "busy" in str(info.value)
        held.bye()


def test_a_client_that_leaves_mid_stream_frees_its_call(ops: Callable[..., Ops]) -> None:
    """The client's close reaches the call's socket; the daemon's next frame for it fails
    and its queued segments are dropped."""
    o = ops()
    long_text = " ".join([TEXT] * 200)
    got_audio = threading.Event()
    with client(o).audio.speech.with_streaming_response.create(
        model="kokoro", voice="af_sky", input=long_text, response_format="pcm"
    ) as resp:
        for chunk in resp.iter_bytes():
            if chunk:
                got_audio.set()
                break
    assert got_audio.is_set()
    # Within the usual bound, not 10 s: the call ends at the first frame the daemon cannot
    # send, after the segments then in flight, which take as long as this host's synthesis.
    assert wait_for(lambda: o.server.active_calls == 0)
    synthesized = o.server.metrics.registry.get_sample_value(
        "kokoro_segment_synthesis_seconds_count"
    )
    # The daemon cut 200 sentence segments; it stopped at the first frame it could not send.
    assert synthesized is not None and synthesized < 100


def _request_id(o: Ops, path: str, given: str | None = None) -> tuple[int, str | None]:
    host, port = o.base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"x-request-id": given} if given else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-request-id")
    finally:
        conn.close()


def test_every_response_carries_a_request_id(ops: Callable[..., Ops]) -> None:
    o = ops()
    status, rid = _request_id(o, "/healthz")
    assert status == 200 and rid is not None and len(rid) == 32  # a new one
    assert _request_id(o, "/healthz")[1] != rid, "one per request"
    assert _request_id(o, "/nowhere")[0] == 404 and _request_id(o, "/nowhere")[1]
    assert _request_id(o, "/v1/voices", "req_abc-123.4") == (200, "req_abc-123.4")
    status, replaced = _request_id(o, "/healthz", "x" * 200)  # too long: never echoed
    assert replaced is not None and len(replaced) == 32
    status, replaced = _request_id(o, "/healthz", "a b")  # not plain: never echoed
    assert replaced is not None and replaced != "a b"
    # What OpenAI's client reads on the speech endpoint itself.
    raw = client(o).audio.speech.with_raw_response.create(
        model="kokoro", voice="af_sky", input=TEXT, response_format="pcm"
    )
    assert raw.status_code == 200 and len(raw.headers["x-request-id"]) == 32
