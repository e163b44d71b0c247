"""mmspeech flow: chunk-aware conditional flow matching from 25 Hz speech tokens to VAE latents."""

__version__ = "0.1.0"

from .config import FlowConfig, FlowInferConfig, FlowLossConfig, FlowModelConfig  # noqa: E402
from .model import FlowModel  # noqa: E402

__all__ = ["FlowConfig", "FlowInferConfig", "FlowLossConfig", "FlowModel", "FlowModelConfig"]
