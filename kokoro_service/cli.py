"""Command line: ``kokoro-service serve|say|send|voices|download|make-checkpoint``.

The only module that reads options and the environment: everything it learns goes into
a frozen :class:`~kokoro_service.config.Settings` (or plain arguments) and down from there.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .config import LOG_LEVELS, LOOPBACK_ONLY, Settings, default_cache_dir, parse_networks
from .errors import ConfigError, KokoroServiceError
from .segmenter import SegmenterConfig
from .server import EXIT_FORCED, EXIT_STARTUP

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _port(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 65535:
        raise click.BadParameter(f"{value} is not a port (0..65535)")
    return value


def _env_common() -> None:
    # MPS lacks a few kernels kokoro uses; without the fallback they raise instead of
    # running on the CPU.  torch reads this when MPS first initialises.
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    # Never let a library reach for the hub at run time; `download` lifts this explicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="kokoro-service")
def main() -> None:
    """Streaming Kokoro-82M text-to-speech daemon for telephony voice agents."""


def _opt(*names: str, env: str, **kw: Any) -> Any:
    return click.option(*names, envvar=env, show_envvar=True, show_default=True, **kw)


@main.command(context_settings=CONTEXT)
@_opt("--host", env="KOKORO_HOST", default="127.0.0.1", help="Address to bind (TCP and UDP).")
@_opt(
    "--tcp-port",
    env="KOKORO_TCP_PORT",
    default=8090,
    type=int,
    callback=_port,
    help="TCP port for text connections.",
)
@_opt(
    "--udp-port",
    env="KOKORO_UDP_PORT",
    default=13001,
    type=int,
    callback=_port,
    help="UDP port for REGISTER/BYE datagrams.",
)
@_opt(
    "--sink-host",
    env="KOKORO_SINK_HOST",
    default="127.0.0.1",
    help="Host of the audio processors (never taken from a datagram).",
)
@_opt(
    "--sink-port-base",
    env="KOKORO_SINK_PORT_BASE",
    default=9002,
    type=int,
    help="Registered call N is sent to sink-host:(base + N).",
)
@_opt(
    "--voice",
    env="KOKORO_VOICE",
    default=None,
    help="Default voice or blend, e.g. af_sky or 'af_sky:0.7,af_bella:0.3' [default: af_sky].",
)
@_opt("--lang", env="KOKORO_LANG", default="a", help="Default Kokoro language code.")
@_opt(
    "--speed",
    env="KOKORO_SPEED",
    default=1.0,
    type=click.FloatRange(0.5, 2.0),
    help="Default speaking rate.",
)
@_opt(
    "--device",
    env="KOKORO_DEVICE",
    default="auto",
    help="auto, cpu, cuda, cuda:N or mps. A named device that is missing fails start-up.",
)
@_opt(
    "--model-dir",
    env="KOKORO_MODEL_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Kokoro checkout (config.json, *.pth, voices/*.pt), loaded offline. "
    "Without it: hub weights already cached, else the embedded int8 import.",
)
@_opt(
    "--cache-dir",
    env="KOKORO_CACHE_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded import is cached [default: $CACHE_DIRECTORY or "
    "~/.cache/kokoro-service].",
)
@_opt(
    "--max-text-bytes",
    env="KOKORO_MAX_TEXT_BYTES",
    default=65536,
    type=int,
    help="Largest TEXT frame accepted; a larger one closes the connection.",
)
@_opt(
    "--workers",
    env="KOKORO_WORKERS",
    default=1,
    type=click.IntRange(1, 64),
    help="Synthesis worker threads.",
)
@_opt(
    "--torch-threads",
    env="KOKORO_TORCH_THREADS",
    default=None,
    type=click.IntRange(1, 256),
    help="torch intra-op threads per worker [default: on the CPU, the usable cores divided "
    "by --workers; elsewhere torch's choice].",
)
@_opt(
    "--max-connections",
    env="KOKORO_MAX_CONNECTIONS",
    default=256,
    type=click.IntRange(1, 100_000),
    help="Text connections served at once; more are refused.",
)
@_opt(
    "--max-pending-chars",
    env="KOKORO_MAX_PENDING_CHARS",
    default=200_000,
    type=click.IntRange(1),
    help="Unspoken text held per call; TEXT beyond it is refused.",
)
@_opt(
    "--queue-frames",
    env="KOKORO_QUEUE_FRAMES",
    default=8,
    type=click.IntRange(1, 4096),
    help="AUDIO frames queued per destination before its call waits.",
)
@_opt(
    "--max-segment-chars",
    env="KOKORO_MAX_SEGMENT_CHARS",
    default=200,
    type=click.IntRange(16, 2000),
    help="Longest segment (one AUDIO frame of speech).",
)
@_opt(
    "--first-segment-words",
    env="KOKORO_FIRST_SEGMENT_WORDS",
    default=8,
    type=click.IntRange(1, 100),
    help="First segment of a reply: its first clause, at most this many words.",
)
@_opt(
    "--hello-timeout",
    env="KOKORO_HELLO_TIMEOUT",
    default=10.0,
    type=click.FloatRange(min=0.1),
    help="Seconds a new connection has to send HELLO.",
)
@_opt(
    "--idle-timeout",
    env="KOKORO_IDLE_TIMEOUT",
    default=600.0,
    type=click.FloatRange(min=0.1),
    help="Seconds without any frame (KEEPALIVE counts) before a call is closed.",
)
@_opt(
    "--frame-timeout",
    env="KOKORO_FRAME_TIMEOUT",
    default=30.0,
    type=click.FloatRange(min=0.1),
    help="Seconds a started frame has to arrive whole.",
)
@_opt(
    "--write-timeout",
    env="KOKORO_WRITE_TIMEOUT",
    default=30.0,
    type=click.FloatRange(min=0.1),
    help="Seconds a peer may accept no audio before it is dropped as not reading.",
)
@_opt(
    "--max-registrations",
    env="KOKORO_MAX_REGISTRATIONS",
    default=10_000,
    type=click.IntRange(1),
    help="UDP registrations remembered; beyond it the oldest is forgotten.",
)
@_opt(
    "--sink-connect-attempts",
    env="KOKORO_SINK_CONNECT_ATTEMPTS",
    default=4,
    type=click.IntRange(1, 100),
    help="Tries to reach an audio processor before its audio goes back on the text connection.",
)
@_opt(
    "--sink-connect-backoff",
    env="KOKORO_SINK_CONNECT_BACKOFF",
    default=0.1,
    type=click.FloatRange(min=0.001),
    help="Seconds before the second try; doubled for each further try.",
)
@_opt(
    "--flush-timeout",
    env="KOKORO_FLUSH_TIMEOUT",
    default=0.5,
    type=click.FloatRange(min=0.05),
    help="Seconds of silence after which text with no sentence end is spoken anyway.",
)
@_opt(
    "--drain-timeout",
    env="KOKORO_DRAIN_TIMEOUT",
    default=20.0,
    type=click.FloatRange(min=0.0),
    help="On SIGTERM/SIGINT, seconds to finish owed audio.",
)
@_opt(
    "--allow",
    env="KOKORO_ALLOW",
    default=",".join(LOOPBACK_ONLY),
    help="Comma-separated CIDRs of TCP peers and UDP registrars that are served.",
)
@_opt(
    "--warmup/--no-warmup",
    env="KOKORO_WARMUP",
    default=True,
    help="Synthesize once before accepting connections.",
)
@_opt(
    "--log-level",
    env="KOKORO_LOG_LEVEL",
    default="info",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
)
def serve(**kw: Any) -> None:
    """Run the daemon until SIGTERM or SIGINT.

    Exit codes: 0 after a clean stop, 1 on an unexpected error, 2 for bad options,
    3 when start-up fails (model, device, voice, ports), 4 when a second signal forces exit.
    """
    _setup_logging(kw["log_level"])
    _env_common()
    try:
        settings = settings_from_options(**kw)
    except ConfigError as exc:
        logging.getLogger("kokoro_service").error("start-up failed: %s", exc)
        sys.exit(EXIT_STARTUP)
    code = run(settings)
    if code == EXIT_FORCED:
        # Threads may be inside torch; interpreter teardown under them can abort, and a
        # forced stop is meant to be immediate anyway.
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def settings_from_options(**kw: Any) -> Settings:
    """Turn the CLI's keyword arguments into validated :class:`Settings`."""
    seg_chars = kw.pop("max_segment_chars")
    first_words = kw.pop("first_segment_words")
    try:
        segmenter = SegmenterConfig(
            max_chars=seg_chars,
            first_max_words=first_words,
            max_word_chars=min(80, seg_chars),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    allow = parse_networks([kw.pop("allow")])
    cache_dir = kw.pop("cache_dir") or default_cache_dir()
    return Settings(
        **{k: v for k, v in kw.items() if k != "log_level"},
        log_level=kw["log_level"].lower(),
        cache_dir=cache_dir,
        allow=allow,
        segmenter=segmenter,
    )


def run(settings: Settings) -> int:
    from .server import run as run_server

    return run_server(settings)


def _engine_for(model_dir: Path | None, device: str, lang: str) -> Any:
    from .engine import load_engine, probe_devices, select_device

    cuda, mps = probe_devices()
    dev = select_device(device, cuda_available=cuda, mps_available=mps)
    return load_engine(
        model_dir=model_dir,
        cache_dir=default_cache_dir(),
        device=dev,
        lang=lang,
        torch_threads=None,
    )


@main.command(context_settings=CONTEXT)
@click.argument("text")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("out.wav"),
    show_default=True,
    help="WAV file to write.",
)
@_opt("--voice", env="KOKORO_VOICE", default=None, help="Voice or blend [default: af_sky].")
@_opt("--lang", env="KOKORO_LANG", default="a", help="Kokoro language code.")
@_opt("--speed", env="KOKORO_SPEED", default=1.0, type=click.FloatRange(0.5, 2.0))
@_opt("--device", env="KOKORO_DEVICE", default="auto")
@_opt(
    "--model-dir",
    env="KOKORO_MODEL_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
)
def say(
    text: str,
    output: Path,
    voice: str | None,
    lang: str,
    speed: float,
    device: str,
    model_dir: Path | None,
) -> None:
    """Synthesize TEXT locally (no daemon) into a 24 kHz WAV file."""
    import numpy as np
    import soundfile as sf

    from .segmenter import Segmenter
    from .server import choose_voice

    _setup_logging("warning")
    _env_common()
    try:
        engine = _engine_for(model_dir, device, lang)
        chosen = choose_voice(engine, voice)
        segmenter = Segmenter()
        pieces = []
        for segment in segmenter.push(text) + segmenter.flush():
            result = engine.synthesize(segment, voice=chosen, lang=lang, speed=speed)
            if result.audio is not None:
                pieces.append(result.audio)
    except KokoroServiceError as exc:
        raise click.ClickException(str(exc)) from None
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    sf.write(str(output), audio, 24_000, subtype="FLOAT")
    click.echo(f"wrote {output}: {len(audio) / 24_000:.2f}s of audio, voice {chosen}")


