"""Tokenizer configs: the S3Tokenizer v2 shape, and the trainable CTC-supervised FSQ tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmspeech_core.training import TrainConfig


@dataclass
class S3Config:
    """S3TokenizerV2 shape (``speech_tokenizer_v2_25hz``). Head size must stay 64 (its RoPE table is fixed)."""

    n_mels: int = 128
    n_audio_state: int = 1280
    n_audio_head: int = 20
    n_audio_layer: int = 6

    def __post_init__(self) -> None:
        if self.n_audio_state // self.n_audio_head != 64:
            raise ValueError("S3TokenizerV2 needs n_audio_state / n_audio_head == 64")


@dataclass
class FSQModelConfig:
    """Trainable tokenizer: 16 kHz log-mel -> conv ×4 subsampling (25 Hz) -> encoder -> FSQ -> decoder -> CTC."""

    n_mels: int = 128
    dim: int = 512
    heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 2
    fsq_dims: int = 8  # 3 ** 8 = 6561 codes, as S3Tokenizer v2
    fsq_levels: int = 3
    vocab: list[str] = field(default_factory=list)  # CTC output symbols (characters); index 0 is the blank
    dropout: float = 0.1

    @property
    def codebook_size(self) -> int:
        return self.fsq_levels**self.fsq_dims


@dataclass
class FSQTokenizerConfig:
    model: FSQModelConfig = field(default_factory=FSQModelConfig)
    # fp32 by default, unlike the other stages: tokens from a tokenizer trained under bf16 autocast read worse
    # zero-shot in a paired comparison (the repository's docs/quickstart-history.md, 2026-11-29),
    # and the tokenizer is a small share of the recipe's training time
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, max_frames=60000, amp="none"))


def tiny_fsq_config(vocab: list[str]) -> FSQTokenizerConfig:
    return FSQTokenizerConfig(
        model=FSQModelConfig(dim=64, heads=2, encoder_layers=1, decoder_layers=1, vocab=vocab, dropout=0.0)
    )
