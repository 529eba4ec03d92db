"""Command line: ``kokoro-service serve|say|send|voices|download|make-checkpoint``.

The only module that reads options and the environment.  ``serve``'s options are derived
from the fields of :class:`~kokoro_service.config.Settings` (help, ``KOKORO_*`` variable,
default), and every range is checked once, by ``Settings`` itself.

Only the commands that synthesize import torch, so ``--help``, ``send`` and option
errors answer at once.

Over 400 lines: one click command per entry point (serve, say, send, voices, download,
make-checkpoint), whose options come from Settings.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kokoro_service.config import (
    Settings,
    cli_fields,
    default_cache_dir,
    env_var,
    option_name,
    parse_networks,
    parse_voice_aliases,
    range_text,
)
from kokoro_service.errors import ConfigError, KokoroServiceError
from kokoro_service.logs import EscapingFormatter
from kokoro_service.wire.codec import CONTROL_SPEED_RANGE, SAMPLE_RATE, SAMPLE_RATES, SAMPLE_WIDTHS

log = logging.getLogger("kokoro_service.cli")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_FIELDS = {f.name: f for f in cli_fields()}


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)


def _env_common() -> None:
    # MPS lacks a few kernels kokoro uses; without the fallback they raise instead of
    # running on the CPU.  torch reads this when MPS first initialises.
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    # Never let a library reach for the hub at run time; `download` lifts this explicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _click_type(f: dataclasses.Field[Any]) -> Any:
    kind = str(f.type)
    meta = f.metadata["cli"]
    if meta["choices"]:
        return click.Choice(meta["choices"], case_sensitive=False)
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    if kind.startswith("Path"):
        return click.Path(path_type=Path, file_okay=not meta["directory"])
    return str  # strings, and --allow and --voice-alias, which their parsers read


# Old names of options, still read: each logs a deprecation at start-up.
DEPRECATED_OPTIONS = {"metrics_port": "http_port", "metrics_host": "http_host"}


def setting_option(name: str, **overrides: Any) -> Callable[[Any], Any]:
    """The click option of the ``Settings`` field ``name``: ``--name``, ``KOKORO_NAME``.

    Defaults come from the field; one computed at start-up (a factory, or None) stays
    None here, which :func:`settings_from_options` leaves to ``Settings``.
    """
    f = _FIELDS[name]
    meta = f.metadata["cli"]
    if str(f.type) == "bool":
        decls = [f"{option_name(name)}/--no-{name.replace('_', '-')}"]
        kw: dict[str, Any] = {"default": f.default, "show_default": True}
    else:
        decls = [option_name(name)]
        kw = {"type": _click_type(f)}
        if f.default is dataclasses.MISSING or f.default is None:
            # Computed at start-up (or optional): None reaches Settings as "not given".
            kw.update(default=None, show_default=meta["shown"] or False)
        elif name in DEPRECATED_OPTIONS.values():
            # None when not given, so that an old name given instead can take its place.
            kw.update(default=None, show_default=str(f.default))
        else:
            kw.update(default=f.default, show_default=True)
    bounds = ""
    if meta["lo"] is not None or meta["hi"] is not None:
        bounds = f" Range: {range_text(meta['lo'], meta['hi'])}."
    kw.update(envvar=env_var(name), show_envvar=True, help=meta["help"] + bounds)
    kw.update(overrides)
    return click.option(*decls, **kw)


def settings_from_options(**kw: Any) -> Settings:
    """Validated :class:`Settings` from ``serve``'s options; unset ones keep their default."""
    _renamed(kw)
    given = {k: v for k, v in kw.items() if v is not None}
    if "allow" in given:
        given["allow"] = parse_networks(given["allow"])
    if "voice_alias" in given:
        given["voice_alias"] = parse_voice_aliases(given["voice_alias"])
    if "log_level" in given:
        given["log_level"] = given["log_level"].lower()
    return Settings(**given)


def _bad_option(exc: ConfigError) -> click.BadParameter:
    name = exc.setting or ""
    hint = f"'{option_name(name)}' / {env_var(name)}" if name in _FIELDS else None
    return click.BadParameter(str(exc), param_hint=hint)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="kokoro-service")
def main() -> None:
    """Streaming Kokoro-82M text-to-speech daemon for telephony voice agents."""


def _serve_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name in reversed(list(_FIELDS)):
        command = setting_option(name)(command)
    return command