@main.command(context_settings=CONTEXT)
@click.argument("text", nargs=-1, required=True)
@click.option("--call-id", required=True, help="Call id to send in HELLO.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("out.wav"),
    show_default=True,
    help="WAV file to write.",
)
@_opt("--host", env="KOKORO_HOST", default="127.0.0.1")
@_opt("--tcp-port", env="KOKORO_TCP_PORT", default=8090, type=int, callback=_port)
@click.option("--voice", default=None, help="Send CONTROL voice first.")
@click.option(
    "--speed", default=None, type=click.FloatRange(0.5, 2.0), help="Send CONTROL speed first."
)
@click.option("--timeout", default=120.0, show_default=True, type=float)
def send(
    text: tuple[str, ...],
    call_id: str,
    output: Path,
    host: str,
    tcp_port: int,
    voice: str | None,
    speed: float | None,
    timeout: float,
) -> None:
    """Send TEXT... to a running daemon as one call and write the audio that comes back.

    Each TEXT argument is one TEXT frame. This is the operator's smoke test.
    """
    import soundfile as sf

    from .client import speak
    from .protocol import validate_call_id

    try:
        validate_call_id(call_id)
        t0 = time.monotonic()
        reply = speak(
            host, tcp_port, call_id, list(text), voice=voice, speed=speed, timeout=timeout
        )
    except (OSError, KokoroServiceError) as exc:
        raise click.ClickException(f"cannot talk to {host}:{tcp_port}: {exc}") from None
    audio = reply.audio()
    sf.write(str(output), audio, 24_000, subtype="FLOAT")
    first = f"{(reply.arrivals[0] - t0) * 1e3:.0f} ms" if reply.arrivals else "never"
    click.echo(
        f"call {call_id}: {len(reply.chunks)} AUDIO frame(s), chunk ids {reply.chunk_ids}, "
        f"{reply.seconds:.2f}s of audio, first audio after {first}, "
        f"END {'received' if reply.ended else 'MISSING'}; wrote {output}"
    )
    if not reply.ended:
        sys.exit(1)


