"""Typed containers that stages exchange: never loose tuples.

Every container holds a padded batch plus per-item ``lengths`` and its own rate
(frame rate for token / latent sequences, sample rate for audio). They validate
shapes, dtypes and lengths at construction and raise ``ValueError`` with a
message that names the offending field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

T = TypeVar("T", bound="_Padded")


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask, True on valid frames."""
    max_len = int(lengths.max().item()) if max_len is None and lengths.numel() else (max_len or 0)
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _check_lengths(name: str, lengths: torch.Tensor, batch: int, time: int) -> None:
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{name}.lengths must be a torch.Tensor, got {type(lengths).__name__}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name}.lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{name}.lengths must be an integer tensor, got {lengths.dtype}")
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > time):
        raise ValueError(f"{name}.lengths must lie in [0, {time}], got {lengths.tolist()}")


def _check_rate(name: str, field: str, rate: float) -> None:
    if not (isinstance(rate, (int, float)) and rate > 0):
        raise ValueError(f"{name}.{field} must be a positive number, got {rate!r}")


@dataclass(frozen=True, kw_only=True)
class _Padded:
    """A padded batch along its last axis with per-item lengths."""

    lengths: torch.Tensor

    @property
    def _data(self) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def batch_size(self) -> int:
        return int(self._data.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    @property
    def max_len(self) -> int:
        return int(self._data.shape[-1])

    def mask(self) -> torch.Tensor:
        """(B, T) bool, True on valid frames."""
        return lengths_to_mask(self.lengths.to(self._data.device), self.max_len)

    def unbatch(self) -> list[torch.Tensor]:
        """Unpadded items, each with the time axis last."""
        return [self._data[i, ..., : int(n)] for i, n in enumerate(self.lengths.tolist())]

    def _with_data(self: T, data: torch.Tensor, lengths: torch.Tensor) -> T:
        raise NotImplementedError

    def to(self: T, device: torch.device | str, float_dtype: torch.dtype | None = None) -> T:
        """Moved to ``device``; floating data (not integer tokens) also cast to ``float_dtype`` if given."""
        # asynchronous only towards an accelerator: a copy *to the host* made so returns before its bytes
        # have landed (reading it at once gave another item's audio on a GPU: benchmarks/vae_gan.py)
        data = self._data.to(device, non_blocking=torch.device(device).type != "cpu")
        if float_dtype is not None and data.is_floating_point():
            data = data.to(float_dtype)
        return self._with_data(data, self.lengths.to(device))

    def pin_memory(self: T) -> T:
        """In page-locked memory (DataLoader ``pin_memory=True``), for copies to the GPU beside compute."""
        return self._with_data(self._data.pin_memory(), self.lengths.pin_memory())

    def select(self: T, index: int | Sequence[int] | torch.Tensor) -> T:
        """Sub-batch (keeps batch axis), trimmed to its longest item."""
        idx = torch.as_tensor([index] if isinstance(index, int) else index, dtype=torch.long)
        lengths = self.lengths[idx.to(self.lengths.device)]
        t = int(lengths.max()) if len(idx) else 0
        return self._with_data(self._data[idx.to(self._data.device), ..., :t], lengths)

    @staticmethod
    def _pad(items: Sequence[torch.Tensor], pad_value: float | int) -> tuple[torch.Tensor, torch.Tensor]:
        if not items:
            raise ValueError("cannot batch an empty list")
        lengths = torch.tensor([int(x.shape[-1]) for x in items], dtype=torch.long)
        t = int(lengths.max())
        shape = (len(items), *items[0].shape[:-1], t)
        out = items[0].new_full(shape, pad_value)
        for i, x in enumerate(items):
            if x.shape[:-1] != items[0].shape[:-1]:
                raise ValueError(
                    f"item {i} has leading shape {tuple(x.shape[:-1])}, expected {tuple(items[0].shape[:-1])}"
                )
            out[i, ..., : x.shape[-1]] = x
        return out, lengths


@dataclass(frozen=True, kw_only=True)
class SpeechTokens(_Padded):
    """Discrete speech tokens. tokens: (B, T) int64, lengths: (B,), frame_rate in Hz."""

    tokens: torch.Tensor
    frame_rate: float = 25.0
    vocab_size: int | None = None
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, torch.Tensor):
            raise TypeError(f"SpeechTokens.tokens must be a torch.Tensor, got {type(self.tokens).__name__}")
        if self.tokens.dim() != 2:
            raise ValueError(f"SpeechTokens.tokens must be (B, T), got shape {tuple(self.tokens.shape)}")
        if self.tokens.dtype.is_floating_point or self.tokens.dtype == torch.bool:
            raise ValueError(f"SpeechTokens.tokens must be an integer tensor, got {self.tokens.dtype}")
        _check_lengths("SpeechTokens", self.lengths, *self.tokens.shape)
        _check_rate("SpeechTokens", "frame_rate", self.frame_rate)
        if self.vocab_size is not None and self.tokens.numel():
            valid = self.tokens[self.mask()]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.vocab_size):
                raise ValueError(
                    f"SpeechTokens.tokens must lie in [0, {self.vocab_size}), got [{int(valid.min())}, {int(valid.max())}]"
                )

    @property
    def _data(self) -> torch.Tensor:
        return self.tokens

    def _with_data(self, data: torch.Tensor, lengths: torch.Tensor) -> SpeechTokens:
        return replace(self, tokens=data, lengths=lengths)

    @classmethod
    def from_list(
        cls,
        items: Sequence[torch.Tensor],
        frame_rate: float = 25.0,
        vocab_size: int | None = None,
        pad_id: int = 0,
    ) -> SpeechTokens:
        tokens, lengths = cls._pad([torch.as_tensor(x, dtype=torch.long) for x in items], pad_id)
        return cls(
            lengths=lengths, tokens=tokens, frame_rate=frame_rate, vocab_size=vocab_size, pad_id=pad_id
        )

    def durations(self) -> torch.Tensor:
        """(B,) seconds."""
        return self.lengths.float() / self.frame_rate


