"""The peers of the exhaustion probe (``probe_exhaustion.py``): the attackers (idle TCP
connections by the thousand, a call held open with keepalives, REGISTER/BYE datagram
churn, a sink that listens but never accepts) and the well-behaved checks made while
they hold and after (a normal call, ``GET /healthz``, a Wyoming ``describe``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from benchmarks.lib.harness import rounded
from benchmarks.lib.wyoming_peer import describe
from kokoro_service.wire.client import Connection
from kokoro_service.wire.codec import (
    encode_keepalive,
    encode_register,
    encode_unregister,
)

# ------------------------------------------------------------------------------ attackers


class IdleConnections:
    """Many TCP connections that never send a byte, opened together (non-blocking
    connects, waited for with epoll) and held until :meth:`close`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.socks: list[socket.socket] = []
        self.errors: dict[str, int] = {}

    def _error(self, code: int) -> None:
        name = errno.errorcode.get(code, str(code))
        self.errors[name] = self.errors.get(name, 0) + 1

    def open(self, n: int, timeout: float, batch: int = 50, pause: float = 0.05) -> dict[str, Any]:
        """Connect ``n``, ``batch`` at a time ``pause`` s apart (a burst larger than the
        daemon's listen backlog would only be queued by SYN retransmits, seconds later);
        those not established within ``timeout`` s are given up."""
        t0 = time.monotonic()
        sel = selectors.DefaultSelector()
        pending = 0

        def settle(until: float) -> None:
            nonlocal pending
            while pending and time.monotonic() < until:
                for key, _ in sel.select(timeout=max(0.0, until - time.monotonic())):
                    sock = key.data
                    sel.unregister(sock)
                    pending -= 1
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        self.socks.append(sock)
                    else:
                        self._error(code)
                        sock.close()

        try:
            for i in range(n):
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                except OSError as exc:  # the probe's own limit: counted, not fatal
                    self._error(exc.errno or 0)
                    break
                sock.setblocking(False)
                code = sock.connect_ex((self.host, self.port))
                if code == 0:
                    self.socks.append(sock)
                elif code in (errno.EINPROGRESS, errno.EAGAIN):
                    sel.register(sock, selectors.EVENT_WRITE, data=sock)
                    pending += 1
                else:
                    self._error(code)
                    sock.close()
                if (i + 1) % batch == 0:
                    settle(time.monotonic() + pause)
                    time.sleep(max(0.0, t0 + (i + 1) / batch * pause - time.monotonic()))
            settle(t0 + max(timeout, n / batch * pause + 1.0))
            for key in list(sel.get_map().values()):
                sock = key.data
                sel.unregister(sock)
                sock.close()
                self._error(errno.ETIMEDOUT)
        finally:
            sel.close()
        return {
            "asked": n,
            "established": len(self.socks),
            "errors": dict(self.errors),
            "open_s": rounded(time.monotonic() - t0, 2),
        }

    def still_open(self) -> int:
        """How many the daemon has not closed (a peek that would block means open)."""
        n = 0
        for sock in self.socks:
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                n += 1
                continue
            except OSError:
                continue
            n += bool(data)  # bytes unread count as open; b"" is the daemon's close
        return n

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()


class LiveCall:
    """A call held open on the text port: HELLO, then KEEPALIVE every second."""

    def __init__(self, host: str, port: int, call_id: str, timeout: float) -> None:
        self.conn = Connection(host, port, timeout=timeout)
        self.call_id = call_id
        self.keepalive_error: str | None = None
        self._stop = threading.Event()
        self.conn.hello(call_id)
        self._thread = threading.Thread(target=self._keepalive, name="keepalive", daemon=True)
        self._thread.start()

    def _keepalive(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.conn.send_raw(encode_keepalive())
            except OSError as exc:
                self.keepalive_error = f"{type(exc).__name__}: {exc}"
                return

    def finish(self, text: str, timeout: float) -> dict[str, Any]:
        """Stop the keepalives, then TEXT and BYE: does the call still get its audio?"""
        self._stop.set()
        self._thread.join(5)
        t0 = time.monotonic()
        try:
            self.conn.text(text)
            self.conn.bye()
            reply = self.conn.read_until_end(timeout)
        except Exception as exc:  # a reset, or bytes that are not the protocol
            return _reply_result([], [], False, t0, f"{type(exc).__name__}: {exc}")
        finally:
            self.conn.close()
        return _reply_result(reply.chunks, reply.arrivals, reply.ended, t0, self.keepalive_error)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


def register_bye_pairs(udp: tuple[str, int], call_id: str, pairs: int, seconds: float) -> int:
    """``pairs`` pairs of datagrams ``REGISTER:call_id`` / ``BYE:call_id`` to ``udp``,
    spread evenly over ``seconds``; how many pairs were sent."""
    sent = 0
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(pairs):
            with contextlib.suppress(OSError):  # a full buffer loses a datagram
                sock.sendto(encode_register(call_id), udp)
                sock.sendto(encode_unregister(call_id), udp)
                sent += 1
            time.sleep(max(0.0, t0 + (i + 1) * seconds / pairs - time.monotonic()))
    return sent


def listening_sink(call_id: int, backlog: int) -> tuple[socket.socket, int]:
    """A listener that never accepts, and the sink port base that routes ``call_id`` to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    base = sock.getsockname()[1] - call_id
    if base < 1:
        sock.close()
        raise SystemExit(f"call id {call_id} is too large for port {sock.getsockname()[1]}")
    return sock, base


# ------------------------------------------------------------------------------ checks


def _reply_result(
    chunks: Sequence[object], arrivals: Sequence[float], ended: bool, t0: float, error: str | None
) -> dict[str, Any]:
    ok = bool(chunks) and ended
    if error is None and not ok:
        error = "no AUDIO frame" if not chunks else "no END"
    return {
        "ok": ok,
        "audio_frames": len(chunks),
        "ended": ended,
        "first_audio_s": rounded(arrivals[0] - t0, 3) if arrivals else None,
        "total_s": rounded(time.monotonic() - t0, 3),
        "error": None if ok else error,
    }


def normal_call(host: str, port: int, call_id: str, text: str, timeout: float) -> dict[str, Any]:
    """HELLO ``call_id``, one TEXT, BYE; ok with at least one AUDIO frame and END."""
    t0 = time.monotonic()
    try:
        with Connection(host, port, timeout=timeout) as conn:
            conn.hello(call_id)
            conn.text(text)
            conn.bye()
            reply = conn.read_until_end(max(1.0, timeout - (time.monotonic() - t0)))
    except Exception as exc:  # refused, reset, or bytes that are not the protocol
        out = _reply_result([], [], False, t0, f"{type(exc).__name__}: {exc}")
    else:
        out = _reply_result(reply.chunks, reply.arrivals, reply.ended, t0, None)
    out["call_id"] = call_id
    return out


def http_health(host: str, port: int, timeout: float) -> dict[str, Any]:
    """``GET /healthz``: ok on 200."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except Exception as exc:  # refused, reset, timed out, not HTTP
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": status == 200, "status": status, "body": body.decode(errors="replace")[:200]}


def wyoming_health(host: str, port: int, timeout: float) -> dict[str, Any]:
    """``describe`` answered with ``info``."""
    try:
        asyncio.run(asyncio.wait_for(describe(host, port, timeout), timeout))
    except Exception as exc:  # refused, reset, timed out, not Wyoming
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True}
