"""Operations over real sockets: the HTTP port (metrics, health, readiness), admission
control at ``--max-calls``, and a fleet of three daemons sharing audio processors."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import trustme
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from benchmarks.lib.callers import playback
from benchmarks.lib.harness import Daemon
from kokoro_service.adapters.http.app import create_app, speech_gate
from kokoro_service.adapters.http.server import HttpServer
from kokoro_service.cli import main
from kokoro_service.config import Settings, parse_networks
from kokoro_service.ops.metrics import REFUSALS, end_reason_label
from kokoro_service.ops.readiness import Lifecycle
from kokoro_service.server.local_calls import LocalCallsSlot
from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine, Request, Synthesis
from kokoro_service.wire.client import Connection, speak
from kokoro_service.wire.codec import SAMPLE_RATE, Audio, End
from tests.conftest import (
    DaemonFactory,
    FakeSink,
    LogCapture,
    Ops,
    free_port_base,
    http_app,
    http_get,
    wait_for,
)

SENTENCE = "Your appointment is on Tuesday at noon."


def scrape(base: str) -> list[Sample]:
    """Every sample of ``/metrics``, read by prometheus_client's own parser."""
    status, body = http_get(base, "/metrics")
    assert status == 200
    return [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` with these labels (others ignored)."""
    found = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_metrics_count_a_call_and_health_answers(ops: Callable[..., Ops]) -> None:
    o = ops(max_calls=3)
    assert o.get("/healthz") == (200, {"healthy": True, "reason": "serving"})
    status, body = o.get("/readyz")
    assert status == 200 and body["ready"] is True

    host, port = o.server.tcp_address
    reply = speak(host, port, "4711", [SENTENCE, SENTENCE])
    assert reply.ended and reply.chunks
    # The call leaves the table a moment before its end is counted.
    assert wait_for(lambda: value(scrape(o.base), "kokoro_calls_ended_total", reason="bye") == 1)
    samples = scrape(o.base)
    assert value(samples, "kokoro_calls_started_total") == 1
    assert value(samples, "kokoro_calls_ended_total", reason="bye") == 1
    assert value(samples, "kokoro_calls_active") == 0
    assert value(samples, "kokoro_max_calls") == 3
    assert value(samples, "kokoro_ttfa_seconds_count") == 1
    assert value(samples, "kokoro_segment_synthesis_seconds_count") == len(reply.chunks)
    assert value(samples, "kokoro_batch_size_count") == len(reply.chunks)
    assert value(samples, "kokoro_audio_seconds_total") == pytest.approx(reply.seconds, abs=1e-3)
    assert value(samples, "kokoro_segment_rtf_count") == len(reply.chunks)
    for stage in ("segments", "synthesizing", "frames"):
        assert value(samples, "kokoro_queue_depth", stage=stage) == 0
    assert value(samples, "kokoro_ready") == 1
    for reason in REFUSALS:
        assert value(samples, "kokoro_calls_refused_total", reason=reason) == 0
    # Bounded labels only: a call_id never becomes a series.
    labels = {k for s in samples for k in s.labels}
    assert labels <= {"reason", "stage", "le"}, labels
    assert not any("4711" in v for s in samples for v in s.labels.values())


def test_end_reasons_are_a_bounded_set() -> None:
    assert end_reason_label("BYE") == "bye"
    assert end_reason_label("closed without BYE") == "closed"
    assert end_reason_label("idle for 600s") == "timeout"
    assert end_reason_label("protocol error: TEXT is not valid UTF-8") == "protocol_error"
    assert end_reason_label("daemon stopped (drain timeout)") == "shutdown"
    assert end_reason_label("something new") == "other"


def test_a_full_instance_answers_busy_with_end_and_readiness_follows(
    ops: Callable[..., Ops], logs: LogCapture
) -> None:
    o = ops(max_calls=2)
    host, port = o.server.tcp_address
    held = [Connection(host, port, timeout=30) for _ in range(2)]
    for i, conn in enumerate(held):
        conn.hello(f"held-{i}")
        conn.text(SENTENCE)
    assert wait_for(lambda: o.server.active_calls == 2)
    status, body = o.get("/readyz")
    assert status == 503 and "full" in body["reason"]

    # The third caller pipelines TEXT after its HELLO; it still reads END, then the close.
    with Connection(host, port, timeout=30) as busy:
        busy.hello("busy-1")
        for _ in range(50):
            busy.text(SENTENCE)
        reply = busy.read_until_end(timeout=30)
    assert reply.ended and reply.closed and not reply.chunks
    assert logs.has("busy", "call=busy-1", "peer=127.0.0.1")
    samples = scrape(o.base)
    assert value(samples, "kokoro_calls_refused_total", reason="busy") == 1
    assert value(samples, "kokoro_calls_started_total") == 2
    assert value(samples, "kokoro_ready") == 0

    # The admitted calls were not touched, and a freed place admits the next call.
    for conn in held:
        conn.bye()
        assert conn.read_until_end(timeout=30).chunks
        conn.close()
    assert wait_for(lambda: o.server.active_calls == 0)
    assert o.get("/readyz")[0] == 200
    assert speak(host, port, "after", [SENTENCE]).chunks


def test_readiness_says_draining_and_http_honours_allow(ops: Callable[..., Ops]) -> None:
    o = ops()
    o.lifecycle.drain()
    status, body = o.get("/readyz")
    assert status == 503 and "draining" in body["reason"]
    assert o.get("/healthz")[0] == 200

    settings = Settings(allow=parse_networks("10.0.0.0/8"))
    app = http_app(o.server, o.lifecycle, settings)
    http = HttpServer(app, "127.0.0.1", 0)
    http.start()
    try:
        host, port = http.address
        assert http_get(f"http://{host}:{port}", "/metrics")[0] == 403
    finally:
        http.stop()


def test_http_port_in_use_fails_start_up() -> None:
    from kokoro_service.errors import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        http = HttpServer(create_app(*_dummy(), LocalCallsSlot()), "127.0.0.1", port)
        with pytest.raises(StartupError, match="HTTP port"):
            http.start()


def _dummy() -> tuple[Any, Lifecycle, Settings]:
    from kokoro_service.ops.metrics import Metrics

    return Metrics(), Lifecycle(), Settings()


# ------------------------------------------------------------------------------ TLS


@dataclass
class Pki:
    """A throwaway CA, this instance's certificate, and a client's, as PEM files."""

    ca: trustme.CA
    ca_pem: Path
    cert: Path
    client: trustme.LeafCert

    def client_context(self, *, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        if cert is not None:
            cert.configure_cert(ctx)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    # One file with key and chain serves as --tls-cert and --tls-key both.
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(root / "daemon.pem")
    )
    return Pki(ca, root / "ca.pem", root / "daemon.pem", ca.issue_cert("llm.example"))


def refused(host: str, port: int, ctx: ssl.SSLContext | None) -> bool:
    """Whether a call over ``ctx`` (None: plaintext) gets no audio and no END."""
    try:
        reply = speak(host, port, "77", [SENTENCE], timeout=20, tls=ctx)
    except (ssl.SSLError, OSError):
        return True
    return not reply.ended and not reply.chunks


def test_tls_text_port_serves_its_clients_and_refuses_the_rest(
    daemon: DaemonFactory, pki: Pki, logs: LogCapture, tmp_path: Path
) -> None:
    server = daemon(tls_cert=pki.cert, tls_key=pki.cert, tls_client_ca=pki.ca_pem)
    host, port = server.tcp_address
    reply = speak(host, port, "1", [SENTENCE], tls=pki.client_context(cert=pki.client))
    assert reply.ended and reply.chunks
    # The operator's smoke test speaks TLS too.
    client_pem = tmp_path / "client.pem"
    pki.client.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    args = ["send", "--call-id", "3", "--tcp-port", str(port), "-o", str(tmp_path / "o.wav")]
    args += ["--tls-ca", str(pki.ca_pem), "--tls-cert", str(client_pem), SENTENCE]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "END received" in result.output, result.output

    # Refusals are logged at most every few seconds per address, so each reason checked
    # in the log gets an instance of its own.
    assert refused(host, port, None)  # plaintext on the TLS port
    assert logs.wait("TLS handshake failed", "not TLS")
    other = trustme.CA().issue_cert("llm.example")
    assert refused(host, port, pki.client_context(cert=other))  # from another CA
    # The client may see its refusal before the daemon's reader has counted it.
    tls_refusals = server.metrics.registry.get_sample_value
    assert wait_for(lambda: tls_refusals("kokoro_calls_refused_total", {"reason": "tls"}) == 2)
    assert server.calls.opened == 2

    second = daemon(tls_cert=pki.cert, tls_key=pki.cert, tls_client_ca=pki.ca_pem)
    assert refused(*second.tcp_address, pki.client_context())  # no client certificate
    assert logs.wait("TLS handshake failed", "certificate", "presented none")
    assert second.calls.opened == 0


def test_a_tls_client_on_the_plaintext_port_is_refused_with_a_reason(
    daemon: DaemonFactory, pki: Pki, logs: LogCapture
) -> None:
    server = daemon()
    assert refused(*server.tcp_address, pki.client_context(cert=pki.client))
    assert logs.wait("began a TLS handshake", "plaintext")
    assert server.calls.opened == 0


def test_sink_connections_use_tls_and_an_untrusted_sink_falls_back(
    daemon: DaemonFactory, pki: Pki
) -> None:
    base = free_port_base()
    server = daemon(
        tls_cert=pki.cert,
        tls_key=pki.cert,
        tls_sink_ca=pki.ca_pem,
        sink_port_base=base,
        sink_connect_attempts=1,
    )
    sink_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("127.0.0.1").configure_cert(sink_ctx)
    pki.ca.configure_trust(sink_ctx)
    sink_ctx.verify_mode = ssl.CERT_REQUIRED  # the daemon presents its own certificate
    stranger = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(stranger)
    good, bad = FakeSink(base + 11, tls=sink_ctx), FakeSink(base + 12, tls=stranger)
    try:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for k in ("11", "12"):
            udp.sendto(f"REGISTER:{k}".encode(), server.udp_address)
        udp.close()
        assert wait_for(lambda: len(server.registry) == 2)
        host, port = server.tcp_address
        tls = pki.client_context()
        to_sink = speak(host, port, "11", [SENTENCE], tls=tls)
        assert to_sink.ended and not to_sink.chunks
        assert good.wait_end(), good.tls_errors
        assert good.call_ids == ["11"] and not good.tls_errors
        assert [f for f in good.frames if isinstance(f, Audio)]
        fallback = speak(host, port, "12", [SENTENCE], tls=tls)
        assert fallback.ended and fallback.chunks  # the sink was not trusted: on text
        assert not bad.frames
        assert server.metrics.registry.get_sample_value("kokoro_sink_failures_total") == 1
    finally:
        good.close()
        bad.close()


def test_the_http_port_speaks_https_with_the_daemons_certificate(
    ops: Callable[..., Ops], pki: Pki
) -> None:
    o = ops()
    app = http_app(o.server, o.lifecycle)
    http = HttpServer(app, "127.0.0.1", 0, tls=(pki.cert, pki.cert))
    http.start()
    try:
        host, port = http.address
        ctx = pki.client_context()
        with urllib.request.urlopen(f"https://{host}:{port}/healthz", context=ctx) as resp:
            assert resp.status == 200
        with pytest.raises(OSError):  # plain HTTP on the HTTPS port: closed unanswered
            urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5)
    finally:
        http.stop()
    # Beyond loopback the speech API needs TLS or a key; with either it is on.
    assert speech_gate(Settings(http_host="0.0.0.0"))("10.0.0.1") is not None
    tls = Settings(http_host="0.0.0.0", tls_cert=pki.cert, tls_key=pki.cert)
    assert speech_gate(tls)("10.0.0.1") is None
    assert speech_gate(Settings(http_host="0.0.0.0", api_key="k"))("10.0.0.1") is None


def test_beyond_loopback_without_tls_warns(
    daemon: DaemonFactory, pki: Pki, logs: LogCapture
) -> None:
    daemon(host="0.0.0.0")
    assert logs.has("beyond loopback, without TLS")
    logs.lines.clear()
    daemon(host="0.0.0.0", tls_cert=pki.cert, tls_key=pki.cert)
    assert not logs.has("without TLS") and logs.has("over TLS")


# ------------------------------------------------------------------------------ admission

REPLY = (
    "Thanks for calling Acme Dental, this is Sarah. I can see your appointment on Tuesday "
    "afternoon with Doctor Patel, and I can move it if you need to."
)
# The synthesis speed the admission test sets: one worker's seconds per second of speech,
# so that its workers keep WORKERS / METERED_RTF calls speaking in real time, whatever
# else the host runs.
METERED_RTF = 0.5
WORKERS = 2
SPOKEN_CHARS_PER_SECOND = 15.0  # about a person's rate


class MeteredEngine:
    """The test engine (voices, languages, threads), with synthesis at a set speed.

    Speech is a quiet tone as long as the text takes to say, and each batch takes
    METERED_RTF times its speech in a sleep, which costs no CPU: so the capacity a test
    sets is the capacity the daemon has, on a fast host or on one whose cores other work
    takes, where a real model's speed (and so its capacity) follows the other work.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def synthesize_batch(self, requests: list[Request]) -> list[Synthesis | Exception]:
        started = time.perf_counter()
        spoken = [len(r.text) / SPOKEN_CHARS_PER_SECOND / r.speed for r in requests]
        time.sleep(METERED_RTF * sum(spoken))
        seconds = (time.perf_counter() - started) / len(requests)
        tone = 0.1 * np.sin(0.05 * np.arange(round(max(spoken) * SAMPLE_RATE)))
        audio = tone.astype(np.float32)
        return [Synthesis(audio[: round(s * SAMPLE_RATE)].copy(), seconds, "") for s in spoken]


def overload(server: Server, callers: int) -> list[tuple[float, Any]]:
    """``callers`` calls arrive together, each says REPLY and BYE; (TEXT sent, reply)."""
    host, port = server.tcp_address
    barrier = threading.Barrier(callers)
    results: list[tuple[float, Any]] = [(0.0, None)] * callers

    def call(i: int) -> None:
        with Connection(host, port, timeout=120) as conn:
            barrier.wait()
            conn.hello(f"load-{i}")
            sent = time.monotonic()
            conn.text(REPLY)
            conn.bye()
            results[i] = (sent, conn.read_until_end(timeout=120))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def client_stalls(sent: float, reply: Any) -> int:
    seconds = [len(c.samples) / reply.format.width / reply.format.rate for c in reply.chunks]
    return playback(sent, reply.arrivals, seconds).stalls


def test_admitted_calls_keep_real_time_at_a_load_that_stalls_without_the_limit(
    daemon: DaemonFactory, engine: Engine, logs: LogCapture
) -> None:
    """Workers that keep 4 calls speaking in real time (a set speed, not the host's),
    --max-calls 2, and 8 calls at once: with the limit, exactly 2 calls are served and
    never stall, and the rest are refused at once; without it, the same load stalls."""
    capacity = WORKERS / METERED_RTF
    # Unset, --max-calls follows the warm-up's capacity estimate, with a share in hand.
    settings = Settings(workers=WORKERS)
    by_default = Server(settings, engine, voice="af_sky", capacity=capacity)
    assert by_default.calls.max_calls == settings.admission_limit(capacity)
    limit = 2  # half the capacity: well within it, as the default is meant to be
    callers = round(2 * capacity)  # twice what the workers can keep speaking
    metered = cast(Engine, MeteredEngine(engine))
    # The daemon's default segmenter, which sizes segments by the measured speed.
    limited = daemon(engine=metered, workers=WORKERS, max_calls=limit, segment_growth=2.0)
    assert limited.calls.max_calls == limit
    results = overload(limited, callers)
    admitted = [(sent, r) for sent, r in results if r.chunks]
    assert len(admitted) == limit, f"{len(admitted)} admitted, limit {limit}"
    assert all(r.ended and r.closed for _, r in results)
    assert [client_stalls(sent, r) for sent, r in admitted] == [0] * limit
    assert limited.metrics.registry.get_sample_value("kokoro_stall_seconds_count") == 0
    refused = limited.metrics.registry.get_sample_value(
        "kokoro_calls_refused_total", {"reason": "busy"}
    )
    assert refused == callers - limit
    assert logs.has("busy", f"max_calls={limit}")

    unlimited = daemon(engine=metered, workers=WORKERS, max_calls=0, segment_growth=2.0)
    assert unlimited.calls.max_calls is None
    results = overload(unlimited, callers)
    assert all(r.ended and r.chunks for _, r in results)
    stalls = sum(client_stalls(sent, r) for sent, r in results)
    heard = unlimited.metrics.registry.get_sample_value("kokoro_stall_seconds_count")
    print(
        f"capacity {capacity:g}, limit {limit}, {callers} callers: {stalls} stalls heard by "
        f"clients, {heard} counted by the daemon without the limit"
    )
    assert stalls > 0 and heard is not None and heard > 0


# ------------------------------------------------------------------------------ fleet


def test_a_fleet_of_three_routes_each_calls_audio_to_its_sink_exactly_once(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Three daemons (processes) on loopback share the audio processors' port range.
    Each processor registers its call with every instance; the LLM side spreads the calls
    over the instances; only the instance holding a call sends its audio, and every
    instance forgets the registrations it never used after the time to live."""
    base = free_port_base()
    ttl = 2.0
    args = [
        f"--model-dir={tiny_dir}",
        "--no-warmup",
        "--precision=fp32",
        "--torch-threads=1",
        f"--sink-port-base={base}",
        f"--registration-ttl={ttl}",
        "--http-port=0",
    ]
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
    fleet = [Daemon(args, tmp_path, "info", workdir=tmp_path / f"d{i}") for i in range(3)]
    starters = [threading.Thread(target=d.start) for d in fleet]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    calls = [str(k) for k in range(1, 7)]
    sinks = {k: FakeSink(base + int(k)) for k in calls}
    try:
        assert all(d.info for d in fleet), "a daemon did not start"
        https = [f"http://{d.info['http']['host']}:{d.info['http']['port']}" for d in fleet]
        for url in https:
            assert http_get(url, "/readyz")[0] == 200
            build = value(scrape(url), "kokoro_build_info")
            assert build == 1
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for k in calls:
            for d in fleet:
                udp.sendto(f"REGISTER:{k}".encode(), ("127.0.0.1", d.info["udp"]["port"]))
        assert wait_for(
            lambda: all(value(scrape(u), "kokoro_registrations") == len(calls) for u in https),
            timeout=10,
        )
        replies: dict[str, Any] = {}

        def call(k: str) -> None:
            d = fleet[int(k) % 3]
            replies[k] = speak(d.host, d.port, k, [SENTENCE], timeout=60)

        callers = [threading.Thread(target=call, args=(k,)) for k in calls]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        for k in calls:
            reply, sink = replies[k], sinks[k]
            assert reply.ended and not reply.chunks, f"call {k}: audio came back on text"
            assert sink.wait_end(), f"call {k}: no END at its sink"
            assert sink.connections == 1 and sink.call_ids == [k], (k, sink.call_ids)
            chunks = [f.chunk_id for f in sink.frames if isinstance(f, Audio)]
            assert chunks == list(range(1, len(chunks) + 1)) and chunks, (k, chunks)
            assert sum(isinstance(f, End) for f in sink.frames) == 1
        started = [value(scrape(u), "kokoro_calls_started_total") for u in https]
        assert started == [2, 2, 2]

        # No BYE came: every instance forgets every registration after the time to live
        # (the holder counts from its call's end), and a stranger's too.
        for d in fleet:
            udp.sendto(b"REGISTER:99", ("127.0.0.1", d.info["udp"]["port"]))
        time.sleep(ttl)
        assert wait_for(
            lambda: all(value(scrape(u), "kokoro_registrations") == 0 for u in https),
            timeout=10,
        )

        def expired(url: str) -> float:
            return value(scrape(url), "kokoro_registrations_expired_total")

        # Counted a moment after the entries go.
        want = len(calls) + 1
        assert wait_for(lambda: all(expired(u) == want for u in https), timeout=5)
        udp.close()
    finally:
        for sink in sinks.values():
            sink.close()
        codes = [d.stop() for d in fleet]
    assert codes == [0, 0, 0]