@dataclass(frozen=True, kw_only=True)
class Latents(_Padded):
    """Continuous latents. data: (B, C, T) float, lengths: (B,), frame_rate in Hz."""

    data: torch.Tensor
    frame_rate: float = 50.0

    def __post_init__(self) -> None:
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"Latents.data must be a torch.Tensor, got {type(self.data).__name__}")
        if self.data.dim() != 3:
            raise ValueError(f"Latents.data must be (B, C, T), got shape {tuple(self.data.shape)}")
        if not self.data.dtype.is_floating_point:
            raise ValueError(f"Latents.data must be floating point, got {self.data.dtype}")
        _check_lengths("Latents", self.lengths, self.data.shape[0], self.data.shape[2])
        _check_rate("Latents", "frame_rate", self.frame_rate)

    @property
    def _data(self) -> torch.Tensor:
        return self.data

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])

    def _with_data(self, data: torch.Tensor, lengths: torch.Tensor) -> Latents:
        return replace(self, data=data, lengths=lengths)

    @classmethod
    def from_list(cls, items: Sequence[torch.Tensor], frame_rate: float = 50.0) -> Latents:
        """items: each (C, T_i)."""
        data, lengths = cls._pad(list(items), 0.0)
        return cls(lengths=lengths, data=data, frame_rate=frame_rate)

    def masked(self) -> Latents:
        """Same latents with padding frames zeroed."""
        return replace(self, data=self.data * self.mask()[:, None, :].to(self.data.dtype))


