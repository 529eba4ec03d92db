"""kokoro-service: a streaming Kokoro-82M text-to-speech daemon for telephony."""

__version__ = "0.1.0"
