"""Batch token extraction for a manifest (sharded, resumable, bad audio logged and skipped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmspeech_core import Waveform
from mmspeech_core.audio import read_audio
from mmspeech_core.data import Utterance, run_extraction


def extract_tokens(
    tokenizer: Any,
    utts: list[Utterance],
    out_dir: str | Path,
    batch_size: int = 16,
    shard_size: int = 1000,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, int]:
    """``tokenizer``: anything with ``sample_rate`` and ``encode(Waveform) -> SpeechTokens``."""
    sr = tokenizer.sample_rate

    def process(items: list[torch.Tensor]) -> list[torch.Tensor]:
        return tokenizer.encode(Waveform.from_list(items, sr)).unbatch()

    return run_extraction(
        utts,
        lambda u: read_audio(u.audio, sr),
        process,
        out_dir,
        batch_size,
        shard_size,
        rank,
        world_size,
        desc="tokens",
    )


def sample_wavs() -> list[Path]:
    """The two real 16 kHz Mandarin recordings (one speaker) shipped in the s3tokenizer wheel."""
    import s3tokenizer

    return sorted((Path(s3tokenizer.__file__).parent / "assets").glob("*.wav"))
