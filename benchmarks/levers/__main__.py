"""The command line of :mod:`benchmarks.levers`: ``--only`` picks the levers (all by
default); the ones that need an engine share one, loaded once by :class:`Bench`, and run
first, in the order given; ``nodelay`` and the fresh-process levers follow.  The result
is one JSON object, a key per lever beside ``meta``."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import benchmarks.levers
from benchmarks.levers.batching import lever_batching
from benchmarks.levers.common import Bench
from benchmarks.levers.engine import lever_copies, lever_grad, lever_threads, lever_voices
from benchmarks.levers.g2p import lever_g2p, lever_tagger
from benchmarks.levers.int8 import lever_int8, lever_onnxruntime
from benchmarks.levers.loops import lever_loops
from benchmarks.levers.nodelay import lever_nodelay
from benchmarks.levers.precision import lever_fused, lever_precision
from benchmarks.levers.process import lever_denormals, lever_layout, lever_warmup
from benchmarks.levers.profile import lever_profile
from benchmarks.lib.fresh import Weights
from benchmarks.lib.harness import RESULTS_DIR, cpu_flags, cpu_model, git_commit, log

LEVERS = (
    "grad",
    "threads",
    "denormals",
    "voices",
    "copies",
    "nodelay",
    "warmup",
    "layout",
    "int8",
    "profile",
    "precision",
    "fused",
    "onnxruntime",
    "batching",
    "g2p",
    "tagger",
    "loops",
)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    log(f"lever {name} ...")
    yield
    log(f"lever {name} done in {time.perf_counter() - t0:.1f} s")


def run(ns: argparse.Namespace) -> dict[str, Any]:
    import torch

    levers = [x.strip() for x in ns.only.split(",") if x.strip()]
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    threads = ns.threads or max(1, os.cpu_count() or 1)
    if ns.device != "cpu" and levers != ["loops"]:
        raise SystemExit("--device other than cpu is for --only loops; the rest measure the CPU")
    from kokoro_service.config import default_cache_dir

    weights = Weights(ns.cache_dir or default_cache_dir(), ns.model_dir)
    res: dict[str, Any] = {
        "meta": {
            "command": " ".join(
                [Path(sys.executable).name, "-m", "benchmarks.levers", *sys.argv[1:]]
            ),
            "torch": torch.__version__,
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "runs": ns.runs,
            "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(),
        }
    }
    engine_levers = [
        x
        for x in levers
        if x not in ("nodelay", "denormals", "warmup", "layout")  # these need no engine here
    ]
    if engine_levers:
        b = Bench(weights, threads, ns.device)
        res["meta"]["source"] = b.source.description
        res["meta"]["device"] = b.engine.device
        if b.engine.device.startswith("cuda"):
            res["meta"]["gpu"] = torch.cuda.get_device_name(torch.device(b.engine.device))
        res["meta"]["voice"] = b.voice
        fns: dict[str, Callable[[], dict[str, Any]]] = {
            "grad": lambda: lever_grad(b, ns.runs),
            "threads": lambda: lever_threads(b, ns.runs),
            "voices": lambda: lever_voices(b, ns.runs),
            "copies": lambda: lever_copies(b, ns.runs),
            "int8": lambda: lever_int8(b, ns.runs),
            "profile": lambda: lever_profile(b, ns.runs),
            "precision": lambda: lever_precision(b, max(1, ns.runs // 5), ns.compile),
            "fused": lambda: lever_fused(b, max(1, ns.runs // 5)),
            "onnxruntime": lambda: lever_onnxruntime(b, max(1, ns.runs // 5)),
            "batching": lambda: lever_batching(b, max(1, ns.runs // 5)),
            "g2p": lambda: lever_g2p(b, ns.runs),
            "tagger": lambda: lever_tagger(b, ns.runs),
            "loops": lambda: lever_loops(b, ns.runs),
        }
        for name in engine_levers:
            with phase(name):
                res[name] = fns[name]()
    if "nodelay" in levers:
        with phase("nodelay"):
            res["nodelay"] = lever_nodelay(ns.runs)
    if "denormals" in levers:
        with phase("denormals"):
            res["denormals"] = lever_denormals(weights, threads, ns.runs)
    if "warmup" in levers:
        with phase("warmup"):
            res["warmup"] = lever_warmup(weights, threads, ns.warmup_repeats)
    if "layout" in levers:
        with phase("layout"):
            res["layout"] = lever_layout(weights, threads, ns.runs)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.levers",
        description=str(benchmarks.levers.__doc__).splitlines()[0],
    )
    p.add_argument("--only", default=",".join(LEVERS), help=f"comma list of {', '.join(LEVERS)}")
    p.add_argument("--runs", type=int, default=10, help="measured runs per variant [10]")
    p.add_argument("--warmup-repeats", type=int, default=3, help="fresh processes per variant [3]")
    p.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    p.add_argument("--cache-dir", type=Path, default=None, help="embedded-weights cache")
    p.add_argument("--device", default="cpu", help="loops only: cuda, cuda:N or mps [cpu]")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="Kokoro checkout to load instead of the daemon's default source",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="precision lever: also time the bf16 vocoder under torch.compile (minutes)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--label", default="", help="appended to the result file's date")
    ns = p.parse_args(argv)
    res = run(ns)
    host = socket.gethostname().split(".")[0]
    label = f"-{ns.label}" if ns.label else ""
    path = ns.results_dir / f"{host}-{_dt.date.today().isoformat()}{label}-levers.json"
    ns.results_dir.mkdir(parents=True, exist_ok=True)
    res["meta"]["result_file"] = str(path)
    text = json.dumps(res, indent=2)
    path.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
