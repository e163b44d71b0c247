"""Per-channel latent statistics. Extraction is :func:`mmspeech_core.data.extract_features` with the VAE."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from mmspeech_core.checkpoint import atomic_write_text
from mmspeech_core.data import load_shards


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
