"""mmspeech tokenizer: 25 Hz FSQ speech tokens (S3Tokenizer v2 wrapper + a trainable CTC-supervised FSQ tokenizer).

Exports load on first use, so importing a submodule (``mmspeech_tokenizer.config``) does not import the model's
dependencies.
"""

from typing import TYPE_CHECKING

from mmspeech_core._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {"FSQTokenizer": ".model", "S3SpeechTokenizer": ".s3"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from .model import FSQTokenizer  # noqa: F401
    from .s3 import S3SpeechTokenizer  # noqa: F401
