"""The segment trace: one JSON line a segment, readable at once, and never a worker's crash."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kokoro_service.ops.trace import SegmentTrace


def test_each_record_is_one_line_readable_before_close(tmp_path: Path) -> None:
    trace = SegmentTrace(tmp_path / "t.jsonl")
    trace.write({"call": 'a"b\n', "cut": 1.5})
    trace.write({"call": "c", "cut": 2.0})
    lines = (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(ln)["call"] for ln in lines] == ['a"b\n', "c"]  # no close needed
    trace.close()
    trace.write({"call": "late"})  # after close: dropped, not raised
    assert len((tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failing_disk_ends_the_trace_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    trace = SegmentTrace(Path("/dev/full"))
    with caplog.at_level(logging.ERROR, logger="kokoro_service.ops.trace"):
        for _ in range(3):
            trace.write({"call": "x"})
    assert [r.getMessage() for r in caplog.records if "stopped" in r.getMessage()] == [
        "--trace-file /dev/full stopped: [Errno 28] No space left on device"
    ]


def test_the_trace_stops_at_its_size_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"call":"earlier run"}\n', encoding="utf-8")  # appended to: it counts
    trace = SegmentTrace(path, max_bytes=100)
    with caplog.at_level(logging.WARNING, logger="kokoro_service.ops.trace"):
        for i in range(20):
            trace.write({"call": str(i)})
    assert path.stat().st_size <= 100
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1 + 5  # 24 + 5 * 13 bytes
    assert [r.getMessage() for r in caplog.records] == [
        f"--trace-file {path} stopped: it reached 100 bytes"
    ]
