"""Wyoming comparison: our daemon's binary protocol, our Wyoming port, and a Wyoming Kokoro
server from PyPI (``wyoming-kokoro-torch``), on the same host, the same weights, the same
texts, in one run.

Our side is ``kokoro-service serve`` as a subprocess (the harness's :class:`Daemon`: ready
when its ready file appears), with ``--wyoming-port`` on a free port added to its
arguments (:mod:`benchmarks.lib.wyoming_ours`).  The peer is ``PEER_PYTHON -m
wyoming_kokoro_torch`` in its own virtual environment (it pins ``wyoming<1.8``), run with
no network (``HF_HUB_OFFLINE=1``, an empty ``HF_HOME``) on the weights our daemon resolves
by default: the directory that ``kokoro_service.synthesis.models.sources.resolve_source``
returns for the daemon's settings, laid out by symlinks as the peer's ``--data-dir``
(:mod:`benchmarks.lib.wyoming_peer` says how, and which voice name speaks ``--voice`` with
our ``--lang``).

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
import datetime as _dt
import functools
import json
import math
import shlex
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.lib.callers import TEXT_ONE
from benchmarks.lib.harness import (
    RESULTS_DIR,
    host_facts,
    log,
    print_table,
    rounded,
    serve_settings,
    strict_json,
)
from benchmarks.lib.path_rounds import Rounds, busiest, p50, paths_markdown, ratios
from benchmarks.lib.tables import host_line
from benchmarks.lib.timed_requests import Sample, binary_once, pieces_of, wyoming_once
from benchmarks.lib.wyoming_ours import Ours
from benchmarks.lib.wyoming_peer import Peer, shared_weights, versions_here

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


# ------------------------------------------------------------------------------ the run


@dataclass
class Targets:
    host: str
    binary_port: int
    wyoming_port: int | None
    peer_port: int | None


def one_request(
    where: Targets, path: str, text: str, pieces: list[str], *, delay: float, timeout: float
) -> Sample:
    """One request of ``path`` on a new connection, to the server that path names."""
    if path in ("binary", "binary-stream"):
        chosen = [text] if path == "binary" else pieces
        return binary_once(where.host, where.binary_port, chosen, delay, timeout)
    port = where.wyoming_port if path.startswith("wyoming") else where.peer_port
    if port is None:
        return Sample(error="server not running")
    return asyncio.run(
        wyoming_once(
            where.host,
            port,
            text,
            pieces,
            streaming=path in STREAMED,
            delay=delay,
            timeout=timeout,
            primer=REUSE_PRIMER if path == "peer-reused" else None,
        )
    )


def comparisons(res: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ratios per text: our Wyoming port against our binary protocol (the issue's target),
    the peer against our Wyoming port, and each path's audio length against binary's."""
    by_text: dict[str, Any] = {}
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
            if num in paths and den in paths:
                mine[label] = ratios(paths[num], paths[den])
        if "binary" in paths:  # both sides should speak about as long
            base = p50(paths["binary"], "audio_s")
            mine["audio_s_over_binary"] = {
                p: rounded(p50(paths[p], "audio_s") / base, 3) for p in paths if p != "binary"
            }
        by_text[name] = mine
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
    return by_text, targets


def table(res: dict[str, Any]) -> str:
    """A markdown table of a result: per text and path, first audio and total p50/p95."""
    host = res.get("host", {})
    rounds = res.get("settings", {}).get("repeats")
    ready = (res.get("ours") or {}).get("ready") or {}
    # The warm-up's RTF is not shown: it is one start-up's figure, not this run's.
    ours = f"; ours: {ready.get('precision')}" if ready else ""
    most = busiest(res.get("results"))
    if most is not None:
        ours += f"; other processes at most {most:.1f}% CPU during a request"
    lines = [f"{host_line(host)}; {rounds} rounds{ours}", ""]
    lines += paths_markdown(res.get("results"))
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
    res: dict[str, Any],
    problems: list[str],
) -> Ours | None:
    """Our daemon, with ``--wyoming-port`` where ``serve`` has it, ready and answering
    ``describe``; the paths it cannot serve leave ``running``.  None if it failed."""
    ours = Ours(serve_args, ns.cache_dir, ns.daemon_log_level)
    res["ours"] = ours.info
    if not ours.has_wyoming and any(p.startswith("wyoming") for p in running):
        problems.append(
            "our `kokoro-service serve` has no --wyoming-port yet: the wyoming and "
            "wyoming-stream paths were not run"
        )
        running[:] = [p for p in running if not p.startswith("wyoming")]
    try:
        ours.start(ns.start_timeout, describe=any(p.startswith("wyoming") for p in running))
    except RuntimeError as exc:
        problems.append(f"our daemon could not start or answer describe: {exc}")
        log(f"our daemon: {exc}")
        ours.give_up()
        running[:] = [p for p in running if p not in OURS]
        return None
    if (
        "wyoming-stream" in running
        and not ours.info["wyoming_info"]["supports_synthesize_streaming"]
    ):
        problems.append("our info says no synthesize streaming: wyoming-stream not run")
        running.remove("wyoming-stream")
    return ours


