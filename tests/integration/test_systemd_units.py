"""The systemd units: they verify, and they stay sandboxed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

UNITS = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def _installable(tmp_path: Path, unit: str, name: str) -> Path:
    """The unit with its install paths pointed at things that exist on this machine."""
    text = (UNITS / unit).read_text()
    text = text.replace(
        "/opt/kokoro-service/.venv/bin/kokoro-service", shutil.which("true") or "/bin/true"
    )
    text = text.replace("WorkingDirectory=/opt/kokoro-service", f"WorkingDirectory={tmp_path}")
    out = tmp_path / name
    out.write_text(text)
    return out


@pytest.mark.parametrize(
    ("unit", "name"),
    [
        ("kokoro-service.service", "kokoro-service.service"),
        ("kokoro-service@.service", "kokoro-service@gpu0.service"),
    ],
)
def test_units_have_the_required_hardening(unit: str, name: str) -> None:
    text = (UNITS / unit).read_text()
    for line in (
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CacheDirectory=kokoro-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "DynamicUser=yes",
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/opt/kokoro-service/.venv/bin/kokoro-service serve",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^EnvironmentFile=", text, re.M)
    timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert timeout > 20, "systemd must wait longer than the default drain timeout"


@needs_systemd
@pytest.mark.parametrize(
    ("unit", "name"),
    [
        ("kokoro-service.service", "kokoro-service.service"),
        ("kokoro-service@.service", "kokoro-service@gpu0.service"),
    ],
)
def test_systemd_analyze_verify(tmp_path: Path, unit: str, name: str) -> None:
    path = _installable(tmp_path, unit, name)
    proc = subprocess.run(
        [str(ANALYZE), "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if name in ln]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


@needs_systemd
def test_exposure_score(tmp_path: Path) -> None:
    path = _installable(tmp_path, "kokoro-service.service", "kokoro-service.service")
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot score offline: {proc.stderr.strip()[:200]}")
    print(f"systemd-analyze security exposure: {m.group(1)}")
    assert float(m.group(1)) <= 2.5


@pytest.mark.parametrize("unit", ["kokoro-service.service", "kokoro-service@.service"])
def test_units_allow_the_descriptors_the_default_caps_can_take(unit: str) -> None:
    from kokoro_service.config import Settings

    text = (UNITS / unit).read_text()
    match = re.search(r"^LimitNOFILE=(\d+)$", text, re.MULTILINE)
    assert match, "LimitNOFILE missing"
    every_port = Settings(wyoming_port=10200, http_port=8091)
    assert int(match.group(1)) >= every_port.descriptors_needed()
