"""Stage interfaces: what each package offers the pipeline (structural typing, no inheritance needed)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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
