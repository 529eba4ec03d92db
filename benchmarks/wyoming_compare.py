"""Wyoming comparison: our daemon's binary protocol, our Wyoming port, and a Wyoming Kokoro
server from PyPI (``wyoming-kokoro-torch``), on the same host, the same weights, the same
texts, in one run.

Our side is ``kokoro-service serve`` as a subprocess (the harness's :class:`Daemon`: ready
when its ready file appears), with ``--wyoming-port`` on a free port added to its
arguments.  The peer is ``PEER_PYTHON -m wyoming_kokoro_torch`` in its own virtual
environment (it pins ``wyoming<1.8``), run with no network (``HF_HUB_OFFLINE=1``, an empty
``HF_HOME``) on the weights our daemon resolves by default: the directory that
``kokoro_service.synthesis.models.sources.resolve_source`` returns for the daemon's settings (the
embedded import, ``config.json`` + ``kokoro-v1_0.pth`` + ``voices/*.pt``, unless a hub
cache or ``--model-dir`` takes precedence) is laid out by symlinks in a temp dir as the
peer's ``--data-dir``:

* ``config.json`` and ``kokoro-v1_0.pth`` (the file names the peer's handler looks for);
* the voice as ``<lang>_<voice>.pt`` and ``<lang>_<voice>`` (a name the peer does not know
  is a "custom voice": it must exist under its bare name, and ``.pt`` is what it loads).
  The peer picks its G2P pipeline by the voice name's first letter, so ``a_jm_kumo``
  speaks ``jm_kumo`` with American English G2P, as our daemon does with ``--lang a``.

Both servers must answer ``describe`` with ``info`` before anything is measured.  Then,
round by round (the order of the paths rotating each round), for each text:

* ``binary``: our binary protocol (HELLO, the text in one TEXT frame, BYE);
* ``binary-stream``: the same with the text in the pieces the streamed paths send;
* ``wyoming``: our Wyoming port, ``synthesize``;
* ``wyoming-stream``: our Wyoming port, ``synthesize-start``, ``synthesize-chunk`` per
  piece, the whole text as ``synthesize`` (the streaming convention, as Home Assistant
  sends it), ``synthesize-stop``;
* ``peer`` and ``peer-stream``: the same two requests to the peer (streamed only where its
  ``info`` says ``supports_synthesize_streaming``);
* ``peer-reused``: ``synthesize`` on a peer connection that has already served one short
  request: the peer loads the model and its G2P for every connection, and Home Assistant
  opens one per request, so ``peer`` is what a user gets and this is its synthesis alone.

Every request opens a new connection (as Home Assistant does) and the clock starts when
its first byte is sent.  First audio is the first ``audio-chunk`` with data (AUDIO frame);
total is ``audio-stop`` (END), and ``synthesize-stopped`` for the streamed Wyoming paths.
The ratio the issue holds our adapter to, Wyoming first audio over binary first audio
(p50s, and the median of the per-round ratios), must be at most 1.10.

Our daemon's ``--precision auto`` times fp32 against a bf16 vocoder at start-up and keeps
the faster, so a busy start can land on fp32; the peer is stock fp32 kokoro.  The result
records which ran (``ours.ready.precision``); ``--serve-arg=--precision=fp32`` gives both
sides the same arithmetic, ``--serve-arg=--precision=bf16`` pins the quiet host's choice.

The peer's venv (its own: it pins ``wyoming<1.8``; torch first, the local CPU wheel, or
pip pulls a CUDA build), and spaCy's ``en_core_web_sm`` under the name misaki loads, from
the project's offline alias (a copy, so the build leaves nothing in the tree):

    python3 -m venv /tmp/wkt-venv
    /tmp/wkt-venv/bin/pip install torch==2.13.0 wyoming-kokoro-torch==3.2.0
    cp -r packaging/en_core_web_sm /tmp/ecws && /tmp/wkt-venv/bin/pip install /tmp/ecws

    .venv/bin/python -m benchmarks.wyoming_compare --peer-python /tmp/wkt-venv/bin/python
    .venv/bin/python -m benchmarks.wyoming_compare --only peer \\
        --peer-python /tmp/wkt-venv/bin/python --repeats 3 --out /tmp/peer.json
    .venv/bin/python -m benchmarks.wyoming_compare --table RESULT.json

Prints the result JSON on stdout and writes it to ``--out`` (default
``benchmarks/results/<host>-<date>-wyoming-compare.json``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import importlib.metadata
import json
import math
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from benchmarks.lib.callers import TEXT_ONE
from benchmarks.lib.harness import (
    RESULTS_DIR,
    CpuMeter,
    Daemon,
    host_facts,
    log,
    rounded,
    serve_settings,
    strict_json,
    summary,
)
from benchmarks.lib.tables import host_line, markdown
from benchmarks.lib.wyoming_peer import (
    VERSION_PACKAGES,
    Peer,
    free_port,
    info_summary,
    read_within,
    wait_describe,
)
from kokoro_service.wire.client import Connection

# The reply: three sentences, so a server that cuts at sentence ends starts after
# the first one.  The one-sentence reply is the latency benchmark's.
TEXTS: dict[str, str] = {
    "three_sentence": (
        "Thanks for calling Acme Dental. I can see your appointment on Tuesday at three "
        "thirty. Would you like to keep it, or move it to another day?"
    ),
    "one_sentence": TEXT_ONE,
}
OURS = ("binary", "binary-stream", "wyoming", "wyoming-stream")
PEER = ("peer", "peer-stream", "peer-reused")
PATHS = OURS + PEER
STREAMED = ("binary-stream", "wyoming-stream", "peer-stream")
TARGET_RATIO = 1.10
# What the peer's reused connection says first, unmeasured.
REUSE_PRIMER = "Okay."


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--peer-python",
        type=Path,
        default=None,
        help="python of the venv where wyoming-kokoro-torch is installed (the peer is "
        "skipped, and the result says so, without it)",
    )
    p.add_argument("--repeats", type=int, default=5, help="measured rounds")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    p.add_argument(
        "--texts",
        default=",".join(TEXTS),
        help=f"comma list of the built-in texts ({', '.join(TEXTS)})",
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="an extra text to speak (repeatable)",
    )
    p.add_argument(
        "--only",
        default="all",
        help="comma list of paths (" + ", ".join(PATHS) + ") or sides (ours, peer, all)",
    )
    p.add_argument(
        "--pieces", type=int, default=4, help="synthesize-chunk pieces of a streamed text"
    )
    p.add_argument(
        "--piece-delay-ms", type=float, default=0.0, help="pause between streamed pieces"
    )
    p.add_argument("--voice", default="jm_kumo", help="voice of both servers")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra argument for `kokoro-service serve` (repeatable), e.g. "
        "--serve-arg=--precision=fp32",
    )
    p.add_argument(
        "--peer-arg",
        action="append",
        default=[],
        help="extra argument for the peer (repeatable), e.g. --peer-arg=--samples-per-chunk=512",
    )
    p.add_argument(
        "--daemon-log-level", default="info", choices=("debug", "info"), help="our daemon's"
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="daemon --cache-dir [default]")
    p.add_argument("--out", type=Path, default=None, help="result file [results/<host>-<date>-…]")
    p.add_argument("--request-timeout", type=float, default=180.0, help="per request, seconds")
    p.add_argument("--start-timeout", type=float, default=300.0, help="per server start, seconds")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repeat a request up to this many times when other processes used more than "
        "--contended-pct of the machine during it (0 = keep everything)",
    )
    p.add_argument("--contended-pct", type=float, default=25.0)
    p.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each measured round, wait up to this many seconds for other processes' "
        "CPU use to drop below 10%% (0 = do not wait)",
    )
    p.add_argument("--keep-peer-dir", action="store_true", help="keep the peer's temp dir")
    ns = p.parse_args(argv)
    if ns.repeats < 1 or ns.warmup < 0 or ns.pieces < 1:
        p.error("--repeats and --pieces must be at least 1, --warmup at least 0")
    return ns


def select_paths(only: str) -> list[str]:
    chosen: list[str] = []
    for item in (x.strip() for x in only.split(",")):
        group = {"all": PATHS, "ours": OURS, "peer": PEER}.get(item, (item,))
        for path in group:
            if path not in PATHS:
                raise SystemExit(f"unknown path {path!r}; choose from {', '.join(PATHS)}")
            if path not in chosen:
                chosen.append(path)
    return [p for p in PATHS if p in chosen]


def select_texts(ns: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in (x.strip() for x in ns.texts.split(",") if x.strip()):
        if name not in TEXTS:
            raise SystemExit(f"unknown text {name!r}; choose from {', '.join(TEXTS)}")
        out[name] = TEXTS[name]
    for item in ns.text:
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise SystemExit(f"--text wants NAME=TEXT, got {item!r}")
        out[name.strip()] = text.strip()
    if not out:
        raise SystemExit("no texts to speak")
    return out


def pieces_of(text: str, n: int) -> list[str]:
    """``text`` in ``n`` pieces of about equal length, cut after a space (so no word is
    split, and the cuts fall mid-sentence as an LLM's deltas do); concatenated, ``text``."""
    words = text.split(" ")
    if n <= 1 or len(words) <= 1:
        return [text]
    target = len(text) / n
    out: list[str] = []
    cur = ""
    for i, word in enumerate(words):
        cur += word + (" " if i + 1 < len(words) else "")
        if len(out) < n - 1 and len(cur) >= target:
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


def versions_here() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def serve_has_wyoming() -> bool:
    """Whether ``kokoro-service serve`` has a ``--wyoming-port`` option yet."""
    from kokoro_service.cli import serve

    return any("--wyoming-port" in getattr(param, "opts", ()) for param in serve.params)


# ------------------------------------------------------------------------------ samples


@dataclass
class Sample:
    """One request: seconds from its first byte sent, and what came back."""

    first_audio_s: float = math.nan
    total_s: float = math.nan
    audio_start_s: float = math.nan  # the first audio-start (Wyoming only)
    audio_stop_s: float = math.nan  # the last audio-stop / END
    audio_s: float = 0.0
    chunks: int = 0
    audio_starts: int = 0
    audio_stops: int = 0
    fmt: dict[str, int] | None = None
    connect_s: float = math.nan
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.first_audio_s + self.total_s)