def _deprecated_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for old, new in DEPRECATED_OPTIONS.items():
        command = click.option(
            option_name(old),
            old,
            type=_click_type(_FIELDS[new]),
            default=None,
            envvar=env_var(old),
            hidden=True,
        )(command)
    return command


def _renamed(kw: dict[str, Any]) -> list[str]:
    """Move the deprecated options' values to their new names (a new name given wins);
    the deprecation lines to log."""
    lines = []
    for old, new in DEPRECATED_OPTIONS.items():
        value = kw.pop(old, None)
        if value is None:
            continue
        was, now = f"{option_name(old)} ({env_var(old)})", f"{option_name(new)} ({env_var(new)})"
        if kw.get(new) is None:
            kw[new] = value
            lines.append(f"{was} is deprecated: use {now}")
        else:
            lines.append(f"{was} is deprecated and ignored: {now} is set too")
    return lines


@main.command(context_settings=CONTEXT)
@_serve_options
@_deprecated_options
def serve(**kw: Any) -> None:
    """Run the daemon until SIGTERM or SIGINT.

    Exit codes: 0 after a clean stop, 1 on an unexpected error, 2 for bad options,
    3 when start-up fails (model, device, voice, ports), 4 when a second signal forces exit.
    """
    deprecations = _renamed(kw)
    try:
        settings = settings_from_options(**kw)
    except ConfigError as exc:
        raise _bad_option(exc) from None
    _setup_logging(settings.log_level)
    for line in deprecations:
        log.warning(line)
    _env_common()
    from kokoro_service.daemon import EXIT_FORCED, run

    code = run(settings)
    if code == EXIT_FORCED or _threads_left():
        # Threads may be inside torch (a forced stop, or a drain that timed out while a
        # worker synthesized): interpreter teardown under them aborts the process
        # (SIGABRT, "terminate called without an active exception"), which would turn a
        # clean exit code into a crash.  Everything owed was sent or logged by now.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def _threads_left() -> bool:
    main = threading.main_thread()
    return any(t.is_alive() and t is not main for t in threading.enumerate())


def _settings(**kw: Any) -> Settings:
    try:
        return settings_from_options(**kw)
    except ConfigError as exc:
        raise _bad_option(exc) from None


_OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("out.wav"),
    show_default=True,
    help="WAV file to write.",
)


@main.command(context_settings=CONTEXT)
@click.argument("text")
@_OUTPUT
@setting_option("voice")
@setting_option("lang")
@setting_option("speed")
@setting_option("device")
@setting_option("model_dir")
@setting_option("cache_dir")
def say(text: str, output: Path, **kw: Any) -> None:
    """Synthesize TEXT locally (no daemon) into a 24 kHz WAV file."""
    import numpy as np
    import soundfile as sf

    from kokoro_service.daemon import load_engine
    from kokoro_service.text.segmenter import Segmenter

    settings = _settings(**kw, warmup=False)
    _setup_logging("warning")
    _env_common()
    try:
        loaded = load_engine(settings)
        segmenter = Segmenter()
        pieces = []
        for segment in segmenter.push(text) + segmenter.flush():
            result = loaded.engine.synthesize(
                segment, voice=loaded.voice, lang=settings.lang, speed=settings.speed
            )
            if result.audio is not None:
                pieces.append(result.audio)
    except KokoroServiceError as exc:
        raise click.ClickException(str(exc)) from None
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    sf.write(str(output), audio, SAMPLE_RATE, subtype="FLOAT")
    click.echo(f"wrote {output}: {len(audio) / SAMPLE_RATE:.2f}s of audio, voice {loaded.voice}")


