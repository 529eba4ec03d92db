"""Every exception kokoro-service raises on purpose lives here.

Each class names one failure domain so that callers can catch precisely and the CLI can
map start-up failures to their own exit code.
"""

from __future__ import annotations


class KokoroServiceError(Exception):
    """Base class of every error raised on purpose by kokoro-service."""


class ConfigError(KokoroServiceError):
    """A setting is invalid (bad port, unknown device, malformed value).

    ``setting`` names the :class:`~kokoro_service.config.Settings` field at fault, so the
    CLI can name the option and its environment variable.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class StartupError(KokoroServiceError):
    """The daemon cannot start: model, device, voice or socket set-up failed."""


class DeviceUnavailableError(StartupError):
    """The user named a device that this machine does not have."""


class PrecisionUnavailableError(StartupError):
    """The user named an arithmetic precision that this device cannot run at speed."""


class ModelLoadError(StartupError):
    """Model weights or config could not be found or loaded."""


class ModelImportError(ModelLoadError):
    """The embedded int8 ONNX model failed verification or could not be converted."""


class VoiceError(KokoroServiceError):
    """A voice name or blend is unknown or malformed."""


class ProtocolError(KokoroServiceError):
    """A peer sent bytes that break the wire contract in PROTOCOL.md."""


class FrameTooLargeError(ProtocolError):
    """A frame announced a length above its bound; raised before the body is read."""


class SynthesisError(KokoroServiceError):
    """Synthesis of one segment failed; the call goes on with the next segment."""


class DestinationError(KokoroServiceError):
    """An audio destination (text connection or sink) could not be reached or stalled."""


class WyomingInputError(KokoroServiceError):
    """A Wyoming event that is not read at all (too large, or not an event): the
    connection is closed."""


class WyomingRequestError(KokoroServiceError):
    """A well-formed Wyoming event with data that cannot be used: answered with an
    ``error`` event, and the connection goes on."""


class TlsError(KokoroServiceError, OSError):
    """A TLS handshake or record failed on a text or sink connection.

    An ``OSError`` too, so the code that treats a broken socket as a lost peer treats a
    broken TLS session the same way.
    """


class SpeechRequestError(KokoroServiceError):
    """A ``/v1/audio/speech`` request that cannot be served: its HTTP status, and the
    field and code of OpenAI's error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


class CallIncompleteError(KokoroServiceError):
    """An adapter's call ended without END: the audio it relayed is incomplete."""