def binary_once(
    host: str, port: int, pieces: Sequence[str], delay: float, timeout: float
) -> Sample:
    """HELLO, the pieces as TEXT frames, BYE; time the first AUDIO frame and END."""
    out = Sample()
    c0 = time.monotonic()
    conn = Connection(host, port, timeout=timeout)
    out.connect_s = time.monotonic() - c0
    try:
        t0 = time.monotonic()
        conn.hello(f"wycmp-{os.getpid()}-{time.monotonic_ns()}")

        def send() -> None:
            for i, piece in enumerate(pieces):
                if i and delay > 0:
                    time.sleep(delay)
                conn.text(piece)
            conn.bye()

        sender: threading.Thread | None = None
        if delay > 0 and len(pieces) > 1:
            sender = threading.Thread(target=send, name="pieces", daemon=True)
            sender.start()
        else:
            send()
        deadline = t0 + timeout
        end_at = math.nan
        reply = conn.reply
        while not reply.closed and time.monotonic() < deadline:
            conn.read_some(min(0.25, max(0.01, deadline - time.monotonic())))
            if reply.ended and not math.isfinite(end_at):
                end_at = time.monotonic()
                break
        if sender is not None:
            sender.join(5)
        if reply.arrivals:
            out.first_audio_s = reply.arrivals[0] - t0
        out.total_s = end_at - t0
        out.audio_stop_s = out.total_s
        out.audio_s = reply.seconds
        out.chunks = len(reply.chunks)
        fmt = getattr(reply, "format", None)
        out.fmt = {
            "rate": int(getattr(fmt, "rate", 24_000)),
            "width": int(getattr(fmt, "width", 4)),
            "channels": 1,
        }
        if not reply.ended:
            out.error = "no END" + (" (closed)" if reply.closed else f" within {timeout:.0f}s")
        elif not reply.arrivals:
            out.error = "no AUDIO before END"
    finally:
        conn.close()
    return out


