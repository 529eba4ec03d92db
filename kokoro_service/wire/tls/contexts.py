"""The daemon's TLS contexts: the text port's (server) and the sink connections' (client).

Both require TLS 1.2 or later and turn renegotiation off; a file that cannot be used
raises :class:`ConfigError` naming the file and the setting at fault.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from kokoro_service.errors import ConfigError
from kokoro_service.wire.tls.reasons import reason_in_words

__all__ = ["client_context", "server_context"]


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The text port's context: TLS 1.2 or later, this instance's certificate and key, and,
    with ``client_ca``, client certificates required and checked against that bundle.

    Raises :class:`ConfigError` naming the file and the setting at fault.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load_chain(context, cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        _load_trust(context, client_ca, "tls_client_ca", "client CA bundle")
    return context


def client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """The context for dialing an audio processor: TLS 1.2 or later, its certificate
    checked (chain and host name) against ``ca``, or the system's trust store without it;
    ``cert``/``key`` presented as this instance's client certificate when given.

    Raises :class:`ConfigError` naming the file and the setting at fault.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    _harden(context)
    if ca is not None:
        _load_trust(context, ca, "tls_sink_ca", "sink CA bundle")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        _load_chain(context, cert, key)
    elif key is not None:
        raise ConfigError(f"TLS key {key} given without a certificate", "tls_cert")
    return context


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation would make a write wait for a read that another thread owns; nothing
    # here needs it (TLS 1.3 has none at all).
    context.options |= ssl.OP_NO_RENEGOTIATION


def _read_file(path: Path, setting: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}", setting) from None


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """Load ``cert`` (and ``key``), blaming the right file when either is unusable."""
    _read_file(cert, "tls_cert", "TLS certificate")
    if key is not None:
        _read_file(key, "tls_key", "TLS key")
    # Parse the certificate alone first: load_cert_chain's errors do not say which file.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=str(cert))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS certificate {cert} holds no usable PEM certificate ({reason_in_words(exc)})",
            "tls_cert",
        ) from None
    where = cert if key is None else key

    def no_passphrase() -> bytes:
        # Without a callback, OpenSSL would prompt on the terminal for an encrypted key.
        raise ConfigError(f"TLS key {where} is encrypted; give an unencrypted PEM key", "tls_key")

    try:
        context.load_cert_chain(str(cert), None if key is None else str(key), no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"TLS key {where} does not match the certificate {cert}", "tls_key"
            ) from None
        # OpenSSL says only "PEM lib" for a file without a key, or with a broken one.
        detail = "" if exc.reason in (None, "PEM_LIB") else f" ({reason_in_words(exc)})"
        raise ConfigError(
            f"TLS key {where} holds no usable PEM private key{detail}", "tls_key"
        ) from None
    except OSError as exc:  # the file vanished between the checks above and this load
        raise ConfigError(
            f"cannot read TLS key {where}: {exc.strerror or exc}", "tls_key"
        ) from None


def _load_trust(context: ssl.SSLContext, path: Path, setting: str, what: str) -> None:
    _read_file(path, setting, what)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{what} {path} holds no usable PEM certificate ({reason_in_words(exc)})", setting
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}", setting) from None
