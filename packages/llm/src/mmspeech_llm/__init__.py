"""mmspeech llm: autoregressive text -> speech-token LM (Qwen2 backbone) with a learnable speaker encoder."""

__version__ = "0.1.0"

from .config import LLMConfig, SamplingConfig  # noqa: E402
from .model import SpeechLM  # noqa: E402
from .text import TextError, TextTokenizer  # noqa: E402

__all__ = ["LLMConfig", "SamplingConfig", "SpeechLM", "TextError", "TextTokenizer"]