async def _drain_reply(client: AsyncTcpClient, timeout: float) -> None:
    """Read one non-streamed reply to its audio-stop (the reused connection's primer)."""
    while True:
        event = await read_within(client, timeout)
        if event is None or AudioStop.is_type(event.type):
            return
        if Error.is_type(event.type):
            raise RuntimeError(f"primer: {Error.from_event(event).text}")


async def wyoming_once(
    host: str,
    port: int,
    text: str,
    pieces: Sequence[str],
    *,
    streaming: bool,
    delay: float,
    timeout: float,
    primer: str | None = None,
) -> Sample:
    """One Wyoming request on a new connection, written while the reply is read (two
    tasks, as Home Assistant does); ``primer`` is said first, unmeasured, on the same
    connection."""
    out = Sample()
    c0 = time.monotonic()
    client = AsyncTcpClient(host, port)
    await asyncio.wait_for(client.connect(), timeout=timeout)
    out.connect_s = time.monotonic() - c0
    t0 = math.nan
    try:
        if primer is not None:
            p0 = time.monotonic()
            await client.write_event(Synthesize(text=primer).event())
            await _drain_reply(client, timeout)
            out.extra["primer_s"] = rounded(time.monotonic() - p0)

        async def write() -> None:
            nonlocal t0
            t0 = time.monotonic()
            if not streaming:
                await client.write_event(Synthesize(text=text).event())
                return
            await client.write_event(SynthesizeStart().event())
            for i, piece in enumerate(pieces):
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await client.write_event(SynthesizeChunk(text=piece).event())
            # The streaming convention: the whole text once more, for servers that do not
            # stream (Home Assistant sends it), then the stop.
            await client.write_event(Synthesize(text=text).event())
            await client.write_event(SynthesizeStop().event())
            out.extra["stop_sent_s"] = rounded(time.monotonic() - t0)

        writer = asyncio.ensure_future(write())
        nbytes = 0
        try:
            while True:
                try:
                    event = await read_within(client, timeout)
                except asyncio.TimeoutError:
                    out.error = f"no event within {timeout:.0f}s"
                    break
                now = time.monotonic()
                if event is None:
                    out.error = "connection closed before the reply ended"
                    break
                if AudioStart.is_type(event.type):
                    start = AudioStart.from_event(event)
                    out.audio_starts += 1
                    if out.fmt is None:
                        out.fmt = {
                            "rate": start.rate,
                            "width": start.width,
                            "channels": start.channels,
                        }
                        out.audio_start_s = now - t0
                elif AudioChunk.is_type(event.type):
                    chunk = AudioChunk.from_event(event)
                    if chunk.audio:
                        out.chunks += 1
                        if out.chunks == 1:
                            out.first_audio_s = now - t0
                        if out.fmt is None:
                            out.fmt = {
                                "rate": chunk.rate,
                                "width": chunk.width,
                                "channels": chunk.channels,
                            }
                        nbytes += len(chunk.audio)
                elif AudioStop.is_type(event.type):
                    out.audio_stops += 1
                    out.audio_stop_s = now - t0
                    if not streaming:
                        out.total_s = out.audio_stop_s
                        break
                elif SynthesizeStopped.is_type(event.type):
                    out.total_s = now - t0
                    break
                elif Error.is_type(event.type):
                    err = Error.from_event(event)
                    out.error = f"error event: {err.code}: {err.text}"
                    break
        finally:
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        if out.fmt is not None:
            frame = out.fmt["width"] * out.fmt["channels"]
            out.audio_s = nbytes / frame / out.fmt["rate"] if frame and out.fmt["rate"] else 0.0
        if out.error is None and out.chunks == 0:
            out.error = "no audio-chunk with data"
    finally:
        await client.disconnect()
    return out


