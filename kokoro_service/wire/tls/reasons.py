"""TLS failures in words: OpenSSL's reasons and the peer's alerts, for the log line that
closes a connection and for the start-up errors that name a bad file."""

from __future__ import annotations

import re
import ssl

__all__ = ["PEER_CLOSED_IN_HANDSHAKE", "describe", "reason_in_words"]

# The reason of a handshake the peer left before finishing (a TCP health check, a probe).
PEER_CLOSED_IN_HANDSHAKE = "peer closed during the TLS handshake"


# OpenSSL reasons for bytes that are not a TLS record at all.
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LENGTH_MISMATCH",
        "RECORD_LAYER_FAILURE",
        "UNEXPECTED_RECORD",
        "WRONG_SSL_VERSION",
    }
)
_NO_COMMON_VERSION = frozenset(
    {"UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_LOW", "VERSION_TOO_HIGH"}
)
# Alerts a peer sends when it refuses the certificate this end presented (or its absence).
_CERT_ALERTS = frozenset(
    {
        "bad certificate",
        "unsupported certificate",
        "certificate revoked",
        "certificate expired",
        "certificate unknown",
        "unknown ca",
        "certificate required",
        "access denied",
    }
)
_ALERT = re.compile(r"^(?:SSLV3|TLSV1|TLSV13)_ALERT_(\w+)$")


def reason_in_words(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in words: ``WRONG_VERSION_NUMBER`` -> ``wrong version number``."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    reason = exc.reason
    if reason:
        match = _ALERT.match(reason)
        return (match.group(1) if match else reason).lower().replace("_", " ")
    return str(exc.strerror or exc)


def describe(exc: ssl.SSLError, *, server_side: bool, handshake: bool) -> str:
    """A human reason for a TLS failure, for the log line that closes the connection."""
    reason = exc.reason or ""
    words = reason_in_words(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if server_side:
            return f"client certificate rejected: {words}"
        return f"certificate verify failed: {words}"
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "client certificate rejected: the client presented none"
    if reason in _NOT_TLS:
        if server_side:
            return "not TLS (a plaintext client on the TLS port?)"
        return "not TLS (a plaintext server on that port?)"
    if reason in _NO_COMMON_VERSION or reason == "TLSV1_ALERT_PROTOCOL_VERSION":
        return f"no TLS version in common (TLS 1.2 or later is required): {words}"
    if reason == "NO_SHARED_CIPHER":
        return "no TLS cipher in common"
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return PEER_CLOSED_IN_HANDSHAKE if handshake else "peer closed abruptly"
    if _ALERT.match(reason):
        if words in _CERT_ALERTS:
            return f"peer rejected our certificate: {words}"
        return f"peer sent TLS alert: {words}"
    return f"TLS handshake failed: {words}" if handshake else f"TLS error: {words}"
