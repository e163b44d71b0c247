"""Stage interfaces: what each package offers the pipeline (structural typing, no inheritance needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .types import Latents, SpeakerEmbedding, SpeechTokens, Waveform


@runtime_checkable
class SpeechTokenizerStage(Protocol):
    """Audio -> discrete speech tokens (stage 0). Attributes are read-only (a class constant or a property)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def frame_rate(self) -> float: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, wav: Waveform) -> SpeechTokens: ...

    def fingerprint(self) -> str:
        """A hash of the weights: what stages trained on this one's output record (their provenance)."""
        ...


@runtime_checkable
class LatentCodecStage(Protocol):
    """Audio <-> continuous latents (the VAE)."""

    sample_rate: int
    frame_rate: float

    def encode(self, wav: Waveform) -> Latents: ...

    def decode(self, latents: Latents) -> Waveform: ...

    def fingerprint(self) -> str: ...


@runtime_checkable
class TextToTokensStage(Protocol):
    """Text (+ speaker reference) -> speech tokens (stage 1, the LM)."""

    def embed_speaker(self, reference: Waveform) -> SpeakerEmbedding: ...


@runtime_checkable
class TokensToLatentsStage(Protocol):
    """Speech tokens + speaker (+ prompt latents) -> latents (stage 2, flow matching)."""

    def generate(
        self, tokens: SpeechTokens, speaker: SpeakerEmbedding, prompt: Latents | None = None
    ) -> Latents: ...


@runtime_checkable
class TrainableStage(Protocol):
    """What the shared :class:`~mmspeech_core.training.Trainer` needs of a model: the losses of a batch
    (with the ``"loss"`` to minimise; other entries are logged) and a pretrained folder to checkpoint into."""

    def training_loss(self, batch: Any) -> dict[str, torch.Tensor]: ...

    def save_pretrained(self, directory: str | Path) -> Path: ...
