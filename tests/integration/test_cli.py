"""CLI, launcher and the daemon as a real process: options, env vars, signals, exit codes."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from click.testing import CliRunner

from kokoro_service.cli import main
from kokoro_service.wire.client import Connection
from tests.conftest import REPO, TEST_TIMEOUT, http_get, wait_for
from tests.processes import BIN, Daemon, run


def test_serve_help_documents_every_option_with_its_env_var() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    options = re.findall(r"^\s+(--[a-z-]+)", result.output, flags=re.M)
    assert len(options) >= 25
    for opt in options:
        if opt == "--help":
            continue
        block = result.output.split(opt, 1)[1].split("\n  --", 1)[0]
        assert "env var: KOKORO_" in " ".join(block.split()), opt  # wherever click wraps
    for seed in ("KOKORO_VOICE", "KOKORO_TCP_PORT", "KOKORO_UDP_PORT", "KOKORO_DEVICE"):
        assert seed in result.output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KOKORO_TCP_PORT": "abc"}, "'abc' is not a valid integer"),
        ({"KOKORO_UDP_PORT": "70000"}, "'--udp-port' / KOKORO_UDP_PORT: 70000 is not in 0..65535"),
        ({"KOKORO_SPEED": "9"}, "'--speed' / KOKORO_SPEED: 9.0 is not in 0.5..2"),
        ({"KOKORO_ALLOW": "10.0.0.0/33"}, "not an address or CIDR"),
        ({"KOKORO_DEVICE": "gpu"}, "KOKORO_DEVICE: 'gpu' is not one of auto, cpu, cuda"),
        ({"KOKORO_WORKERS": "0"}, "'--workers' / KOKORO_WORKERS: 0 is not in 1..64"),
        ({"KOKORO_LOG_LEVEL": "loud"}, "'loud' is not one of"),
    ],
)
def test_bad_environment_values_fail_clearly(env: dict[str, str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve"], env=env)
    assert result.exit_code == 2
    assert message in result.output, result.output


@pytest.mark.parametrize(
    "field", ["speed", "hello_timeout", "write_timeout", "drain_timeout", "flush_timeout"]
)
def test_nan_and_infinity_are_out_of_every_range(field: str) -> None:
    from kokoro_service.config import Settings
    from kokoro_service.errors import ConfigError

    for bad in ("nan", "inf"):
        values: dict[str, Any] = {field: float(bad)}
        with pytest.raises(ConfigError, match=f"{bad} is not a finite number"):
            Settings(**values)


def test_device_names_are_read_as_select_device_reads_them() -> None:
    from kokoro_service.config import Settings

    for name in ("CUDA", " cpu", "Auto", "cuda:12", "mps:0"):
        assert Settings(device=name).device == name  # select_device normalises


def test_directory_options_refuse_a_file(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_text("x")
    for option in ("--model-dir", "--cache-dir"):
        result = CliRunner().invoke(main, ["serve", option, str(plain)])
        assert result.exit_code == 2
        assert "is a file" in result.output


def test_every_serve_option_is_a_settings_field() -> None:
    """One source of truth: each option maps to a Settings field with the same default."""
    import dataclasses

    import click

    from kokoro_service.cli import DEPRECATED_OPTIONS, serve
    from kokoro_service.config import Settings, cli_fields

    params = {p.name: p for p in serve.params if p.name != "help"}
    fields = {f.name: f for f in cli_fields()}
    # The old names read into a field of their own: hidden, and no more than aliases.
    for old, new in DEPRECATED_OPTIONS.items():
        alias = params.pop(old)
        assert isinstance(alias, click.Option) and alias.hidden and new in fields
    assert set(params) == set(fields)
    plain = Settings()
    for name, param in params.items():
        if param.default is not None:
            assert param.default == getattr(plain, name), name
    assert {f.name for f in dataclasses.fields(Settings)} - set(fields) == {"segment_growth"}


def test_missing_device_fails_startup_with_its_own_code(tiny_dir: Path) -> None:
    proc = run(
        [str(BIN), "serve", "--model-dir", str(tiny_dir), "--tcp-port", "0", "--udp-port", "0"],
        env={"KOKORO_DEVICE": "cuda"},
    )
    assert proc.returncode == 3
    assert "CUDA is not available" in proc.stderr


def test_unknown_default_voice_fails_startup(tiny_dir: Path) -> None:
    proc = run(
        [str(BIN), "serve", "--model-dir", str(tiny_dir), "--tcp-port", "0", "--udp-port", "0"],
        env={"KOKORO_VOICE": "nobody"},
    )
    assert proc.returncode == 3
    assert "voice 'nobody' cannot be used" in proc.stderr


def test_an_alias_of_an_unknown_voice_fails_startup(tiny_dir: Path) -> None:
    proc = run(
        [str(BIN), "serve", "--model-dir", str(tiny_dir), "--tcp-port", "0", "--udp-port", "0"],
        env={"KOKORO_VOICE_ALIAS": "alloy=af_sky,nova=nobody"},
    )
    assert proc.returncode == 3
    assert "--voice-alias nova='nobody' cannot be used" in proc.stderr


def test_missing_model_dir_fails_startup(tmp_path: Path) -> None:
    proc = run([str(BIN), "serve", "--model-dir", str(tmp_path / "nope")])
    assert proc.returncode == 3
    assert "does not exist" in proc.stderr


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        ({"KOKORO_TCP_PORT": "99999"}, 2, "KOKORO_TCP_PORT: 99999 is not in 0..65535"),
        ({"KOKORO_UDP_PORT": "x1"}, 2, "'x1' is not a valid integer"),
        ({"KOKORO_DEVICE": "gpu"}, 2, "KOKORO_DEVICE: 'gpu' is not one of"),
        ({"KOKORO_MODEL_DIR": "/nonexistent/dir"}, 3, "does not exist or is not a directory"),
    ],
)
def test_launcher_rejects_bad_values(env: dict[str, str], code: int, message: str) -> None:
    """The launcher leaves every check to the daemon, which answers before loading."""
    proc = run([str(REPO / "start-kokoro.sh")], env=env, timeout=TEST_TIMEOUT)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "model loaded" not in proc.stderr


def test_launcher_execs_the_daemon() -> None:
    text = (REPO / "start-kokoro.sh").read_text()
    assert re.search(r'^exec "\$root/\.venv/bin/kokoro-service" serve "\$@"$', text, re.M)


# --------------------------------------------------------------------------- real process


@pytest.fixture
def process(tiny_dir: Path) -> Iterator[Daemon]:
    d = Daemon(["--model-dir", str(tiny_dir), "--wyoming-port", "0"])
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def test_send_command_against_a_running_daemon(process: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    proc = run(
        [
            str(BIN),
            "send",
            "--tcp-port",
            str(process.port),
            "--call-id",
            "42",
            "Hello there.",
            "How are you today?",
            "-o",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert "END received" in proc.stdout
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and len(audio) > 0
    # The opt-in format and WORDS frames, as an operator tries them.
    opt_in = ["--format", "mulaw", "--rate", "8000", "--words", "Hello there.", "-o", str(out)]
    proc = run([str(BIN), "send", "--tcp-port", str(process.port), "--call-id", "43", *opt_in])
    assert proc.returncode == 0, proc.stderr
    assert "of mulaw@8000 audio" in proc.stdout and "END received" in proc.stdout
    assert re.search(r"chunk 1 words: Hello@\d+\.\d\d-\d+\.\d\d there@", proc.stdout)
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 8000 and len(audio) > 0
    assert re.search(
        r"warm-up took \S+s; synthesis at RTF \d+\.\d{3} per worker, so 1 worker\(s\) keep "
        r"about \d+\.\d calls speaking at once in real time",
        process.log(),
    )
    assert "device cpu (requested auto" in process.log()
    # An operator's first screen holds the daemon's own lines, no library's warnings.
    assert not re.search(r"\w+Warning: ", process.log()), process.log()[:2000]
    assert re.search(r"utterance call=42 segments=\d+ synth_s=\S+ audio_s=\S+ rtf=", process.log())
    ready = process.ready
    assert ready["pid"] == process.proc.pid and ready["device"] == "cpu"
    assert ready["model_source"] == "model-dir" and ready["voice"] == "af_sky"
    assert ready["rtf"] > 0 and ready["calls_in_real_time"] > 0
    assert ready["wyoming"]["port"] > 0  # --wyoming-port 0: a free port, as reported
    assert process.stop() == 0
    assert "stopped drained=True" in process.log()
    assert not process.ready_file.exists(), "a stopped daemon withdraws its ready file"


def test_the_old_names_of_the_http_port_still_work_and_say_they_are_deprecated(
    tiny_dir: Path,
) -> None:
    d = Daemon(
        ["--model-dir", str(tiny_dir), "--no-warmup", "--metrics-port", "0"],
        env={"KOKORO_METRICS_HOST": "127.0.0.1"},
    )
    try:
        assert d.ready["http"]["port"] > 0 and d.ready["http"]["host"] == "127.0.0.1"
        status, _ = http_get(f"http://127.0.0.1:{d.ready['http']['port']}", "/healthz")
        assert status == 200
        log = d.log()
        assert "--metrics-port (KOKORO_METRICS_PORT) is deprecated: use --http-port" in log
        assert "--metrics-host (KOKORO_METRICS_HOST) is deprecated: use --http-host" in log
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_a_new_name_given_with_its_old_one_wins() -> None:
    from kokoro_service.cli import serve, settings_from_options

    ctx = serve.make_context("serve", ["--metrics-port", "9001", "--http-port", "9002"])
    assert settings_from_options(**ctx.params).http_port == 9002
    ctx = serve.make_context("serve", ["--metrics-port", "9001"])
    assert settings_from_options(**ctx.params).http_port == 9001
    assert "--metrics-port" not in serve.get_help(ctx), "old names are not advertised"


def test_systemd_notify_ready_watchdog_and_stopping(tiny_dir: Path, tmp_path: Path) -> None:
    """Type=notify: READY=1 once serving (the ready file exists by then), WATCHDOG=1 pings
    while serving, STOPPING=1 when the drain starts."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(address)
        manager.settimeout(TEST_TIMEOUT * 3)
        d = Daemon(
            ["--model-dir", str(tiny_dir), "--no-warmup"],
            env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"},
        )
        try:
            messages = [manager.recv(4096).decode()]
            assert messages[0].startswith("READY=1\nSTATUS=serving on 127.0.0.1:")
            assert d.ready_file.exists()
            messages.append(manager.recv(4096).decode())
            assert messages[-1] == "WATCHDOG=1"
            assert d.stop() == 0
            while not messages[-1].startswith("STOPPING=1"):
                messages.append(manager.recv(4096).decode())
        finally:
            if d.proc.poll() is None:
                d.proc.kill()


