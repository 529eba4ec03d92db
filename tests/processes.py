"""``kokoro-service`` as child processes: the commands an operator runs, and ``serve``
ready when its ``--ready-file`` appears."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.conftest import wait_for

BIN = Path(sys.executable).parent / "kokoro-service"


def run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=full_env, check=False
    )


class Daemon:
    """``kokoro-service serve`` as a child process on ephemeral ports.

    Ready when its ``--ready-file`` appears (the ports come from it), never from a log line;
    stderr is kept for assertions on what an operator reads.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.ready_file = Path(tempfile.mkdtemp(prefix="kokoro-ready-")) / "ready.json"
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [
                str(BIN),
                "serve",
                "--tcp-port",
                "0",
                "--udp-port",
                "0",
                "--ready-file",
                str(self.ready_file),
                *args,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not wait_for(lambda: self.ready_file.exists() or self.proc.poll() is not None, 180):
            raise RuntimeError("daemon did not start:\n" + "".join(self.lines))
        if not self.ready_file.exists():
            raise RuntimeError("daemon exited:\n" + "".join(self.lines))
        self.ready = json.loads(self.ready_file.read_text())
        self.port = int(self.ready["tcp"]["port"])

    def _read(self) -> None:
        if self.proc.stderr is None:
            return
        for line in self.proc.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code