# ------------------------------------------------------------------------------ the peer


# ------------------------------------------------------------------------------ the run


@dataclass
class Targets:
    host: str
    binary_port: int
    wyoming_port: int | None
    peer_port: int | None


class Runner:
    def __init__(self, ns: argparse.Namespace, where: Targets, texts: dict[str, str]) -> None:
        self.ns = ns
        self.where = where
        self.texts = texts
        self.pieces = {name: pieces_of(text, ns.pieces) for name, text in texts.items()}
        self.meter = CpuMeter()
        self.timeout = ns.request_timeout
        self.delay = ns.piece_delay_ms / 1e3

    def once(self, path: str, name: str) -> Sample:
        text, pieces = self.texts[name], self.pieces[name]
        host, w = self.where.host, self.where
        if path in ("binary", "binary-stream"):
            chosen = [text] if path == "binary" else pieces
            return binary_once(host, w.binary_port, chosen, self.delay, self.timeout)
        port = w.wyoming_port if path.startswith("wyoming") else w.peer_port
        if port is None:
            return Sample(error="server not running")
        return asyncio.run(
            wyoming_once(
                host,
                port,
                text,
                pieces,
                streaming=path in STREAMED,
                delay=self.delay,
                timeout=self.timeout,
                primer=REUSE_PRIMER if path == "peer-reused" else None,
            )
        )

    def guarded(self, path: str, name: str, retries: int) -> tuple[Sample, float, int]:
        """One request, repeated (up to ``retries`` times) while others used the machine."""
        tries = 0
        while True:
            a = self.meter.sample()
            try:
                sample = self.once(path, name)
            except (OSError, asyncio.TimeoutError, RuntimeError) as exc:
                sample = Sample(error=f"{type(exc).__name__}: {exc}")
            foreign = self.meter.usage(a, self.meter.sample())["foreign_cpu_pct"]
            if foreign <= self.ns.contended_pct or tries >= retries or not sample.ok:
                return sample, foreign, tries
            tries += 1
            time.sleep(1.0)

    def run(self, paths: list[str]) -> dict[str, Any]:
        rounds = self.ns.warmup + self.ns.repeats
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {p: [] for p in paths} for name in self.texts
        }
        waits: list[dict[str, float]] = []
        for r in range(rounds):
            measured = r >= self.ns.warmup
            if measured and self.ns.wait_idle > 0:
                waits.append(self.meter.wait_idle(self.ns.wait_idle))
            order = paths[r % len(paths) :] + paths[: r % len(paths)]
            for name in self.texts:
                for path in order:
                    retries = self.ns.retries if measured else 0
                    sample, foreign, retried = self.guarded(path, name, retries)
                    tag = "measured" if measured else "warm-up"
                    log(
                        f"round {r + 1}/{rounds} ({tag}) {name} {path}: first "
                        f"{sample.first_audio_s:.3f}s total {sample.total_s:.3f}s audio "
                        f"{sample.audio_s:.2f}s, others {foreign}% CPU"
                        + (f", ERROR {sample.error}" if sample.error else "")
                    )
                    if measured:
                        rows[name][path].append(
                            {"round": r - self.ns.warmup, **row(sample, foreign, retried)}
                        )
        return {
            "texts": {
                name: {
                    "text": self.texts[name],
                    "pieces": self.pieces[name],
                    "paths": {p: path_summary(rows[name][p]) for p in paths},
                }
                for name in self.texts
            },
            "idle_waits": waits,
        }


