"""mmspeech vae: DAC-VAE between 24 kHz audio and continuous latents.

Exports load on first use, so importing a submodule (``mmspeech_vae.config``) does not import the model's
dependencies.
"""

from typing import TYPE_CHECKING

from mmspeech_core._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {"VAEConfig": ".config", "DACVAE": ".model"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from .config import VAEConfig  # noqa: F401
    from .model import DACVAE  # noqa: F401
