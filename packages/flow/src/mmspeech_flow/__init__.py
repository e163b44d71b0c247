"""mmspeech flow: chunk-aware conditional flow matching from 25 Hz speech tokens to VAE latents.

Exports load on first use, so importing a submodule (``mmspeech_flow.config``) does not import the model's
dependencies.
"""

from typing import TYPE_CHECKING

from mmspeech_core._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "FlowConfig": ".config",
    "FlowInferConfig": ".config",
    "FlowLossConfig": ".config",
    "FlowModelConfig": ".config",
    "FlowModel": ".model",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from .config import FlowConfig, FlowInferConfig, FlowLossConfig, FlowModelConfig  # noqa: F401
    from .model import FlowModel  # noqa: F401
