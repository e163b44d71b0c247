"""Helpers for tokenizing data. Batch extraction itself is :func:`mmspeech_core.data.extract_features`
(sharded, resumable, bad audio logged and skipped), shared with the VAE's latent extraction."""

from __future__ import annotations

from pathlib import Path


def sample_wavs() -> list[Path]:
    """The two real 16 kHz Mandarin recordings (one speaker) shipped in the s3tokenizer wheel."""
    import s3tokenizer

    return sorted((Path(s3tokenizer.__file__).parent / "assets").glob("*.wav"))