@main.command(context_settings=CONTEXT)
@click.argument("text", nargs=-1, required=True)
@click.option("--call-id", required=True, help="Call id to send in HELLO.")
@_OUTPUT
@setting_option("host", help="Address of the daemon.")
@setting_option("tcp_port", help="The daemon's TCP port.")
@click.option("--voice", default=None, help="Send CONTROL voice first.")
@click.option(
    "--speed",
    default=None,
    type=click.FloatRange(*CONTROL_SPEED_RANGE),
    help="Send CONTROL speed first.",
)
@click.option(
    "--format",
    "audio_format",
    default=None,
    type=click.Choice(list(SAMPLE_WIDTHS)),
    help="Send CONTROL format first: the encoding of the audio that comes back.",
)
@click.option(
    "--rate",
    default=None,
    type=click.Choice([str(r) for r in SAMPLE_RATES]),
    help="Send CONTROL rate first: the sample rate of the audio that comes back.",
)
@click.option(
    "--words",
    is_flag=True,
    help="Send CONTROL words first, and print each AUDIO frame's words with their times.",
)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Speak TLS to the daemon, trusting this PEM CA bundle for its certificate.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --tls-ca: this client's PEM certificate (and key, if --tls-key is not given).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The PEM key of --tls-cert.",
)
@click.option("--timeout", default=120.0, show_default=True, type=float)
def send(
    text: tuple[str, ...],
    call_id: str,
    output: Path,
    voice: str | None,
    speed: float | None,
    audio_format: str | None,
    rate: str | None,
    words: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    timeout: float,
    **kw: Any,
) -> None:
    """Send TEXT... to a running daemon as one call and write the audio that comes back.

    Each TEXT argument is one TEXT frame. This is the operator's smoke test. The WAV file
    holds the audio decoded to float at the rate asked for.
    """
    import soundfile as sf

    from kokoro_service.wire.client import speak
    from kokoro_service.wire.codec import validate_call_id

    target = _settings(**kw)
    host, tcp_port = target.host, target.tcp_port
    tls = _client_tls(tls_ca, tls_cert, tls_key)
    try:
        validate_call_id(call_id)
        t0 = time.monotonic()
        reply = speak(
            host,
            tcp_port,
            call_id,
            list(text),
            voice=voice,
            speed=speed,
            format=audio_format,
            rate=int(rate) if rate else None,
            words=True if words else None,
            timeout=timeout,
            tls=tls,
        )
    except (OSError, KokoroServiceError) as exc:
        raise click.ClickException(f"cannot talk to {host}:{tcp_port}: {exc}") from None
    audio = reply.audio()
    sf.write(str(output), audio, reply.format.rate, subtype="FLOAT")
    if words:
        for chunk in reply.chunks:
            timed = " ".join(
                f"{w.word}@{w.start:.2f}-{w.end:.2f}" for w in reply.words.get(chunk.chunk_id, ())
            )
            click.echo(f"chunk {chunk.chunk_id} words: {timed or '-'}")
    first = f"{(reply.arrivals[0] - t0) * 1e3:.0f} ms" if reply.arrivals else "never"
    click.echo(
        f"call {call_id}: {len(reply.chunks)} AUDIO frame(s), chunk ids {reply.chunk_ids}, "
        f"{reply.seconds:.2f}s of {reply.format} audio, first audio after {first}, "
        f"END {'received' if reply.ended else 'MISSING'}; wrote {output}"
    )
    if not reply.ended:
        sys.exit(1)


def _client_tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if ca is None:
        if cert is not None or key is not None:
            raise click.UsageError("--tls-cert and --tls-key need --tls-ca")
        return None
    try:
        context = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(f"cannot use the TLS files: {exc}") from None
    return context


@main.command(context_settings=CONTEXT)
@setting_option("model_dir")
@setting_option("cache_dir")
def voices(model_dir: Path | None, cache_dir: Path | None) -> None:
    """List the voices the daemon can use, and the model source they come from."""
    from kokoro_service.synthesis.models.sources import resolve_source

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
@setting_option("model_dir", help="Download into this directory instead of the hub cache.")
def download(model_dir: Path | None) -> None:
    """Fetch the fp32 Kokoro-82M weights and all voices from the hub (needs network)."""
    # The one command allowed to reach the hub; huggingface_hub reads this at import.
    os.environ.pop("HF_HUB_OFFLINE", None)
    from huggingface_hub import snapshot_download

    from kokoro_service.synthesis.models.architecture import REPO_ID

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
@click.option(
    "--frames-per-token",
    type=click.FloatRange(0.1, 40.0),
    default=2.0,
    show_default=True,
    help="Mean predicted duration per phoneme, in 25 ms frames. About 2.9 speaks at the "
    "real voices' rate (some 13 characters per second): what a speed benchmark wants.",
)
def make_checkpoint(directory: Path, size: str, seed: int, frames_per_token: float) -> None:
    """Write a random-weight checkpoint in the real KModel layout (for smoke tests).

    It speaks noise, not words: it proves the plumbing, not the voice.
    """
    from kokoro_service.synthesis.models.checkpoint import build_random_checkpoint

    _setup_logging("warning")
    out = build_random_checkpoint(
        directory, size=size, seed=seed, frames_per_token=frames_per_token
    )
    click.echo(f"wrote a {size} random checkpoint to {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
