"""First audio through the OpenAI-style endpoint beside the binary protocol, in one run.

One daemon (``kokoro-service serve`` with its HTTP port on; the real embedded weights
unless ``--serve-arg`` says otherwise), one call at a time, the paths in turn, round by
round (their order alternating):

* ``binary``: HELLO, the text as one TEXT frame, BYE on a new connection; first audio is
  the first AUDIO frame's arrival, from HELLO's send;
* ``openai-pcm``, ``-wav``, ``-mp3``, ``-opus``, ``-aac`` and ``-flac``:
  ``client.audio.speech.with_streaming_response.create`` of the official ``openai``
  package (one client, as a framework keeps one); first audio is the first body byte's
  arrival (after the 44-byte header for wav), from the call.  The compressed formats'
  first bytes hold their first frames: they are encoded as each AUDIO frame arrives.

The issue's bound: the endpoint's first bytes within 10 % of the binary protocol's first
audio for the same text (p50 over p50, and the median of the per-round ratios).

    .venv/bin/python -m benchmarks.openai_compare --out benchmarks/results/NAME.json
    .venv/bin/python -m benchmarks.openai_compare --table benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib.callers import TEXT_ONE, TEXT_THREE
from benchmarks.lib.harness import (
    Daemon,
    host_facts,
    log,
    print_table,
    rounded,
    strict_json,
    summary,
)
from benchmarks.lib.tables import host_line, markdown
from kokoro_service.wire.client import Connection

TEXTS = {"one_sentence": TEXT_ONE, "three_sentence": TEXT_THREE}
FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "flac")
PATHS = ("binary", *(f"openai-{fmt}" for fmt in FORMATS))
LIMIT = 1.10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="rounds run first and not kept")
    p.add_argument("--voice", default="jm_kumo")
    p.add_argument("--serve-arg", action="append", default=[], help="passed to the daemon")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None, help="print the table of a result")
    return p.parse_args(argv)


def binary(daemon: Daemon, text: str, voice: str, call_id: str) -> tuple[float, float]:
    """(first audio s, total s) of one call over the binary protocol."""
    with Connection(daemon.host, daemon.port, timeout=120) as conn:
        t0 = time.monotonic()
        conn.hello(call_id)
        conn.control(voice=voice)
        conn.text(text)
        conn.bye()
        reply = conn.read_until_end(timeout=120)
        done = time.monotonic()
    if not reply.ended or not reply.arrivals:
        raise RuntimeError(f"binary call {call_id}: no audio or no END")
    return reply.arrivals[0] - t0, done - t0


def openai_path(client: Any, fmt: str) -> Callable[[str, str], tuple[float, float]]:
    skip = 44 if fmt == "wav" else 0  # the streamed WAV header is not audio

    def run(text: str, voice: str) -> tuple[float, float]:
        t0 = time.monotonic()
        first = None
        seen = 0
        with client.audio.speech.with_streaming_response.create(
            model="kokoro", voice=voice, input=text, response_format=fmt
        ) as resp:
            for chunk in resp.iter_bytes():
                seen += len(chunk)
                if first is None and seen > skip:
                    first = time.monotonic() - t0
        if first is None:
            raise RuntimeError(f"openai {fmt}: no audio")
        return first, time.monotonic() - t0

    return run


def table(res: dict[str, Any]) -> str:
    host = res["host"]
    lines = [
        f"{host_line(host)}; {res['settings']['rounds']} rounds; "
        f"precision {res['ready'].get('precision')}",
        "",
    ]
    rows = []
    for text, paths in res["results"].items():
        for path, r in paths.items():
            ratio = res["ratios"].get(text, {}).get(path)
            shown = f"{ratio['p50_ratio']}; {ratio['paired_median']}" if ratio else "-"
            first = f"{r['first_s']['p50']} / {r['first_s']['p95']}"
            rows.append([text, path, first, r["total_s"]["p50"], shown])
    head = [
        "text",
        "path",
        "first audio p50 / p95 s",
        "total p50 s",
        "first audio / binary (p50; paired)",
    ]
    lines += markdown(head, rows)
    lines += ["", f"Bound: at most {LIMIT} ({'PASS' if res['pass'] else 'FAIL'})."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ns = parse_args(argv)
    if ns.table is not None:
        return print_table(ns.table, table)
    import openai

    t_start = time.monotonic()
    daemon = Daemon([*ns.serve_arg, "--http-port", "0"], ns.cache_dir, "info")
    log(f"starting {shlex.join(daemon.argv)}")
    daemon.start(timeout=600)
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {
        t: {p: [] for p in PATHS} for t in TEXTS
    }
    try:
        http = daemon.info["http"]
        client = openai.OpenAI(
            base_url=f"http://{http['host']}:{http['port']}/v1", api_key="-", max_retries=0
        )
        runs: dict[str, Callable[[str, str], tuple[float, float]]] = {
            f"openai-{fmt}": openai_path(client, fmt) for fmt in FORMATS
        }
        for r in range(ns.warmup + ns.rounds):
            order = PATHS if r % 2 == 0 else PATHS[::-1]
            for name, text in TEXTS.items():
                for path in order:
                    if path == "binary":
                        got = binary(daemon, text, ns.voice, f"{r}{len(name)}")
                    else:
                        got = runs[path](text, ns.voice)
                    if r >= ns.warmup:
                        samples[name][path].append(got)
            log(f"round {r + 1} of {ns.warmup + ns.rounds} done")
    finally:
        code = daemon.stop()
    results: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    ok = True
    for name, paths in samples.items():
        results[name] = {
            p: {
                "first_s": summary([f for f, _ in xs]),
                "total_s": summary([t for _, t in xs]),
                "n": len(xs),
            }
            for p, xs in paths.items()
        }
        base = paths["binary"]
        ratios[name] = {}
        for p in PATHS[1:]:
            p50 = results[name][p]["first_s"]["p50"] / results[name]["binary"]["first_s"]["p50"]
            paired = statistics.median(a[0] / b[0] for a, b in zip(paths[p], base, strict=True))
            ratios[name][p] = {"p50_ratio": rounded(p50, 3), "paired_median": rounded(paired, 3)}
            ok = ok and p50 <= LIMIT and paired <= LIMIT
    res = {
        "benchmark": "openai-compare",
        "command": shlex.join(
            [sys.executable, "-m", "benchmarks.openai_compare", *(argv or sys.argv[1:])]
        ),
        "host": host_facts(),
        "settings": {"rounds": ns.rounds, "warmup_rounds": ns.warmup, "voice": ns.voice},
        "ready": daemon.info,
        "results": results,
        "ratios": ratios,
        "limit": LIMIT,
        "pass": ok,
        "daemon_exit_code": code,
        "wall_s": rounded(time.monotonic() - t_start, 1),
    }
    out = json.dumps(strict_json(res), indent=2)
    if ns.out is not None:
        ns.out.write_text(out + "\n", encoding="utf-8")
    print(out)
    return res


if __name__ == "__main__":
    main()
