"""Loading a speech tokenizer, and helpers for tokenizing data. Batch extraction itself is :func:`mmspeech_core.data.extract_features`
(sharded, resumable, bad audio logged and skipped), shared with the VAE's latent extraction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import s3tokenizer

from .model import FSQTokenizer
from .s3 import S3SpeechTokenizer


def load_speech_tokenizer(
    path: str | os.PathLike[str], device: str = "cpu"
) -> FSQTokenizer | S3SpeechTokenizer:
    """A trained FSQ tokenizer folder (from ``train``), or anything :meth:`S3SpeechTokenizer.from_pretrained`
    reads (the official ONNX file, a .pt, a converted folder)."""
    meta = Path(path) / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("kind") == FSQTokenizer.checkpoint_kind:
        return FSQTokenizer.from_pretrained(Path(path), device=device)
    return S3SpeechTokenizer.from_pretrained(path, device=device)


def sample_wavs() -> list[Path]:
    """The two real 16 kHz Mandarin recordings (one speaker) shipped in the s3tokenizer wheel."""
    return sorted((Path(s3tokenizer.__file__).parent / "assets").glob("*.wav"))
