"""mmspeech core: typed containers every stage exchanges, audio I/O, configs and checkpoints.

Exports load on first use (see ``_lazy``): importing a submodule such as ``mmspeech_core.cli`` stays cheap.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    **dict.fromkeys(
        ["AudioError", "audio_info", "load_audio", "read_audio", "resample", "save_audio"], ".audio"
    ),
    **dict.fromkeys(
        ["CheckpointError", "PretrainedMixin", "load_pretrained_dir", "save_pretrained_dir"], ".checkpoint"
    ),
    **dict.fromkeys(
        ["ConfigError", "config_from_dict", "config_to_dict", "load_config", "save_config"], ".config"
    ),
    **dict.fromkeys(
        [
            "FlowPrompt",
            "LMPrompt",
            "Latents",
            "SpeakerEmbedding",
            "SpeechTokens",
            "Waveform",
            "lengths_to_mask",
        ],
        ".types",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from .audio import AudioError, audio_info, load_audio, read_audio, resample, save_audio  # noqa: F401
    from .checkpoint import CheckpointError, PretrainedMixin, load_pretrained_dir, save_pretrained_dir  # noqa: F401
    from .config import ConfigError, config_from_dict, config_to_dict, load_config, save_config  # noqa: F401
    from .types import (  # noqa: F401
        FlowPrompt,
        Latents,
        LMPrompt,
        SpeakerEmbedding,
        SpeechTokens,
        Waveform,
        lengths_to_mask,
    )
