"""mmspeech core: typed containers every stage exchanges, audio I/O, configs and checkpoints."""

from .audio import AudioError, audio_info, load_audio, read_audio, resample, save_audio
from .checkpoint import CheckpointError, PretrainedMixin, load_pretrained_dir, save_pretrained_dir
from .config import ConfigError, config_from_dict, config_to_dict, load_config, save_config
from .types import Latents, SpeakerEmbedding, SpeechTokens, Waveform, lengths_to_mask

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "Latents",
    "PretrainedMixin",
    "SpeakerEmbedding",
    "SpeechTokens",
    "Waveform",
    "audio_info",
    "config_from_dict",
    "config_to_dict",
    "lengths_to_mask",
    "load_audio",
    "load_config",
    "load_pretrained_dir",
    "read_audio",
    "resample",
    "save_audio",
    "save_config",
    "save_pretrained_dir",
]
