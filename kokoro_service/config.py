"""The daemon's settings: one frozen dataclass, the single source of truth for every knob.

Each field that an operator may set carries its CLI help, its range and its choices in
the field's metadata (:func:`knob`).  ``kokoro-service serve`` derives its options and
their ``KOKORO_*`` variables from these fields, and :meth:`Settings.__post_init__` checks
every range once, here, for the CLI, the tests and the benchmarks alike.

Nothing here imports torch: ``--help`` and option errors must stay instant.

Over 400 lines: one field per option, each with its help, bounds and checks, so that
every option is defined once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kokoro_service.errors import ConfigError
from kokoro_service.synthesis.devices import DEVICES, PRECISIONS
from kokoro_service.text.segmenter import SegmenterConfig
from kokoro_service.wire.codec import CONTROL_FLAG, CONTROL_SPEED_RANGE, DEFAULT_MAX_TEXT_BYTES

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_ONLY = ("127.0.0.0/8", "::1/128")
LOG_LEVELS = ("debug", "info", "warning", "error")
BATCH_POLICIES = ("latency", "fill")
ENV_PREFIX = "KOKORO_"
_DEVICE = re.compile(rf"\s*({'|'.join(DEVICES)})(:[0-9]+)?\s*", re.IGNORECASE)
# How often blocked loops (readers, accept, registrar, idle workers) look at the stop flag
# and their deadlines.
TICK = 0.25
# Descriptors one connection can hold at most (Settings.descriptors_needed).
DESCRIPTORS_PER_CONNECTION = 4
# The share of the warm-up's capacity estimate that --max-calls admits by default.
ADMISSION_HEADROOM = 0.75


def default_cache_dir() -> Path:
    """Where the embedded model import is cached: systemd's CacheDirectory, else XDG."""
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "kokoro-service"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """``"127.0.0.0/8, ::1/128"`` → networks; every item must parse."""
    nets = []
    for item in value.replace(",", " ").split():
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{item!r} is not an address or CIDR ({exc})", "allow") from None
    if not nets:
        raise ConfigError("must name at least one address or CIDR", "allow")
    return tuple(nets)


VoiceAlias = tuple[str, str]
_ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_voice_aliases(value: str) -> tuple[VoiceAlias, ...]:
    """``"alloy=af_alloy,sage=af_sky:0.7,af_bella:0.3"`` → ``(("alloy", "af_alloy"),
    ("sage", "af_sky:0.7,af_bella:0.3"))``.

    A comma-separated item without ``=`` continues the blend of the alias before it, so a
    blend needs no quoting of its own.  Whether each target can be spoken is checked once
    the model is loaded.
    """
    aliases: list[list[str]] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, eq, target = item.partition("=")
        if not eq:
            if not aliases:
                raise ConfigError(f"{item!r} must follow NAME=", "voice_alias")
            aliases[-1][1] += "," + item
            continue
        name, target = name.strip(), target.strip()
        if not _ALIAS_NAME.fullmatch(name):
            raise ConfigError(
                f"alias {name!r} must be 1-64 letters, digits, '_', '.' or '-'", "voice_alias"
            )
        if not target:
            raise ConfigError(f"alias {name!r} names no voice", "voice_alias")
        if any(name == have for have, _ in aliases):
            raise ConfigError(f"alias {name!r} is given twice", "voice_alias")
        aliases.append([name, target])
    return tuple((name, target) for name, target in aliases)


def knob(
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
    directory: bool = False,
) -> Any:
    """A field that ``serve`` exposes as ``--name`` and ``KOKORO_NAME``.

    ``lo``/``hi`` bound numbers (inclusive), ``choices`` bounds strings, ``shown`` replaces
    the default in ``--help`` where the real default is computed at start-up, and
    ``directory`` marks a path that must not name a file.
    """
    meta = {
        "help": help,
        "lo": lo,
        "hi": hi,
        "choices": choices,
        "shown": shown,
        "directory": directory,
    }
    if callable(default):
        return field(default_factory=default, metadata={"cli": meta})
    return field(default=default, metadata={"cli": meta})


