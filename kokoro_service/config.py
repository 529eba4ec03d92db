"""The daemon's settings: one frozen dataclass, validated once, read by everything below the CLI."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .protocol import CONTROL_SPEED_RANGE, DEFAULT_MAX_TEXT_BYTES
from .segmenter import SegmenterConfig

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_ONLY = ("127.0.0.0/8", "::1/128")
LOG_LEVELS = ("debug", "info", "warning", "error")


def default_cache_dir() -> Path:
    """Where the embedded model import is cached: systemd's CacheDirectory, else XDG."""
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "kokoro-service"


def parse_networks(values: tuple[str, ...] | list[str]) -> tuple[IPNetwork, ...]:
    nets = []
    for raw in values:
        for item in raw.replace(",", " ").split():
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ConfigError(f"--allow: {item!r} is not an address or CIDR ({exc})") from None
    if not nets:
        raise ConfigError("--allow must name at least one address or CIDR")
    return tuple(nets)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the daemon, with the documented defaults."""

    host: str = "127.0.0.1"
    tcp_port: int = 8090
    udp_port: int = 13001
    sink_host: str = "127.0.0.1"
    sink_port_base: int = 9002
    voice: str | None = None
    """None means the built-in default (af_sky) and permits a logged substitute."""
    lang: str = "a"
    speed: float = 1.0
    device: str = "auto"
    model_dir: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    workers: int = 1
    torch_threads: int | None = None
    max_connections: int = 256
    max_pending_chars: int = 200_000
    queue_frames: int = 8
    max_registrations: int = 10_000
    hello_timeout: float = 10.0
    idle_timeout: float = 600.0
    frame_timeout: float = 30.0
    write_timeout: float = 30.0
    flush_timeout: float = 0.5
    """Text without a closing boundary is spoken after this much silence from the LLM."""
    sink_connect_attempts: int = 4
    sink_connect_backoff: float = 0.1
    drain_timeout: float = 20.0
    allow: tuple[IPNetwork, ...] = field(default_factory=lambda: parse_networks(LOOPBACK_ONLY))
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    warmup: bool = True
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("tcp_port", "udp_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be 0..65535, got {port}")
        if not 1 <= self.sink_port_base <= 65535:
            raise ConfigError(f"sink_port_base must be 1..65535, got {self.sink_port_base}")
        lo, hi = CONTROL_SPEED_RANGE
        if not lo <= self.speed <= hi:
            raise ConfigError(f"speed must be {lo}..{hi}, got {self.speed}")
        if not 1 <= self.max_text_bytes <= 0x7FFF_FFFF:
            raise ConfigError(f"max_text_bytes must be 1..{0x7FFF_FFFF}, got {self.max_text_bytes}")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be 1..64, got {self.workers}")
        if self.torch_threads is not None and not 1 <= self.torch_threads <= 256:
            raise ConfigError(f"torch_threads must be 1..256, got {self.torch_threads}")
        for name in ("max_connections", "max_pending_chars", "queue_frames", "max_registrations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "hello_timeout",
            "idle_timeout",
            "frame_timeout",
            "write_timeout",
            "flush_timeout",
            "drain_timeout",
            "sink_connect_backoff",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.sink_connect_attempts < 1:
            raise ConfigError("sink_connect_attempts must be at least 1")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if not self.lang.strip():
            raise ConfigError("lang must not be empty")

    def peer_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.allow)
