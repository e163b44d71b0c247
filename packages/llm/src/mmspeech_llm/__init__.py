"""mmspeech llm: autoregressive text -> speech-token LM (Qwen2 backbone) with a learnable speaker encoder.

Exports load on first use, so importing a submodule (``mmspeech_llm.config``) does not import the model's
dependencies.
"""

from typing import TYPE_CHECKING

from mmspeech_core._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "LLMConfig": ".config",
    "SamplingConfig": ".config",
    "SpeechLM": ".model",
    "TextError": ".text",
    "TextTokenizer": ".text",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from .config import LLMConfig, SamplingConfig  # noqa: F401
    from .model import SpeechLM  # noqa: F401
    from .text import TextError, TextTokenizer  # noqa: F401