def range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{lo:g}..{hi:g}"
    return f"at least {lo:g}" if lo is not None else f"at most {hi:g}"


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the daemon, with the documented defaults.

    Fields made with :func:`knob` are operator settings; the few plain fields are for
    embedding and tests.
    """

    host: str = knob("127.0.0.1", "Address to bind (TCP and UDP); beyond loopback is warned.")
    tcp_port: int = knob(8090, "TCP port for text connections (0: any free port).", lo=0, hi=65535)
    udp_port: int = knob(13001, "UDP port for REGISTER/BYE datagrams.", lo=0, hi=65535)
    wyoming_port: int | None = knob(
        None,
        "TCP port of the Wyoming text-to-speech server, for Home Assistant and other "
        "Wyoming clients (0: any free port).",
        lo=0,
        hi=65535,
        shown="off",
    )
    http_port: int | None = knob(
        None,
        "HTTP port for /metrics (Prometheus), /healthz, /readyz and the OpenAI-style "
        "speech API under /v1 (0: any free port).",
        lo=0,
        hi=65535,
        shown="off",
    )
    http_host: str = knob(
        "127.0.0.1", "Address the HTTP port binds; its clients must be in --allow too."
    )
    api_key: str | None = knob(
        None,
        "Bearer token the OpenAI-style speech API on the HTTP port requires "
        "(Authorization: Bearer KEY); prefer the variable to the option, which ps shows.",
        shown="none",
    )
    sink_host: str = knob(
        "127.0.0.1", "Host of the audio processors (never taken from a datagram)."
    )
    sink_port_base: int = knob(
        9002, "Registered call N is sent to sink-host:(base + N).", lo=1, hi=65535
    )
    voice: str | None = knob(
        None,
        "Default voice or blend, e.g. af_sky or 'af_sky:0.7,af_bella:0.3'. Unset: af_sky, "
        "or a logged substitute where the model lacks it.",
        shown="af_sky",
    )
    voice_alias: tuple[VoiceAlias, ...] = knob(
        tuple,
        "Names the OpenAI-style API accepts for voices, as NAME=VOICE pairs, e.g. "
        "'alloy=af_alloy,nova=af_sky:0.6,af_nova:0.4'. They add to, or replace, the "
        "built-in aliases of OpenAI's voice names (docs/integrations/openai.md).",
        shown="OpenAI's voice names",
    )
    lang: str = knob("a", "Default Kokoro language code.")
    speed: float = knob(
        1.0, "Default speaking rate.", lo=CONTROL_SPEED_RANGE[0], hi=CONTROL_SPEED_RANGE[1]
    )
    phone_text: bool = knob(
        True,
        "American English: say phone numbers, codes, addresses, e-mail, URLs, dates, times and "
        "money as a person reads them out, before G2P.",
    )
    lexicon: Path | None = knob(
        None,
        "English: a file of 'word phonemes' lines, for names G2P says wrong (docs/behaviour.md).",
    )
    device: str = knob(
        "auto", "auto, cpu, cuda, cuda:N or mps. A named device that is missing fails start-up."
    )
    precision: str = knob(
        "auto",
        "Vocoder arithmetic: fp32; bf16 (needs bf16 instructions: AVX512-BF16/AMX, or a "
        "bf16 GPU); auto: bf16 where the warm-up measures it faster and it passes the "
        "start-up quality check, else fp32. A named precision the host lacks fails start-up.",
        choices=PRECISIONS,
    )
    model_dir: Path | None = knob(
        None,
        "Kokoro checkout (config.json, *.pth, voices/*.pt), loaded offline. Unset: hub "
        "weights already cached, else the embedded int8 import.",
        directory=True,
    )
    cache_dir: Path = knob(
        default_cache_dir,
        "Where the embedded import is cached.",
        shown="$CACHE_DIRECTORY or ~/.cache/kokoro-service",
        directory=True,
    )
    max_text_bytes: int = knob(
        DEFAULT_MAX_TEXT_BYTES,
        "Largest TEXT frame accepted; a larger one closes the connection.",
        lo=1,
        hi=CONTROL_FLAG - 1,  # a TEXT length with the top bit set is a CONTROL header
    )
    workers: int = knob(1, "Synthesis worker threads.", lo=1, hi=64)
    torch_threads: int | None = knob(
        None,
        "torch intra-op threads per worker.",
        lo=1,
        hi=256,
        shown="on the CPU, the usable cores divided by --workers; elsewhere torch's choice",
    )
    max_batch: int | None = knob(
        None,
        "Segments of different calls synthesized together in one forward pass.",
        lo=1,
        hi=512,
        shown="1 on the CPU and MPS (batching measured no faster there), 64 on CUDA",
    )
    g2p_processes: int = knob(
        0,
        "Processes for G2P started ahead (batched serving), off the daemon's GIL; 0: one "
        "thread in the daemon.",
        lo=0,
        hi=64,
    )
    g2p_batch: int = knob(
        16,
        "English segments waiting for G2P together that spaCy tags in one pass (batched "
        "serving); 1: each alone.",
        lo=1,
        hi=64,
    )
    overlap_delivery: bool = knob(
        False,
        "Hand a batch's audio to the calls in a thread of its own, so that the next batch "
        "forms and starts while it is delivered (batched serving).",
    )
    batch_policy: str = knob(
        "latency",
        "How batches form: latency cuts a batch where its predicted time passes twice a "
        "lone segment's, unless a call would stall; fill fills it to --max-batch.",
        choices=BATCH_POLICIES,
    )
    batch_chars: int = knob(
        4000,
        "Largest batch, as its size times its longest segment in characters.",
        lo=1,
    )
    max_connections: int = knob(
        256, "Text connections served at once; more are refused.", lo=1, hi=100_000
    )
    max_http_connections: int = knob(
        64, "HTTP port connections open at once; more are closed at once.", lo=1, hi=100_000
    )
    max_wyoming_connections: int = knob(
        32, "Wyoming connections open at once; more are closed at once.", lo=1, hi=100_000
    )
    max_calls: int | None = knob(
        None,
        "Calls served at once; a HELLO beyond it gets END at once (busy). 0: no limit.",
        lo=0,
        hi=100_000,
        shown="3/4 of the warm-up's capacity estimate; none without the warm-up",
    )
    max_pending_chars: int = knob(
        200_000, "Unspoken text held per call; TEXT beyond it is refused.", lo=1
    )
    queue_frames: int = knob(
        8, "AUDIO frames queued per destination before its call waits.", lo=1, hi=4096
    )
    max_segment_chars: int = knob(
        200, "Longest segment (one AUDIO frame of speech).", lo=16, hi=2000
    )
    first_segment_words: int = knob(
        8, "First segment of a reply: its first clause, at most this many words.", lo=1, hi=100
    )
    hello_timeout: float = knob(
        10.0,
        "Seconds a new connection has to send HELLO (the HTTP port: its first request; "
        "Wyoming: its first event).",
        lo=0.1,
    )
    idle_timeout: float = knob(
        600.0, "Seconds without any frame (KEEPALIVE counts) before a call is closed.", lo=0.1
    )
    frame_timeout: float = knob(30.0, "Seconds a started frame has to arrive whole.", lo=0.1)
    write_timeout: float = knob(
        30.0, "Seconds a peer may accept no audio before it is dropped as not reading.", lo=0.1
    )
    max_registrations: int = knob(
        10_000, "UDP registrations remembered; beyond it the oldest is forgotten.", lo=1
    )
    registration_ttl: float = knob(
        600.0,
        "Seconds a registration is kept for a call this instance never sees (a fleet's "
        "processors register with every instance); 0: until BYE.",
        lo=0.0,
    )
    sink_connect_attempts: int = knob(
        4,
        "Tries to reach an audio processor before its audio goes back on the text connection.",
        lo=1,
        hi=100,
    )
    sink_connect_backoff: float = knob(
        0.1, "Seconds before the second try; doubled for each further try.", lo=0.001
    )
    flush_timeout: float = knob(
        0.5, "Seconds of silence after which text with no sentence end is spoken anyway.", lo=0.05
    )
    drain_timeout: float = knob(20.0, "On SIGTERM/SIGINT, seconds to finish owed audio.", lo=0.0)
    allow: tuple[IPNetwork, ...] = knob(
        lambda: parse_networks(",".join(LOOPBACK_ONLY)),
        "Comma-separated CIDRs of TCP peers and UDP registrars that are served.",
        shown=",".join(LOOPBACK_ONLY),
    )
    tls_cert: Path | None = knob(
        None,
        "PEM certificate (chain) of this instance: the text port then speaks TLS only "
        "(and the HTTP port HTTPS); it is presented to audio processors dialed over TLS.",
    )
    tls_key: Path | None = knob(None, "PEM private key of --tls-cert.")
    tls_client_ca: Path | None = knob(
        None, "PEM CA bundle: text clients must present a certificate it signed (mutual TLS)."
    )
    tls_sink_ca: Path | None = knob(
        None,
        "PEM CA bundle: audio processors are dialed over TLS, their certificates checked "
        "against it. Unset: sink connections stay plaintext, as seed processors expect.",
    )
    warmup: bool = knob(True, "Synthesize before accepting connections (the start-up self-test).")
    ready_file: Path | None = knob(
        None,
        "JSON file (pid, ports, device, voice, RTF) written once warm and listening, "
        "removed when stopping.",
    )
    log_level: str = knob("info", "Log verbosity.", choices=LOG_LEVELS)
    trace_file: Path | None = knob(
        None,
        "Append one JSON line per synthesized segment (its stages' monotonic times) here, "
        "for benchmarks and tuning.",
    )
    segment_growth: float = 2.0
    """SegmenterConfig.growth: 0 cuts whole sentences (the tests' predictable mode)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            meta = f.metadata.get("cli")
            if meta is None:
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            lo, hi, choices = meta["lo"], meta["hi"], meta["choices"]
            if lo is not None or hi is not None:
                # NaN would pass any comparison-based check (every comparison is false),
                # and an infinite timeout breaks socket.settimeout().
                if not math.isfinite(value):
                    raise ConfigError(f"{value!r} is not a finite number", f.name)
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    raise ConfigError(f"{value!r} is not in {range_text(lo, hi)}", f.name)
            if choices is not None and value not in choices:
                raise ConfigError(f"{value!r} is not one of {', '.join(choices)}", f.name)
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(
                f"{self.device!r} is not one of auto, cpu, cuda, cuda:N, mps", "device"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together", "tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("needs --tls-cert and --tls-key", "tls_client_ca")
        if not self.lang.strip():
            raise ConfigError("must not be empty", "lang")
        try:
            self.segmenter  # noqa: B018 - builds and so validates the segmenter's settings
        except ValueError as exc:
            raise ConfigError(str(exc), "segment_growth") from None

    @property
    def segmenter(self) -> SegmenterConfig:
        return SegmenterConfig(
            max_chars=self.max_segment_chars,
            first_max_words=self.first_segment_words,
            max_word_chars=min(80, self.max_segment_chars),
            growth=self.segment_growth,
        )

    def batch_limit(self, device: str) -> int:
        """``--max-batch``, or its default for ``device``: batching pays on a GPU, whose
        one-segment passes leave it mostly idle; on the CPU it measured slower."""
        if self.max_batch is not None:
            return self.max_batch
        return 64 if device.strip().lower().startswith("cuda") else 1

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def admission_limit(self, capacity: float | None) -> int | None:
        """``--max-calls``, or its default from the warm-up's capacity; None: no limit.

        The default keeps a quarter in hand: the warm-up's workers/RTF assumes every
        segment is as efficient as its own, while real replies start with short first
        clauses, and the density benchmark saw its first stall at 3 calls on a host it
        estimated at 3.97 (benchmarks/results/vm-2026-11-27-density-cpu.json).
        """
        if self.max_calls is not None:
            return self.max_calls or None
        if capacity is None:
            return None
        return max(1, math.floor(capacity * ADMISSION_HEADROOM))

    def descriptors_needed(self) -> int:
        """Descriptors the connection caps can take at once, with the daemon's own.

        A text call holds its connection, the writer's duplicate and a sink with one
        more closing (4); an HTTP or Wyoming request holds its client, a socket pair to
        its call and the call's duplicate (4).  The rest is the model, logs, listening
        sockets and libraries (measured about 60 after start-up; 128 in hand).
        """
        per_port = self.max_connections
        if self.wyoming_port is not None:
            per_port += self.max_wyoming_connections
        if self.http_port is not None:
            per_port += self.max_http_connections
        return 128 + DESCRIPTORS_PER_CONNECTION * per_port

    def peer_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.allow)


def cli_fields() -> list[dataclasses.Field[Any]]:
    """The fields ``serve`` exposes, in declaration order."""
    return [f for f in dataclasses.fields(Settings) if "cli" in f.metadata]