def row(s: Sample, foreign: float, retried: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "first_audio_s": rounded(s.first_audio_s),
        "total_s": rounded(s.total_s),
        "audio_start_s": rounded(s.audio_start_s),
        "audio_stop_s": rounded(s.audio_stop_s),
        "audio_s": rounded(s.audio_s),
        "chunks": s.chunks,
        "audio_starts": s.audio_starts,
        "audio_stops": s.audio_stops,
        "format": s.fmt,
        "connect_s": rounded(s.connect_s, 5),
        "foreign_cpu_pct": foreign,
        "retried": retried,
        **s.extra,
    }
    if s.error:
        out["error"] = s.error
    return out


def _vals(rows: list[dict[str, Any]], key: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(key)
        if "error" not in r and isinstance(v, float | int) and math.isfinite(v):
            out.append(float(v))
    return out


def path_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    formats = {json.dumps(r["format"], sort_keys=True) for r in rows if r.get("format")}
    out: dict[str, Any] = {
        "n": len(rows),
        "errors": [r["error"] for r in rows if "error" in r],
        "first_audio_s": summary(_vals(rows, "first_audio_s")),
        "total_s": summary(_vals(rows, "total_s")),
        "audio_s": summary(_vals(rows, "audio_s")),
        "first_audio_samples": [r["first_audio_s"] for r in rows],
        "total_samples": [r["total_s"] for r in rows],
        "audio_s_samples": [r["audio_s"] for r in rows],
        "formats": [json.loads(f) for f in sorted(formats)],
        "audio_starts_per_reply": sorted({r["audio_starts"] for r in rows}),
        "contended_samples": sum(1 for r in rows if r["foreign_cpu_pct"] > 25),
        "samples": rows,
    }
    starts = _vals(rows, "audio_start_s")
    if starts:
        out["audio_start_s"] = summary(starts)
    return out


def p50(block: dict[str, Any], key: str) -> float:
    value = (block.get(key) or {}).get("p50")
    return float(value) if isinstance(value, float | int) else math.nan


def paired_ratio(num: dict[str, Any], den: dict[str, Any], key: str) -> float:
    """Median over rounds of num/den, each round's two samples taken minutes apart at most."""
    a = {r["round"]: r.get(key) for r in num.get("samples", []) if "error" not in r}
    b = {r["round"]: r.get(key) for r in den.get("samples", []) if "error" not in r}
    ratios = [
        a[k] / b[k]
        for k in a.keys() & b.keys()
        if isinstance(a[k], float) and isinstance(b[k], float) and b[k] > 0
    ]
    return statistics.median(ratios) if ratios else math.nan


def comparisons(res: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ratios per text: our Wyoming port against our binary protocol (the issue's target),
    the peer against our Wyoming port, and each path's audio length against binary's."""
    ratios: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    for name, block in res["texts"].items():
        paths = block["paths"]
        mine: dict[str, Any] = {}
        pairs = [
            ("wyoming_over_binary", "wyoming", "binary"),
            ("wyoming_stream_over_binary", "wyoming-stream", "binary"),
            ("wyoming_stream_over_binary_stream", "wyoming-stream", "binary-stream"),
            ("peer_over_wyoming", "peer", "wyoming"),
            ("peer_stream_over_wyoming_stream", "peer-stream", "wyoming-stream"),
            ("peer_over_binary", "peer", "binary"),
        ]
        for label, num, den in pairs:
            if num not in paths or den not in paths:
                continue
            entry = {}
            for key, short in (("first_audio_s", "first_audio"), ("total_s", "total")):
                entry[f"{short}_p50_ratio"] = rounded(
                    p50(paths[num], key) / p50(paths[den], key), 3
                )
                entry[f"{short}_paired_median_ratio"] = rounded(
                    paired_ratio(paths[num], paths[den], key), 3
                )
            mine[label] = entry
        if "binary" in paths:  # both sides should speak about as long
            base = p50(paths["binary"], "audio_s")
            mine["audio_s_over_binary"] = {
                p: rounded(p50(paths[p], "audio_s") / base, 3) for p in paths if p != "binary"
            }
        ratios[name] = mine
        for label, mode in (
            ("wyoming_over_binary", "synthesize"),
            ("wyoming_stream_over_binary_stream", "streamed"),
        ):
            if label in mine:
                value = mine[label]["first_audio_p50_ratio"]
                ok = None if value is None or not math.isfinite(value) else value <= TARGET_RATIO
                targets.append(
                    {
                        "target": f"our Wyoming first audio / binary first audio, {name}, "
                        f"{mode} (p50)",
                        "measured": value,
                        "paired_median": mine[label]["first_audio_paired_median_ratio"],
                        "limit": TARGET_RATIO,
                        "op": "<=",
                        "pass": ok,
                    }
                )
    return ratios, targets


def table(res: dict[str, Any]) -> str:
    """A markdown table of a result: per text and path, first audio and total p50/p95."""
    host = res.get("host", {})
    rounds = res.get("settings", {}).get("repeats")
    ready = (res.get("ours") or {}).get("ready") or {}
    # The warm-up's RTF is not shown: it is one start-up's figure, not this run's.
    ours = f"; ours: {ready.get('precision')}" if ready else ""
    rows = [
        r
        for block in ((res.get("results") or {}).get("texts") or {}).values()
        for s in block["paths"].values()
        for r in s.get("samples", [])
    ]
    busiest = max((r.get("foreign_cpu_pct") or 0.0 for r in rows), default=None)
    if busiest is not None:
        ours += f"; other processes at most {busiest:.1f}% CPU during a request"
    lines = [f"{host_line(host)}; {rounds} rounds{ours}", ""]
    cells = []
    for name, block in (res.get("results") or {}).get("texts", {}).items():
        for path, s in block["paths"].items():
            f, t, a = s["first_audio_s"], s["total_s"], s["audio_s"]
            first = f"{f.get('p50', '-')} / {f.get('p95', '-')}"
            total = f"{t.get('p50', '-')} / {t.get('p95', '-')}"
            cells.append([name, path, first, total, a.get("p50", "-"), s["n"]])
    head = ["text", "path", "first audio p50 / p95 s", "total p50 / p95 s", "audio s", "n"]
    lines += markdown(head, cells)
    for t in res.get("targets", []):
        verdict = {True: "PASS", False: "FAIL", None: "-"}[t["pass"]]
        lines.append(f"\n{t['target']}: {t['measured']} (paired {t['paired_median']}) {verdict}")
    return "\n".join(lines)


def default_out() -> Path:
    host = socket.gethostname().split(".")[0]
    return RESULTS_DIR / f"{host}-{_dt.date.today().isoformat()}-wyoming-compare.json"


def start_ours(
    ns: argparse.Namespace,
    serve_args: list[str],
    running: list[str],
    out: dict[str, Any],
    problems: list[str],
) -> tuple[Daemon | None, int | None]:
    """Our daemon, with ``--wyoming-port`` where ``serve`` has it, ready and answering
    ``describe``; the paths it cannot serve leave ``running``.  (None, None) if it failed."""
    has = serve_has_wyoming()
    out["serve_has_wyoming_port"] = has
    args = list(serve_args)
    wyoming_port: int | None = None
    if has:
        wyoming_port = free_port()
        args += ["--wyoming-port", str(wyoming_port)]
    elif any(p.startswith("wyoming") for p in running):
        problems.append(
            "our `kokoro-service serve` has no --wyoming-port yet: the wyoming and "
            "wyoming-stream paths were not run"
        )
        running[:] = [p for p in running if not p.startswith("wyoming")]
    daemon = Daemon(args, ns.cache_dir, ns.daemon_log_level)
    out["command"] = shlex.join(daemon.argv)
    log(f"starting our daemon: {shlex.join(daemon.argv)}")
    try:
        out["start_s"] = rounded(daemon.start(ns.start_timeout), 2)
        out["ready"] = daemon.info
        log(f"our daemon is ready on {daemon.host}:{daemon.port} (pid {daemon.pid})")
        announced = daemon.info.get("wyoming")
        if isinstance(announced, dict) and isinstance(announced.get("port"), int):
            wyoming_port = int(announced["port"])  # where the ready file says it listens
        if wyoming_port is not None and any(p.startswith("wyoming") for p in running):
            proc = daemon.proc
            info, took = wait_describe(
                daemon.host,
                wyoming_port,
                time.monotonic() + 60.0,
                lambda: proc is not None and proc.poll() is None,
            )
            out["wyoming_port"] = wyoming_port
            out["wyoming_info"] = info_summary(info, took)
            log(f"our Wyoming port {wyoming_port} answers describe: {out['wyoming_info']}")
            if (
                "wyoming-stream" in running
                and not out["wyoming_info"]["supports_synthesize_streaming"]
            ):
                problems.append("our info says no synthesize streaming: wyoming-stream not run")
                running.remove("wyoming-stream")
    except RuntimeError as exc:
        problems.append(f"our daemon could not start or answer describe: {exc}")
        log(f"our daemon: {exc}")
        out["exit_code"] = daemon.stop()
        out["log_tail"] = [line for _, line in daemon.lines[-30:]]
        running[:] = [p for p in running if p not in OURS]
        return None, None
    return daemon, wyoming_port


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ns = parse_args(argv)
    paths = select_paths(ns.only)
    texts = select_texts(ns)
    out_path: Path = ns.out or default_out()
    t_start = time.monotonic()
    res: dict[str, Any] = {
        "benchmark": "wyoming-compare",
        "complete": False,
        "command": shlex.join(
            [sys.executable, *sys.argv]
            if argv is None
            else [sys.executable, "-m", "benchmarks.wyoming_compare", *argv]
        ),
        "host": host_facts(),
        "settings": {
            "paths": paths,
            "repeats": ns.repeats,
            "warmup_rounds": ns.warmup,
            "pieces": ns.pieces,
            "piece_delay_ms": ns.piece_delay_ms,
            "voice": ns.voice,
            "serve_args": list(ns.serve_arg),
            "peer_args": list(ns.peer_arg),
            "request_timeout_s": ns.request_timeout,
            "retries": ns.retries,
            "contended_pct": ns.contended_pct,
            "connection_per_request": True,
            "clock_starts": "when the request's first byte is sent (HELLO; synthesize; "
            "synthesize-start), right after connecting",
            "first_audio": "first audio-chunk with data / first AUDIO frame",
            "total": "audio-stop / END; synthesize-stopped for the streamed Wyoming paths",
        },
        "versions": {"ours": versions_here(), "peer": None},
        "ours": {},
        "peer": {},
        "weights": {},
        "results": None,
        "ratios": None,
        "targets": [],
        "problems": [],
    }
    problems: list[str] = res["problems"]
    want_ours = any(p in OURS for p in paths)
    want_peer = any(p in PEER for p in paths)
    serve_args = ["--voice", ns.voice, *ns.serve_arg]
    daemon: Daemon | None = None
    peer: Peer | None = None
    running = list(paths)
    wyoming_port: int | None = None
    try:
        settings = serve_settings(serve_args)
        res["settings"]["lang"] = settings.lang
        if want_ours:
            daemon, wyoming_port = start_ours(ns, serve_args, running, res["ours"], problems)
        # The weights: what our daemon resolves by default, by its own function.
        from kokoro_service.synthesis.models.sources import resolve_source

        source = resolve_source(settings.model_dir, settings.cache_dir)
        res["weights"] = {
            "kind": source.kind,
            "description": source.description,
            "dir": str(source.path),
            "weights_file": str(source.weights_path),
            "weights_bytes": source.weights_path.stat().st_size,
            "voice_file": str(source.voice_files().get(ns.voice, "")),
            "daemon_ready_model_source": (daemon.info.get("model_source") if daemon else None),
        }
        if daemon is not None and daemon.info.get("model_source") != source.kind:
            problems.append(
                f"our daemon loaded {daemon.info.get('model_source')} weights, the peer gets "
                f"{source.kind}"
            )
        if want_peer:
            if ns.peer_python is None:
                problems.append("no --peer-python: the peer was not run")
                res["peer"] = {"status": "not run: no --peer-python given"}
                running = [p for p in running if p not in PEER]
            else:
                peer = Peer(ns.peer_python, ns.voice, settings.lang, ns.peer_arg, ns.keep_peer_dir)
                res["peer"] = peer.info
                try:
                    log(f"starting the peer ({ns.peer_python}) on port {peer.port}")
                    peer.start(source, ns.start_timeout)
                    res["versions"]["peer"] = peer.info.get("versions")
                    peer.info["status"] = "ok"
                    log(f"the peer answers describe: {peer.info['info']}")
                    if not peer.info["info"]["supports_synthesize_streaming"] and (
                        "peer-stream" in running
                    ):
                        problems.append("the peer's info says no streaming: peer-stream not run")
                        running.remove("peer-stream")
                except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                    peer.info["status"] = f"failed to start: {exc}"
                    peer.info["log_tail"] = peer.log_tail()
                    problems.append(f"the peer could not start: {exc}")
                    log(f"the peer could not start: {exc}")
                    peer.stop()
                    peer = None
                    running = [p for p in running if p not in PEER]
        pids = [daemon.pid] if daemon is not None else []
        if peer is not None and peer.proc is not None:
            pids.append(peer.proc.pid)
        res["settings"]["paths_run"] = running
        if running:
            where = Targets(
                host="127.0.0.1",
                binary_port=daemon.port if daemon is not None else 0,
                wyoming_port=wyoming_port,
                peer_port=peer.port if peer is not None else None,
            )
            runner = Runner(ns, where, texts)
            runner.meter.pids.extend(pids)
            res["results"] = runner.run(running)
            res["ratios"], res["targets"] = comparisons(res["results"])
            errors = [
                (name, p, e)
                for name, b in res["results"]["texts"].items()
                for p, s in b["paths"].items()
                for e in s["errors"]
            ]
            if errors:
                problems.append(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
        res["complete"] = running == paths and not problems
    finally:
        if peer is not None:
            res["peer"]["exit_code"] = peer.stop()
        if daemon is not None:
            res["ours"]["exit_code"] = daemon.stop()
            res["ours"]["log"] = str(daemon.log_path)
            res["ours"]["warnings"] = [
                ln for ln in daemon.since(0) if " WARNING " in ln or " ERROR " in ln
            ][:50]
        res["wall_s"] = rounded(time.monotonic() - t_start, 1)
        res = strict_json(res)
        text = json.dumps(res, indent=2, allow_nan=False)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text + "\n", encoding="utf-8")
        print(text, flush=True)
        if res.get("results"):
            log("\n" + table(res))
        for problem in problems:
            log(f"problem: {problem}")
        log(f"result written to {out_path}")
    return res


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's finally: servers stop, JSON kept


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":  # the table of a result file
        print(table(json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))))
        sys.exit(0)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    sys.exit(0 if main()["complete"] else 1)