@dataclass(frozen=True, kw_only=True)
class Waveform(_Padded):
    """Mono audio. audio: (B, T) float in [-1, 1], lengths: (B,), sample_rate in Hz."""

    audio: torch.Tensor
    sample_rate: int = 24000

    def __post_init__(self) -> None:
        if not isinstance(self.audio, torch.Tensor):
            raise TypeError(f"Waveform.audio must be a torch.Tensor, got {type(self.audio).__name__}")
        if self.audio.dim() != 2:
            raise ValueError(
                f"Waveform.audio must be mono (B, T), got shape {tuple(self.audio.shape)}; downmix first"
            )
        if not self.audio.dtype.is_floating_point:
            raise ValueError(f"Waveform.audio must be floating point, got {self.audio.dtype}")
        _check_lengths("Waveform", self.lengths, *self.audio.shape)
        if not (isinstance(self.sample_rate, int) and self.sample_rate > 0):
            raise ValueError(f"Waveform.sample_rate must be a positive int, got {self.sample_rate!r}")

    @property
    def _data(self) -> torch.Tensor:
        return self.audio

    def _with_data(self, data: torch.Tensor, lengths: torch.Tensor) -> Waveform:
        return replace(self, audio=data, lengths=lengths)

    @classmethod
    def from_list(cls, items: Sequence[torch.Tensor], sample_rate: int) -> Waveform:
        """items: each (T_i,) mono."""
        for i, x in enumerate(items):
            if x.dim() != 1:
                raise ValueError(f"item {i} must be 1-D mono audio, got shape {tuple(x.shape)}")
        audio, lengths = cls._pad([x.float() for x in items], 0.0)
        return cls(lengths=lengths, audio=audio, sample_rate=sample_rate)

    def durations(self) -> torch.Tensor:
        """(B,) seconds."""
        return self.lengths.float() / self.sample_rate

    def resample(self, sample_rate: int) -> Waveform:
        """Resample every item (lengths scaled and rounded up as torchaudio does)."""
        from .audio import resample  # audio imports this module: import here, not at the top

        if sample_rate == self.sample_rate:
            return self
        return Waveform.from_list(
            [resample(x, self.sample_rate, sample_rate) for x in self.unbatch()], sample_rate
        )


@dataclass(frozen=True)
class SpeakerEmbedding:
    """Fixed-size speaker vectors. vectors: (B, D) float."""

    vectors: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, torch.Tensor):
            raise TypeError(
                f"SpeakerEmbedding.vectors must be a torch.Tensor, got {type(self.vectors).__name__}"
            )
        if self.vectors.dim() != 2:
            raise ValueError(
                f"SpeakerEmbedding.vectors must be (B, D), got shape {tuple(self.vectors.shape)}"
            )
        if not self.vectors.dtype.is_floating_point:
            raise ValueError(f"SpeakerEmbedding.vectors must be floating point, got {self.vectors.dtype}")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def to(self, device: torch.device | str) -> SpeakerEmbedding:
        return SpeakerEmbedding(self.vectors.to(device))


@dataclass(frozen=True)
class LMPrompt:
    """One-shot prompt for the LM, per batch item: the reference's transcript ids and its speech tokens
    (the same utterance). Present or absent as a whole."""

    text: list[torch.Tensor]  # per item (N_i,) text token ids
    tokens: SpeechTokens  # (B, P) speech tokens of the reference

    def __post_init__(self) -> None:
        if len(self.text) != len(self.tokens):
            raise ValueError(
                f"LMPrompt has {len(self.text)} transcripts for {len(self.tokens)} token sequences"
            )
        if any(t.dim() != 1 or len(t) == 0 for t in self.text):
            raise ValueError("LMPrompt.text items must be non-empty 1-D id tensors")

    def __len__(self) -> int:
        return len(self.text)


@dataclass(frozen=True)
class FlowPrompt:
    """One-shot prompt for the flow, per batch item: the reference's speech tokens and its latents (the
    same utterance; the latents are trimmed to tokens × ratio frames where they disagree by a frame)."""

    tokens: SpeechTokens  # (B, P)
    latents: Latents  # (B, C, ~P·ratio)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.latents):
            raise ValueError(
                f"FlowPrompt has {len(self.tokens)} token sequences for {len(self.latents)} latent sequences"
            )

    def __len__(self) -> int:
        return len(self.tokens)
