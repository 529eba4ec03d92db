"""TLS for the daemon's TCP connections: the text port and the sink connections it dials.

The daemon reads a connection in one thread and writes it from another, which
:class:`ssl.SSLSocket` does not allow safely; :class:`TlsConn` drives an
:class:`ssl.SSLObject` over memory BIOs instead, shared by every handle on the socket.
Each session has two locks: the *ssl lock* around every ``SSLObject`` and BIO call (never
held while waiting on the socket), and the *send lock*, taken before it, that keeps TLS
records in order on the socket (:mod:`.session` tells the whole design).

:mod:`.contexts` makes the server and client contexts; :mod:`.reasons` puts TLS failures
in words; :mod:`.session` is the shared session with its locks; :mod:`.conn` is the
socket-like handle on it.
"""

from kokoro_service.wire.tls.conn import TlsConn
from kokoro_service.wire.tls.contexts import client_context, server_context
from kokoro_service.wire.tls.reasons import PEER_CLOSED_IN_HANDSHAKE

__all__ = ["PEER_CLOSED_IN_HANDSHAKE", "TlsConn", "client_context", "server_context"]
