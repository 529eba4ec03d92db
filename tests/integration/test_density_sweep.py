"""The density benchmark's smoke test: both serving modes, real sockets, the real daemon on
a tiny random checkpoint, on the CPU.  It checks structure and sanity, never speed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import density
from benchmarks.density import (
    describe_weights,
    meets_target,
    streams_at_target,
    table,
    zero_stall_streams,
)


def _row(n: int, p95: float, stalls: int = 0, without_end: int = 0) -> dict[str, Any]:
    row: dict[str, Any] = {
        "n": n,
        "calls": n,
        "ttfa_s": {"n": n, "p50": p95 / 2, "p95": p95},
        "stall_count": stalls,
        "calls_without_end": without_end,
        "calls_without_audio": 0,
    }
    row["meets_target"] = meets_target(row, 0.150)
    return row


def test_streams_at_target_needs_every_n_up_to_it() -> None:
    rows = [_row(1, 0.08), _row(2, 0.12), _row(4, 0.16), _row(8, 0.10)]
    assert streams_at_target(rows) == 2, "N = 8 passing does not count after N = 4 failed"
    assert streams_at_target([_row(1, 0.08), _row(2, 0.09, stalls=1)]) == 1
    assert streams_at_target([_row(1, 0.08, without_end=1)]) == 0
    assert streams_at_target([_row(1, math.nan)]) == 0
    assert streams_at_target([]) == 0
    assert zero_stall_streams(rows) == 8, "TTFA does not count, only stalls and END"
    assert zero_stall_streams([_row(1, 0.3), _row(2, 0.3, stalls=2), _row(4, 0.3)]) == 1


def test_the_weights_used_are_named(tiny_dir: Path) -> None:
    real = describe_weights(None, None, {"model_source": "embedded"})
    assert real["label"].startswith("embedded real weights")
    assert real["random_weight_checkpoint"] is False
    tiny = describe_weights(tiny_dir, None, {"model_source": "model-dir"})
    assert tiny["random_weight_checkpoint"] is True and tiny["architecture"] == "tiny"
    assert "random-weight checkpoint" in tiny["label"]
    assert describe_weights(tiny_dir, "mine", {})["label"] == "mine"


def test_quick_sweep_in_both_modes_over_real_sockets(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "density.json"
    # --stop-factor 0: a slow shared CPU must not cut the sweep short.  fp32 skips the
    # start-up precision comparison, max batch 2 the warm-up of larger batches, and one
    # torch thread keeps a 2-core box that runs other torch work from thrashing OpenMP.
    res = density.main(
        [
            "--quick",
            "--ns=1,2",
            "--modes=batch1,batched",
            "--max-batch=2",
            "--device=cpu",
            f"--model-dir={tiny_dir}",
            f"--cache-dir={tmp_path}",
            f"--log-dir={tmp_path}",
            "--arrival-window=0.3",
            "--stop-factor=0",
            "--extra-daemon-args=--precision fp32 --torch-threads 1",
            f"--out={out}",
        ]
    )
    as_json = json.loads(json.dumps(res, allow_nan=False))
    assert json.loads(out.read_text(encoding="utf-8")) == as_json
    assert json.loads(capsys.readouterr().out) == as_json, "stdout carries the same JSON"

    assert res["complete"] is True and list(res["modes"]) == ["batch1", "batched"]
    assert res["weights"]["random_weight_checkpoint"] is True
    assert res["weights"]["architecture"] == "tiny"
    assert res["host"]["cpu_count"] and res["targets"]["ttfa_p95_s"] == 0.150
    no_gpu = shutil.which("nvidia-smi") is None
    assert (res["host"]["gpu"] is None) == no_gpu

    for mode, batch in (("batch1", 1), ("batched", 2)):
        m = res["modes"][mode]
        assert "error" not in m and m["daemon_exit_code"] == 0, m.get("error")
        args = m["daemon_args"]
        assert args[args.index("--max-batch") + 1] == str(batch)
        assert m["ready"]["device"] == "cpu" and m["daemon"]["precision"] == "fp32"
        assert m["ready"]["torch_threads"] == 1, "--extra-daemon-args reach the daemon"
        assert m["ready"]["max_batch"] == batch
        assert m["stopped_early"] is None
        assert Path(m["daemon_log"]).parent == tmp_path / mode
        assert [r["n"] for r in m["per_n"]] == [1, 2]
        for row in m["per_n"]:
            n = row["n"]
            assert row["calls"] == n and row["calls_not_connected"] == 0
            assert row["calls_without_end"] == 0 and row["calls_without_audio"] == 0
            assert row["ttfa_s"]["n"] == n, "every call has a time to first audio"
            assert 0 < row["ttfa_s"]["p50"] <= row["ttfa_s"]["p95"]
            assert math.isfinite(row["ttfa_s"]["max"])
            assert row["stall_count"] >= 0 and row["stall_s"] >= 0
            assert (row["stall_count"] == 0) == (row["stall_s"] == 0)
            assert row["frames_per_call"] >= 1 and row["audio_s_per_call"] > 0
            assert row["meets_target"] == (row["ttfa_s"]["p95"] <= 0.150 and not row["stall_count"])
            assert (row["gpu"] is None) == no_gpu
        assert m["streams_at_target"] == streams_at_target(m["per_n"])
        assert res["streams_at_target"][mode] == m["streams_at_target"]

    rendered = table(res).splitlines()
    assert [
        ln.split(" | ")[0] for ln in rendered if ln.startswith("| 1 ") or ln.startswith("| 2 ")
    ] == ["| 1", "| 2"]
    one, many = res["streams_at_target"]["batch1"], res["streams_at_target"]["batched"]
    assert res["batching_gain"] == (round(many / one, 3) if one else None)
