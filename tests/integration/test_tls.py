"""TlsConn and its contexts, against the standard library's own TLS on real loopback sockets.

A throwaway CA (trustme) signs every certificate.  The std-lib peer is always driven from
one thread (blocking, or non-blocking in a poll loop when it must read and write at once),
so that only the code under test shares a TLS session between threads.  Two tests need
what the std-lib cannot send (a KeyUpdate, a renegotiation) and drive ``openssl s_client``;
they are skipped where there is no ``openssl`` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
import trustme
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe

from kokoro_service.errors import ConfigError, TlsError
from kokoro_service.wire.codec import encode_hello
from kokoro_service.wire.tls import TlsConn, client_context, server_context
from tests.conftest import TEST_TIMEOUT, DaemonFactory, WyomingFactory

T = TypeVar("T")
WAIT = 10.0  # a bound on every wait, so that a bug fails the test instead of hanging it


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    ca_pem: Path
    server: trustme.LeafCert
    cert: Path
    key: Path
    client: trustme.LeafCert
    client_cert: Path
    client_key: Path
    other_ca: trustme.CA


def _write_leaf(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("processor-1.example", common_name="processor-1")
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    _write_leaf(server, base / "cert.pem", base / "key.pem")
    _write_leaf(client, base / "client.pem", base / "client-key.pem")
    return Pki(
        ca=ca,
        ca_pem=base / "ca.pem",
        server=server,
        cert=base / "cert.pem",
        key=base / "key.pem",
        client=client,
        client_cert=base / "client.pem",
        client_key=base / "client-key.pem",
        other_ca=trustme.CA(),
    )


class Background(Generic[T]):
    """Runs ``fn`` in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:
            self._error = exc

    def result(self) -> T:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "background peer hung"
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def error(self) -> BaseException | None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "background peer hung"
        return self._error


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback pair: (the accepted end, the dialing end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        dialed = socket.create_connection(listener.getsockname(), timeout=WAIT)
        accepted, _ = listener.accept()
    accepted.settimeout(WAIT)
    yield accepted, dialed
    for sock in (accepted, dialed):
        sock.close()


def _stdlib_client(pki: Pki, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if leaf is not None:
        leaf.configure_cert(context)
    return context


def _handshaken_server(pki: Pki, raw: socket.socket, client_ca: Path | None = None) -> TlsConn:
    conn = TlsConn.server(raw, server_context(pki.cert, pki.key, client_ca))
    conn.handshake(WAIT)
    return conn


def _read_to_eof(sock: ssl.SSLSocket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def _recv_exactly(conn: TlsConn, size: int) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + WAIT
    while len(data) < size:
        assert time.monotonic() < deadline, "reader starved"
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def _duplex(sock: ssl.SSLSocket, up: bytes) -> bytes:
    """Send ``up`` while reading until the peer's close, from this one thread."""
    sock.setblocking(False)
    view = memoryview(up)
    got = bytearray()
    sent = 0
    eof = False
    deadline = time.monotonic() + WAIT
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLOUT)
    while not eof or sent < len(up):
        assert time.monotonic() < deadline, "duplex peer stalled"
        progressed = False
        if not eof:
            try:
                while chunk := sock.recv(65536):
                    got += chunk
                    progressed = True
                eof = True
            except ssl.SSLWantReadError:
                pass
        if sent < len(up):
            try:
                sent += sock.send(view[sent : sent + 65536])
                progressed = True
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        if not progressed:
            events = (0 if eof else select.POLLIN) | (select.POLLOUT if sent < len(up) else 0)
            poller.modify(sock.fileno(), events)
            poller.poll(100)
    sock.setblocking(True)
    return bytes(got)


# ---------------------------------------------------------------------------- server


def test_duplex_from_two_threads_on_two_handles(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    """The daemon's pattern: a reader thread on the handle, a writer thread on a dup."""
    accepted, dialed = pair
    for sock in pair:  # small buffers: both directions block and interleave many times
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    rng = random.Random(7)
    up = rng.randbytes(4 * 1024 * 1024)
    down = rng.randbytes(4 * 1024 * 1024 + 123)

    def client() -> bytes:
        with _stdlib_client(pki).wrap_socket(dialed, server_hostname="localhost") as tls:
            got = _duplex(tls, up)
        return got

    peer = Background(client)
    conn = _handshaken_server(pki, accepted)
    assert conn.version in ("TLSv1.2", "TLSv1.3")
    writer_handle = conn.dup()

    def write() -> int:
        writer_handle.settimeout(5.0)
        total = 0
        view = memoryview(down)
        step = len(down) // 32 + 1
        for start in range(0, len(down), step):
            piece = view[start : start + step]
            half = piece.nbytes // 2
            sent = writer_handle.sendmsg([piece[:half], piece[half:], memoryview(b"")])
            assert sent == piece.nbytes
            total += sent
        writer_handle.shutdown(socket.SHUT_WR)
        writer_handle.close()
        return total

    writer = Background(write)
    conn.settimeout(0.25)
    received = _recv_exactly(conn, len(up))
    assert writer.result() == len(down)
    assert hashlib.sha256(received).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(peer.result()).digest() == hashlib.sha256(down).digest()
    # The client closed its socket without close_notify: that is a close too.
    deadline = time.monotonic() + WAIT
    while True:
        try:
            assert conn.recv(65536) == b""
            break
        except TimeoutError:
            assert time.monotonic() < deadline
    assert conn.recv(65536) == b""  # and stays one
    conn.close()
    assert accepted.fileno() == -1  # the last handle closed the socket


def test_graceful_close_lets_a_slow_reader_read_everything(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    accepted, dialed = pair
    payload = random.Random(3).randbytes(1024 * 1024)

    def client() -> bytes:
        with _stdlib_client(pki).wrap_socket(dialed, server_hostname="localhost") as tls:
            time.sleep(0.2)  # everything below is sent and closed before this reads
            return _read_to_eof(tls)

    peer = Background(client)
    conn = _handshaken_server(pki, accepted)
    writer = conn.dup()
    writer.settimeout(5.0)
    assert writer.sendmsg([memoryview(payload)]) == len(payload)
    writer.shutdown(socket.SHUT_WR)
    writer.close()
    conn.close()
    assert peer.result() == payload


def test_reading_goes_on_after_our_close_notify(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    """close_notify from the writer must not swallow what the peer sent and we had not
    read yet (decrypted or not), nor what it sends after."""
    accepted, dialed = pair
    first = random.Random(5).randbytes(300_000)
    later = random.Random(6).randbytes(100_000)

    def client() -> bytes:
        with _stdlib_client(pki).wrap_socket(dialed, server_hostname="localhost") as tls:
            tls.sendall(first)
            reply = _read_to_eof(tls)
            tls.sendall(later)
            tls.unwrap()  # our close_notify, after theirs
        return reply

    peer = Background(client)
    conn = _handshaken_server(pki, accepted)
    time.sleep(0.1)  # let `first` arrive, so that most of it waits in the buffers
    conn.settimeout(1.0)
    head = conn.recv(100)  # part of a record: the rest is held decrypted
    writer = conn.dup()
    writer.sendmsg([memoryview(b"END")])
    writer.shutdown(socket.SHUT_WR)
    writer.close()
    rest = _recv_exactly(conn, len(first) + len(later) - len(head))
    assert head + rest == first + later
    assert conn.recv(65536) == b""  # the client's close_notify
    assert peer.result() == b"END"
    conn.close()


def test_mutual_tls_accepts_a_client_certificate_from_the_ca(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    accepted, dialed = pair

    def client() -> bytes:
        context = _stdlib_client(pki, pki.client)
        with context.wrap_socket(dialed, server_hostname="localhost") as tls:
            tls.sendall(b"hello")
            return _read_to_eof(tls)

    peer = Background(client)
    conn = _handshaken_server(pki, accepted, client_ca=pki.ca_pem)
    assert conn.peer_subject == "processor-1"
    conn.settimeout(WAIT)
    assert _recv_exactly(conn, 5) == b"hello"
    conn.sendmsg([b"bye"])
    conn.shutdown(socket.SHUT_WR)
    assert peer.result() == b"bye"
    conn.close()


@pytest.mark.parametrize("kind", ["none", "foreign"])
def test_mutual_tls_refuses_other_clients(
    pki: Pki, pair: tuple[socket.socket, socket.socket], kind: str
) -> None:
    accepted, dialed = pair
    leaf = None if kind == "none" else pki.other_ca.issue_cert("intruder")

    def client() -> bytes:
        with _stdlib_client(pki, leaf).wrap_socket(dialed, server_hostname="localhost") as tls:
            return tls.recv(10)  # TLS 1.3: the refusal arrives after the client's handshake

    peer = Background(client)
    conn = TlsConn.server(accepted, server_context(pki.cert, pki.key, pki.ca_pem))
    with pytest.raises(TlsError) as caught:
        conn.handshake(WAIT)
    conn.close()
    message = str(caught.value)
    assert message.startswith("client certificate rejected: ")
    if kind == "none":
        assert "presented none" in message
    else:
        assert "issuer" in message  # "unable to get local issuer certificate"
    assert isinstance(peer.error(), ssl.SSLError)  # the client learns it by an alert


@pytest.mark.parametrize(
    "plaintext", [encode_hello("call-1"), b"GET /metrics HTTP/1.1\r\n\r\n"], ids=["hello", "http"]
)
def test_plaintext_client_is_named_as_such(
    pki: Pki, pair: tuple[socket.socket, socket.socket], plaintext: bytes
) -> None:
    accepted, dialed = pair
    dialed.sendall(plaintext)
    conn = TlsConn.server(accepted, server_context(pki.cert, pki.key, None))
    with pytest.raises(TlsError, match=r"not TLS \(a plaintext client"):
        conn.handshake(WAIT)
    conn.close()


def test_peer_closing_during_the_handshake(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    accepted, dialed = pair
    dialed.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
    dialed.close()
    conn = TlsConn.server(accepted, server_context(pki.cert, pki.key, None))
    with pytest.raises(TlsError, match="peer closed during the TLS handshake"):
        conn.handshake(WAIT)
    conn.close()


def test_silent_peer_times_the_handshake_out(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    accepted, _ = pair
    conn = TlsConn.server(accepted, server_context(pki.cert, pki.key, None))
    with pytest.raises(TlsError, match=r"no TLS handshake within 0\.3s"):
        conn.handshake(0.3)
    conn.close()


def test_recv_times_out_per_handle(pki: Pki, pair: tuple[socket.socket, socket.socket]) -> None:
    accepted, dialed = pair
    peer = Background(lambda: _stdlib_client(pki).wrap_socket(dialed, server_hostname="localhost"))
    conn = _handshaken_server(pki, accepted)
    tls = peer.result()
    other = conn.dup()
    conn.settimeout(0.2)
    other.settimeout(None)
    assert (conn.gettimeout(), other.gettimeout()) == (0.2, None)
    with pytest.raises(TimeoutError):
        conn.recv(65536)
    tls.sendall(b"late")
    assert _recv_exactly(conn, 4) == b"late"  # a timeout leaves the session usable
    tls.close()
    other.close()
    conn.close()


def test_sendmsg_times_out_on_a_peer_that_does_not_read_and_abort_wakes_it(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    accepted, dialed = pair
    for sock, option in ((accepted, socket.SO_SNDBUF), (dialed, socket.SO_RCVBUF)):
        sock.setsockopt(socket.SOL_SOCKET, option, 32 * 1024)
    peer = Background(lambda: _stdlib_client(pki).wrap_socket(dialed, server_hostname="localhost"))
    conn = _handshaken_server(pki, accepted)
    tls = peer.result()
    block = memoryview(bytes(256 * 1024))
    writer = conn.dup()
    writer.settimeout(0.2)
    with pytest.raises(TimeoutError):
        for _ in range(64):  # far more than the buffers hold
            writer.sendmsg([block])

    # An abort from another thread (FrameWriter.abort) ends a send blocked for longer.
    writer.settimeout(WAIT)
    threading.Timer(0.2, writer.shutdown, args=(socket.SHUT_RDWR,)).start()
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        for _ in range(64):
            writer.sendmsg([block])
    assert not isinstance(caught.value, TimeoutError)
    assert time.monotonic() - started < WAIT / 2
    writer.close()
    conn.close()
    tls.close()


class SClient:
    """``openssl s_client`` dialing a loopback port, with ``-msg`` lines collected, for
    what the std-lib cannot send: a TLS 1.3 KeyUpdate ("K"), a renegotiation ("R")."""

    def __init__(self, pki: Pki, *options: str) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-msg"]
            command += ["-servername", "localhost", "-CAfile", str(pki.ca_pem), *options]
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            listener.settimeout(WAIT)
            self.raw, _ = listener.accept()
        self.raw.settimeout(WAIT)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._cond:
                self.lines.append(line.decode(errors="replace").strip())
                self._cond.notify_all()

    def type(self, line: bytes) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line)
        self._process.stdin.flush()

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> int | None:
        """The index of the first line ``wanted`` accepts, waiting up to ``timeout``."""
        with self._cond:
            found: list[int] = []

            def seen() -> bool:
                found[:] = [i for i, line in enumerate(self.lines) if wanted(line)][:1]
                return bool(found)

            return found[0] if self._cond.wait_for(seen, timeout) else None

    def __enter__(self) -> SClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.kill()
        self._process.wait()
        self.raw.close()


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")


@needs_openssl
def test_key_update_read_by_one_thread_is_answered_by_the_other(pki: Pki) -> None:
    """The reader takes in a KeyUpdate that asks for ours; OpenSSL answers it with the next
    record sent, which the writer's handle then sends first, under the new keys."""
    with SClient(pki, "-tls1_3") as peer:
        conn = _handshaken_server(pki, peer.raw)
        peer.type(b"K\n")
        if peer.wait_for(lambda line: line == "KEYUPDATE", 3.0) is None:
            pytest.skip("this openssl s_client sends no key update")
        assert peer.wait_for(lambda line: line.startswith(">>>") and "KeyUpdate" in line, WAIT)
        conn.settimeout(0.3)
        with pytest.raises(TimeoutError):
            conn.recv(65536)  # takes in the KeyUpdate: no data
        writer = conn.dup()
        writer.sendmsg([b"after the update\n"])
        text = peer.wait_for(lambda line: line == "after the update", WAIT)
        ours = peer.wait_for(lambda line: line.startswith("<<<") and "KeyUpdate" in line, 0)
        assert text is not None and ours is not None and ours < text
        writer.close()
        conn.close()


@needs_openssl
def test_reader_alone_sends_what_reading_makes_openssl_say(pki: Pki) -> None:
    """A TLS 1.2 renegotiation is refused with a warning alert that SSL_read makes; with no
    writer at work, recv itself must send it."""
    with SClient(pki, "-tls1_2") as peer:
        conn = _handshaken_server(pki, peer.raw)
        assert conn.version == "TLSv1.2"
        peer.type(b"R\n")
        if peer.wait_for(lambda line: line == "RENEGOTIATING", 3.0) is None:
            pytest.skip("this openssl s_client does not renegotiate")
        conn.settimeout(0.1)
        deadline = time.monotonic() + WAIT
        with pytest.raises(TlsError, match="handshake failure"):  # its answer to our alert
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.recv(65536)
        assert peer.wait_for(lambda line: "warning no_renegotiation" in line, WAIT) is not None
        conn.close()


def test_handles_share_one_socket_until_the_last_closes(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    accepted, _ = pair
    conn = TlsConn.server(accepted, server_context(pki.cert, pki.key, None))
    fd = conn.fileno()
    other = conn.dup()
    conn.close()
    conn.close()  # twice is harmless
    assert conn.fileno() == -1
    assert other.fileno() == fd
    assert accepted.fileno() == fd  # still open for the other handle
    with pytest.raises(OSError):
        conn.recv(1)
    with pytest.raises(TlsError, match="handshake not done"):
        other.recv(1)
    other.close()
    assert accepted.fileno() == -1


# ---------------------------------------------------------------------------- client


def _stdlib_server(
    pki: Pki, raw: socket.socket, size: int, *, require_client_cert: bool = False
) -> bytes:
    """Echo ``size`` bytes reversed, then close_notify and wait for the client's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki.server.configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        pki.ca.configure_trust(context)
    with context.wrap_socket(raw, server_side=True) as tls:
        cert: dict[str, Any] = dict(tls.getpeercert() or {})  # typeshed: values str | tuple
        subject = {key: value for rdn in cert.get("subject", ()) for key, value in rdn}
        data = b""
        while len(data) < size:
            data += tls.recv(65536)
        tls.sendall(data[::-1])
        tls.unwrap()
    return str(subject.get("commonName", "")).encode() + b":" + data


def test_client_mode_against_a_stdlib_server(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    accepted, dialed = pair
    peer = Background(lambda: _stdlib_server(pki, accepted, 6))
    conn = TlsConn.client(dialed, client_context(None, None, pki.ca_pem), "localhost")
    assert conn.gettimeout() == WAIT  # the socket's own timeout carries over
    conn.handshake(WAIT)
    assert conn.peer_subject == "localhost"
    assert conn.sendmsg([memoryview(b"abc"), b"def"]) == 6
    assert _recv_exactly(conn, 6) == b"fedcba"
    assert conn.recv(65536) == b""  # the server's close_notify
    conn.shutdown(socket.SHUT_WR)  # ours, which the server's unwrap() waits for
    conn.close()
    assert peer.result() == b":abcdef"


def test_client_mode_presents_its_certificate(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    accepted, dialed = pair
    peer = Background(lambda: _stdlib_server(pki, accepted, 2, require_client_cert=True))
    context = client_context(pki.client_cert, pki.client_key, pki.ca_pem)
    conn = TlsConn.client(dialed, context, "127.0.0.1")
    conn.handshake(WAIT)
    conn.sendmsg([b"xy"])
    assert _recv_exactly(conn, 2) == b"yx"
    assert conn.recv(65536) == b""
    conn.shutdown(socket.SHUT_WR)
    conn.close()
    assert peer.result() == b"processor-1:xy"


def test_client_mode_names_the_refusal_of_its_certificate_when_sending(
    pki: Pki, pair: tuple[socket.socket, socket.socket]
) -> None:
    """TLS 1.3: the client's handshake ends before the server checks its certificate, and
    a sink connection is never read, so the refusal must surface on a send."""
    accepted, dialed = pair

    def server() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        pki.server.configure_cert(context)
        context.verify_mode = ssl.CERT_REQUIRED
        pki.ca.configure_trust(context)
        try:
            context.wrap_socket(accepted, server_side=True)
        finally:
            accepted.close()  # unread bytes: a reset, as a real server's exit would give

    peer = Background(server)
    conn = TlsConn.client(dialed, client_context(None, None, pki.ca_pem), "localhost")
    conn.handshake(WAIT)
    assert isinstance(peer.error(), ssl.SSLError)
    with pytest.raises(TlsError, match="peer rejected our certificate: certificate required"):
        for _ in range(100):
            conn.sendmsg([memoryview(bytes(1000))])
            time.sleep(0.01)
    conn.close()


@pytest.mark.parametrize(
    ("hostname", "trusted", "reason"),
    [
        ("example.org", True, "certificate verify failed: Hostname mismatch"),
        ("localhost", False, "certificate verify failed: unable to get local issuer"),
    ],
    ids=["hostname", "untrusted"],
)
def test_client_mode_refuses_a_server_it_cannot_verify(
    pki: Pki,
    pair: tuple[socket.socket, socket.socket],
    hostname: str,
    trusted: bool,
    reason: str,
) -> None:
    accepted, dialed = pair
    peer = Background(lambda: _stdlib_server(pki, accepted, 1))
    context = client_context(None, None, pki.ca_pem if trusted else None)
    conn = TlsConn.client(dialed, context, hostname)
    with pytest.raises(TlsError, match=reason):
        conn.handshake(WAIT)
    conn.close()
    assert isinstance(peer.error(), ssl.SSLError)


# ---------------------------------------------------------------------------- config


def test_config_errors_name_the_setting(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a pem file\n")
    missing = tmp_path / "missing.pem"
    mismatched = tmp_path / "other-key.pem"
    mismatched.write_bytes(pki.client.private_key_pem.bytes())

    cases: list[tuple[Callable[[], object], str, str]] = [
        (lambda: server_context(missing, pki.key, None), "tls_cert", "cannot read"),
        (lambda: server_context(garbage, pki.key, None), "tls_cert", "no usable PEM certificate"),
        (lambda: server_context(pki.cert, missing, None), "tls_key", "cannot read"),
        (lambda: server_context(pki.cert, garbage, None), "tls_key", "no usable PEM private key"),
        (lambda: server_context(pki.cert, mismatched, None), "tls_key", "does not match"),
        (lambda: server_context(pki.cert, pki.key, missing), "tls_client_ca", "cannot read"),
        (lambda: server_context(pki.cert, pki.key, garbage), "tls_client_ca", "no usable PEM"),
        (lambda: client_context(None, None, garbage), "tls_sink_ca", "no usable PEM"),
        (lambda: client_context(garbage, pki.key, pki.ca_pem), "tls_cert", "no usable PEM"),
        (lambda: client_context(None, pki.key, pki.ca_pem), "tls_cert", "without a cert"),
    ]
    for make, setting, words in cases:
        with pytest.raises(ConfigError) as caught:
            make()
        assert caught.value.setting == setting, str(caught.value)
        assert words in str(caught.value)


def test_contexts_require_tls_1_2(pki: Pki) -> None:
    server = server_context(pki.cert, pki.key, pki.ca_pem)
    client = client_context(pki.client_cert, pki.client_key, pki.ca_pem)
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert server_context(pki.cert, pki.key, None).verify_mode == ssl.CERT_NONE


def test_the_wyoming_port_speaks_tls_with_the_text_ports_certificate(
    daemon: DaemonFactory, wyoming: WyomingFactory, pki: Pki
) -> None:
    server = daemon(tls_cert=pki.cert, tls_key=pki.key)
    wy = wyoming(server)
    host, port = wy.address

    async def describe() -> Event | None:
        context = ssl.create_default_context(cafile=str(pki.ca_pem))
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            await async_write_event(Describe().event(), writer)
            return await asyncio.wait_for(async_read_event(reader), TEST_TIMEOUT)
        finally:
            writer.close()

    info = asyncio.run(describe())
    assert info is not None and info.type == "info"
    # In clear, a client gets no event: the port speaks TLS only.
    with socket.create_connection((host, port), timeout=TEST_TIMEOUT) as sock:
        sock.sendall(b'{"type": "describe"}\n')
        answer = sock.recv(4096)
    assert not answer.startswith(b"{"), answer[:80]
