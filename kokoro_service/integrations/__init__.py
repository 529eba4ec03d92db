"""Native voice-agent plugins over the daemon's binary protocol.

- :mod:`kokoro_service.integrations.pipecat`: a pipecat TTS service
  (``pip install kokoro-service[pipecat]``);
- :mod:`kokoro_service.integrations.livekit`: a LiveKit Agents ``tts.TTS``
  (``pip install kokoro-service[livekit]``);
- :mod:`kokoro_service.integrations.call`: the asyncio call both stand on.

Each plugin streams the LLM's text into one daemon call as it is produced, asks for
s16le at the framework's rate with WORDS on, and cancels the call on interruption.  The
layer sits on top of the package and imports only the wire codec, the shared types and
the errors: a plugin process never loads the daemon.  This module imports neither
framework, so it loads without the extras.
"""

from kokoro_service.integrations.call import CallSettings, DaemonCall, Heard

__all__ = ["CallSettings", "DaemonCall", "Heard"]
