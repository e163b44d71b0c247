"""mmspeech tokenizer: 25 Hz FSQ speech tokens (S3Tokenizer v2 wrapper + a trainable CTC-supervised FSQ tokenizer)."""

__version__ = "0.1.0"

from .model import FSQTokenizer  # noqa: E402
from .s3 import S3SpeechTokenizer  # noqa: E402

__all__ = ["FSQTokenizer", "S3SpeechTokenizer"]