@main.command(context_settings=CONTEXT)
@_opt(
    "--model-dir",
    env="KOKORO_MODEL_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
)
@_opt(
    "--cache-dir",
    env="KOKORO_CACHE_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
)
def voices(model_dir: Path | None, cache_dir: Path | None) -> None:
    """List the voices the daemon can use, and the model source they come from."""
    from .engine import resolve_source

    _setup_logging("warning")
    _env_common()
    try:
        source = resolve_source(model_dir, cache_dir or default_cache_dir())
    except KokoroServiceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"source: {source.kind}: {source.description}")
    for name, path in source.voice_files().items():
        click.echo(f"{name}\t{path}")


@main.command(context_settings=CONTEXT)
@_opt(
    "--model-dir",
    env="KOKORO_MODEL_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Download into this directory instead of the hub cache.",
)
def download(model_dir: Path | None) -> None:
    """Fetch the fp32 Kokoro-82M weights and all voices from the hub (needs network)."""
    # The one command allowed to reach the hub; huggingface_hub reads this at import.
    os.environ.pop("HF_HUB_OFFLINE", None)
    from huggingface_hub import snapshot_download

    from .engine import REPO_ID

    try:
        path = snapshot_download(
            REPO_ID,
            allow_patterns=["config.json", "kokoro-v1_0.pth", "voices/*.pt"],
            local_dir=str(model_dir) if model_dir else None,
        )
    except Exception as exc:
        raise click.ClickException(f"download from {REPO_ID} failed: {exc}") from None
    click.echo(f"downloaded {REPO_ID} to {path}")


@main.command("make-checkpoint", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.Choice(["tiny", "full"]), default="tiny", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def make_checkpoint(directory: Path, size: str, seed: int) -> None:
    """Write a random-weight checkpoint in the real KModel layout (for smoke tests).

    It speaks noise, not words: it proves the plumbing, not the voice.
    """
    from .checkpoint import build_random_checkpoint

    _setup_logging("warning")
    out = build_random_checkpoint(directory, size=size, seed=seed)
    click.echo(f"wrote a {size} random checkpoint to {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