def test_sigterm_under_load_drains_and_sends_end(tiny_dir: Path) -> None:
    # All three calls are admitted and drained, however fast this host is: unset,
    # --max-calls follows the warm-up's speed (one call on a slow host), and a drain lasts
    # as long as the host takes to speak what is owed.  What is checked is that the drain
    # finishes every call and sends END, not how fast, so it gets all the time it needs.
    drain = TEST_TIMEOUT * 3
    args = ["--model-dir", str(tiny_dir), "--no-warmup", "--max-calls", "3"]
    process = Daemon([*args, "--drain-timeout", str(drain)])
    try:
        conns = []
        for i in range(3):
            c = Connection("127.0.0.1", process.port, timeout=TEST_TIMEOUT)
            c.hello(f"90{i}")
            c.text("A reply that is still being spoken while the daemon is asked to stop. " * 2)
            conns.append(c)
        assert wait_for(lambda: conns[0].read_some(0.05) and bool(conns[0].reply.chunks))
        process.proc.send_signal(signal.SIGTERM)
        for c in conns:
            reply = c.read_until_end(drain)
            assert reply.ended, "every open call gets END"
            assert reply.chunks, "every call was admitted, and its audio owed when the drain began"
            assert reply.chunk_ids == list(range(1, len(reply.chunks) + 1))
            c.close()
        assert process.wait() == 0
        assert "stopped drained=True" in process.log()
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def test_second_signal_forces_exit(tiny_dir: Path) -> None:
    d = Daemon(["--model-dir", str(tiny_dir), "--drain-timeout", "60"])
    try:
        c = Connection("127.0.0.1", d.port, timeout=TEST_TIMEOUT)
        c.hello("950")
        c.text("Keep talking for a long while so the drain has work to do. " * 20)
        assert wait_for(lambda: c.read_some(0.05) and bool(c.reply.chunks))
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert d.stop(signal.SIGTERM, timeout=20) == 4
        assert "second signal" in d.log()
        c.close()
    finally:
        if d.proc.poll() is None:
            d.proc.kill()


def test_restart_after_sigkill_binds_the_same_port(tiny_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = Daemon(["--model-dir", str(tiny_dir), "--tcp-port", str(port), "--no-warmup"])
    c = Connection("127.0.0.1", first.port, timeout=TEST_TIMEOUT)
    c.hello("960")
    first.proc.kill()
    first.proc.wait()
    c.close()
    second = Daemon(["--model-dir", str(tiny_dir), "--tcp-port", str(port), "--no-warmup"])
    try:
        assert second.port == port
    finally:
        assert second.stop() == 0


def test_say_and_voices_commands(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "say.wav"
    proc = run(
        [
            str(BIN),
            "say",
            "Hello there.",
            "--model-dir",
            str(tiny_dir),
            "-o",
            str(out),
            "--voice",
            "af_sky:0.5,af_bella:0.5",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and len(audio) > 0
    proc = run([str(BIN), "voices", "--model-dir", str(tiny_dir)])
    assert proc.returncode == 0, proc.stderr
    assert "source: model-dir" in proc.stdout
    assert "af_sky\t" in proc.stdout and "bf_emma\t" in proc.stdout
