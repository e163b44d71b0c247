"""mmspeech vae: DAC-VAE between 24 kHz audio and continuous latents."""

__version__ = "0.1.0"

from .config import VAEConfig  # noqa: E402
from .model import DACVAE  # noqa: E402

__all__ = ["DACVAE", "VAEConfig"]
