"""mmspeech pipeline: end-to-end zero-shot TTS composed from the stage packages."""

__version__ = "0.1.0"

from .reference import ReferenceAudioError  # noqa: E402
from .tts import TTS, StreamChunk, Voice  # noqa: E402

__all__ = ["TTS", "ReferenceAudioError", "StreamChunk", "Voice"]