def start_peer(
    ns: argparse.Namespace,
    lang: str,
    source: Any,
    running: list[str],
    res: dict[str, Any],
    problems: list[str],
) -> Peer | None:
    """The peer on our weights, answering ``describe``; the paths it cannot serve leave
    ``running``.  None if it was not run or did not start."""
    if ns.peer_python is None:
        problems.append("no --peer-python: the peer was not run")
        res["peer"] = {"status": "not run: no --peer-python given"}
        running[:] = [p for p in running if p not in PEER]
        return None
    peer = Peer(ns.peer_python, ns.voice, lang, ns.peer_arg, ns.keep_peer_dir)
    res["peer"] = peer.info
    failed = peer.launch(source, ns.start_timeout)
    if failed is not None:
        problems.append(f"the peer could not start: {failed}")
        running[:] = [p for p in running if p not in PEER]
        return None
    res["versions"]["peer"] = peer.info.get("versions")
    if not peer.info["info"]["supports_synthesize_streaming"] and "peer-stream" in running:
        problems.append("the peer's info says no streaming: peer-stream not run")
        running.remove("peer-stream")
    return peer


def measure(
    ns: argparse.Namespace,
    texts: dict[str, str],
    where: Targets,
    pids: list[int],
    paths: list[str],
) -> dict[str, Any]:
    """The rounds: each text through each path once a round, the order rotating."""
    once = functools.partial(
        one_request, where, delay=ns.piece_delay_ms / 1e3, timeout=ns.request_timeout
    )
    rounds = Rounds(
        once,
        texts,
        {name: pieces_of(text, ns.pieces) for name, text in texts.items()},
        warmup=ns.warmup,
        repeats=ns.repeats,
        retries=ns.retries,
        contended_pct=ns.contended_pct,
        wait_idle=ns.wait_idle,
    )
    rounds.meter.pids.extend(pids)  # the servers' CPU use is not others' load
    return rounds.run(paths)


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
    serve_args = ["--voice", ns.voice, *ns.serve_arg]
    ours: Ours | None = None
    peer: Peer | None = None
    running = list(paths)
    try:
        settings = serve_settings(serve_args)
        res["settings"]["lang"] = settings.lang
        if any(p in OURS for p in paths):
            ours = start_ours(ns, serve_args, running, res, problems)
        daemon = ours.daemon if ours is not None else None
        source, res["weights"] = shared_weights(settings, ns.voice)  # what the peer gets
        res["weights"]["daemon_ready_model_source"] = (
            daemon.info.get("model_source") if daemon else None
        )
        if daemon is not None and daemon.info.get("model_source") != source.kind:
            problems.append(
                f"our daemon loaded {daemon.info.get('model_source')} weights, the peer gets "
                f"{source.kind}"
            )
        if any(p in PEER for p in paths):
            peer = start_peer(ns, settings.lang, source, running, res, problems)
        res["settings"]["paths_run"] = running
        if running:
            pids = [daemon.pid] if daemon is not None else []
            if peer is not None and peer.proc is not None:
                pids.append(peer.proc.pid)
            where = Targets(
                host="127.0.0.1",
                binary_port=daemon.port if daemon is not None else 0,
                wyoming_port=ours.wyoming_port if ours is not None else None,
                peer_port=peer.port if peer is not None else None,
            )
            res["results"] = measure(ns, texts, where, pids, running)
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
        if ours is not None:
            ours.stop()
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
        print_table(Path(sys.argv[2]), table)
        sys.exit(0)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    sys.exit(0 if main()["complete"] else 1)
