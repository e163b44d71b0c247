"""Latent extraction for a manifest (sharded, resumable) and per-channel latent statistics."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from mmspeech_core import Waveform
from mmspeech_core.audio import read_audio
from mmspeech_core.checkpoint import atomic_write_text
from mmspeech_core.data import Utterance, load_shards, run_extraction

from .model import DACVAE


def extract_latents(
    model: DACVAE,
    utts: list[Utterance],
    out_dir: str | Path,
    batch_size: int = 8,
    shard_size: int = 1000,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, int]:
    """Posterior-mean latents (C, T) for every utterance -> ``out_dir`` shards. Resumes; bad audio is logged."""

    def process(items: list[torch.Tensor]) -> list[torch.Tensor]:
        return model.encode(Waveform.from_list(items, model.sample_rate)).unbatch()

    return run_extraction(
        utts,
        lambda u: read_audio(u.audio, model.sample_rate),
        process,
        out_dir,
        batch_size,
        shard_size,
        rank,
        world_size,
        desc="latents",
    )


def latent_stats(latent_dir: str | Path, out_file: str | Path | None = None) -> dict[str, list[float]]:
    """Per-channel mean/std over every frame of an extracted folder (for normalising flow targets)."""
    feats = load_shards(latent_dir)
    if not feats:
        raise ValueError(f"no latents found in {latent_dir}")
    x = torch.cat([v.float() for v in feats.values()], dim=-1)  # (C, total frames)
    stats = {"mean": x.mean(-1).tolist(), "std": x.std(-1).tolist(), "frames": [float(x.shape[-1])]}
    if out_file:
        atomic_write_text(Path(out_file), json.dumps(stats, indent=2) + "\n")
    return stats
