"""mmspeech pipeline: end-to-end zero-shot TTS composed from the stage packages.

Exports load on first use, so ``mmspeech --help`` does not wait for torch.
"""

from typing import TYPE_CHECKING

from mmspeech_core._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {"ReferenceAudioError": ".reference", "TTS": ".tts", "StreamChunk": ".tts", "Voice": ".tts"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from .reference import ReferenceAudioError  # noqa: F401
    from .tts import TTS, StreamChunk, Voice  # noqa: F401
