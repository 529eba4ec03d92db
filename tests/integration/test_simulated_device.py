"""The simulated device: the real daemon, sockets, scheduler and G2P, with each forward
pass slept for the time a calibration gives, and the density benchmark's stage report.

Sleeps are lower bounds on any host, so the test asserts only those: a first segment
cannot be heard before its pass could end.  How long anything takes beyond that is the
host's, and is not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import density
from benchmarks.density import streams_at_target
from benchmarks.lib.simdevice import DEFAULT_CALIBRATION, Calibration, fit_calibration

FIXED = 0.03


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    path = tmp_path / "calibration.json"
    model = {"fixed_s": FIXED, "per_item_frame_s": 1e-5, "phonemes_per_audio_s": 12.7}
    path.write_text(json.dumps({"name": "test", "model": model}), encoding="utf-8")
    return path


def test_the_committed_calibration_loads() -> None:
    c = Calibration.load(DEFAULT_CALIBRATION)
    assert c.fixed_s > 0 and c.per_item_frame_s > 0
    assert c.seconds(64, 240) > c.seconds(1, 240) > c.fixed_s
    assert c.frames(127, 1.0) == 400  # 10 s of audio in 600-sample frames
    assert c.frames(127, 2.0) == 200  # twice the speed, half the audio


def test_old_and_new_policy_on_a_simulated_device(
    tiny_dir: Path, tmp_path: Path, calibration: Path
) -> None:
    res = density.main(
        [
            "--quick",
            "--ns=1,4",
            "--modes=batched-fill,batched",
            "--max-batch=4",
            "--device=simulated",
            f"--calibration={calibration}",
            f"--model-dir={tiny_dir}",
            f"--cache-dir={tmp_path}",
            f"--log-dir={tmp_path}",
            "--arrival-window=0.3",
            "--stop-factor=0",
            "--extra-daemon-args=--torch-threads 1",
            f"--out={tmp_path / 'density.json'}",
        ]
    )
    assert res["complete"] is True
    assert res["simulated_device"]["model"]["fixed_s"] == FIXED
    for mode, policy in (("batched-fill", "fill"), ("batched", "latency")):
        m = res["modes"][mode]
        assert m["daemon_exit_code"] == 0, m.get("error")
        args = m["daemon_args"]
        assert args[args.index("--batch-policy") + 1] == policy
        assert m["ready"]["device"] == "simulated"
        assert "benchmarks.lib.simulated_daemon" in m["daemon_command"]
        for row in m["per_n"]:
            n, stages = row["n"], row["stages"]
            assert row["calls_without_end"] == 0 and row["calls_without_audio"] == 0
            assert stages["first_segments"] == n, "one first segment per call, each traced"
            assert stages["segments"] >= n
            assert stages["daemon_latency_s"]["n"] == n
            # A pass holds the device at least its fixed time, and the caller hears the
            # audio only after it: the trace and the callers' clocks agree on order.
            assert stages["forward_s"]["min"] >= FIXED
            assert stages["daemon_latency_s"]["min"] >= FIXED
            assert stages["first_written_s"]["min"] >= 0
            assert stages["wait_s"]["min"] >= 0 and stages["deliver_s"]["min"] >= 0
            assert 1 <= stages["batch_size"]["max"] <= 4
            # The simulated audio speaks at the real rate (about 12.5 characters a second).
            assert 8 < row["text_chars_per_audio_s"] < 20
        assert m["streams_at_daemon_target"] == streams_at_target(
            m["per_n"], key="meets_daemon_target"
        )
    trace = tmp_path / "batched" / "trace.jsonl"
    first = json.loads(trace.read_text(encoding="utf-8").splitlines()[0])
    assert first["cut"] <= first["claimed"] <= first["start"] <= first["end"]
    assert first["end"] <= first["delivered"]


def test_a_calibration_is_fitted_back_from_a_trace() -> None:
    # A device that took 80 ms a pass plus 30 us per item-frame, as a trace records it.
    records = []
    for k, (size, audio_s) in enumerate([(1, 2.0), (1, 4.0), (4, 3.0), (16, 2.5), (8, 5.0)]):
        frames = audio_s * 40
        seconds = 0.08 + 3e-5 * size * frames
        start = 10.0 * k
        records += [
            {"start": start, "end": start + seconds, "audio_s": audio_s, "chars": 12.5 * audio_s}
            for _ in range(size)
        ]
    fitted = fit_calibration(records, "fake")["model"]
    assert fitted["fixed_s"] == pytest.approx(0.08, abs=1e-5)
    assert fitted["per_item_frame_s"] == pytest.approx(3e-5, rel=1e-3)
    assert fitted["phonemes_per_audio_s"] == pytest.approx(12.5)
    with pytest.raises(ValueError, match="two different shapes"):
        fit_calibration(records[:1], "one")
