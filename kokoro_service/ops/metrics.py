"""What an operator watches: the daemon's Prometheus metrics, in a registry of its own.

Events (a call started or ended, a segment synthesized, a stall) are counted where they
happen, by the call lifecycle and the workers.  Levels (calls active, queue depths, the
capacity estimate, readiness) are read from the running server at each scrape, so they
are never stale and cost nothing between scrapes.

Label values are bounded sets (reasons, stages): a call_id is never a label, so the
number of series does not grow with traffic.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kokoro_service.ops.readiness import Lifecycle

# Why a call ended, from the free-text reason the call lifecycle logs: first match wins.
END_REASONS: tuple[tuple[str, str], ...] = (
    ("BYE", "bye"),
    ("closed", "closed"),
    ("read failed", "closed"),
    ("protocol error", "protocol_error"),
    ("no HELLO", "timeout"),
    ("frame incomplete", "timeout"),
    ("idle for", "timeout"),
    ("daemon", "shutdown"),
    ("no destination", "no_destination"),
    ("internal error", "error"),
)
REFUSALS = ("busy", "duplicate_call_id", "max_connections", "not_allowed", "resources", "tls")

_TTFA_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_SYNTH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_RTF_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_STALL_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def end_reason_label(reason: str) -> str:
    """The bounded label for a call's end reason ("BYE", "idle for 600s", ...)."""
    for prefix, label in END_REASONS:
        if reason.startswith(prefix):
            return label
    return "other"


class Metrics:
    """The daemon's metrics: event counters and histograms, and the scrape-time levels.

    Responsibilities: own a private registry (several daemons in one process, as in the
    tests, never share series); give the call lifecycle and workers one method per
    event; read the live levels from :class:`~kokoro_service.ops.readiness.Lifecycle` at
    each scrape.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls_started = Counter(
            "kokoro_calls_started", "Calls admitted (a HELLO that opened a call).", registry=r
        )
        self.calls_ended = Counter(
            "kokoro_calls_ended", "Calls ended, by why their input closed.", ["reason"], registry=r
        )
        self.calls_refused = Counter(
            "kokoro_calls_refused",
            "Connections or calls turned away: busy (--max-calls), duplicate_call_id, "
            "max_connections, not_allowed (--allow), tls (handshake failed).",
            ["reason"],
            registry=r,
        )
        self.ttfa = Histogram(
            "kokoro_ttfa_seconds",
            "Time to first audio: a reply's first TEXT to its first AUDIO frame handed to "
            "the call's writer.",
            buckets=_TTFA_BUCKETS,
            registry=r,
        )
        self.synthesis = Histogram(
            "kokoro_segment_synthesis_seconds",
            "Seconds to synthesize one segment (its share of a batch).",
            buckets=_SYNTH_BUCKETS,
            registry=r,
        )
        self.rtf = Histogram(
            "kokoro_segment_rtf",
            "Real-time factor of each segment: synthesis seconds per second of audio.",
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.audio = Counter(
            "kokoro_audio_seconds", "Seconds of speech handed to writers.", registry=r
        )
        self.stalls = Histogram(
            "kokoro_stall_seconds",
            "Stalls: an AUDIO frame handed over after its listener would have played out "
            "everything before it; observed value is the silence heard.",
            buckets=_STALL_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "kokoro_batch_size",
            "Segments synthesized together in one forward pass.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.sink_failures = Counter(
            "kokoro_sink_failures",
            "Audio-processor connections that failed (their audio moved to the text connection).",
            registry=r,
        )
        self.registrations_expired = Counter(
            "kokoro_registrations_expired",
            "Registrations forgotten after --registration-ttl without their call.",
            registry=r,
        )
        self.build = Info(
            "kokoro_build",
            "What serves: version, model source, device, precision and engine path.",
            registry=r,
        )
        for label in REFUSALS:  # exported at 0 from the start, so rate() sees the first one
            self.calls_refused.labels(label)
        self.live = _Live()
        r.register(self.live)

    def describe(
        self, *, model_source: str, device: str, precision: str, max_batch: int, voice: str
    ) -> None:
        """Set the info labels once the engine is loaded."""
        try:
            version = importlib.metadata.version("kokoro-service")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        self.build.info(
            {
                "version": version,
                "model_source": model_source,
                "device": device,
                "precision": precision,
                "engine_path": "batched" if max_batch > 1 else "sequential",
                "voice": voice,
            }
        )

    def call_ended(self, reason: str) -> None:
        self.calls_ended.labels(end_reason_label(reason)).inc()

    def refused(self, reason: str) -> None:
        self.calls_refused.labels(reason).inc()

    def segment(self, synth_seconds: float, audio_seconds: float) -> None:
        self.synthesis.observe(synth_seconds)
        self.audio.inc(audio_seconds)
        if audio_seconds > 0:
            self.rtf.observe(synth_seconds / audio_seconds)


class _Live(Collector):
    """The levels, read from the lifecycle at each scrape (nothing while it is unset)."""

    def __init__(self) -> None:
        self.lifecycle: Lifecycle | None = None

    def collect(self) -> Iterator[Metric]:
        life = self.lifecycle
        if life is None:
            return
        ready, _ = life.readiness()
        yield _gauge("kokoro_ready", "1 when /readyz answers 200.", float(ready))
        yield _gauge("kokoro_draining", "1 while the daemon drains to stop.", float(life.draining))
        if life.status is None:
            return
        now = life.status()
        yield _gauge("kokoro_calls_active", "Calls open now.", now.active_calls)
        yield _gauge(
            "kokoro_max_calls",
            "The admission limit (--max-calls); 0: none.",
            float(now.max_calls or 0),
        )
        if life.capacity is not None:
            yield _gauge(
                "kokoro_capacity_calls",
                "Calls the workers keep speaking at once in real time, from the start-up "
                "warm-up: workers / RTF.",
                life.capacity,
            )
        if now.worker_rtf is not None:
            yield _gauge(
                "kokoro_worker_rtf",
                "One worker's real-time factor, moving average.",
                now.worker_rtf,
            )
        depth = GaugeMetricFamily(
            "kokoro_queue_depth",
            "Work waiting at each stage: segments cut and waiting for a worker, segments "
            "being synthesized, AUDIO frames queued for their writers.",
            labels=["stage"],
        )
        depth.add_metric(["segments"], now.segments_waiting)
        depth.add_metric(["synthesizing"], now.segments_synthesizing)
        depth.add_metric(["frames"], now.frames_queued)
        yield depth
        yield _gauge("kokoro_registrations", "UDP registrations remembered.", now.registrations)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
