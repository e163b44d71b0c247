"""Per-channel latent statistics. Extraction is :func:`mmspeech_core.data.extract_features` with the VAE."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mmspeech_core.checkpoint import atomic_write_text
from mmspeech_core.data import load_shards


def latent_stats(
    latent_dir: str | Path, out_file: str | Path | None = None, ids: Iterable[str] | None = None
) -> dict[str, list[float]]:
    """Per-channel mean/std over every frame of an extracted folder (for normalising flow targets), or of
    its items ``ids`` only: a folder that also holds held-out utterances would otherwise leak their
    statistics into the flow's normalisation. An id the folder lacks is an error."""
    feats = load_shards(latent_dir)
    keys = list(feats) if ids is None else list(ids)
    if missing := [k for k in keys if k not in feats]:
        raise ValueError(
            f"no latents in {latent_dir} for {len(missing)} of the {len(keys)} ids (first: {missing[0]!r})"
        )
    if not keys:
        raise ValueError(f"no latents found in {latent_dir}" if ids is None else "no ids given")
    # running sums in float64, one item at a time: memory stays flat however large the corpus
    total = sq = None
    frames = 0
    for k in keys:
        x = feats[k].double()  # (C, T)
        total = x.sum(-1) if total is None else total + x.sum(-1)
        sq = (x * x).sum(-1) if sq is None else sq + (x * x).sum(-1)
        frames += x.shape[-1]
    assert total is not None and sq is not None
    mean = total / frames
    var = (sq - frames * mean * mean) / max(frames - 1, 1)  # unbiased, as torch.std
    stats = {"mean": mean.tolist(), "std": var.clamp_min(0).sqrt().tolist(), "frames": [float(frames)]}
    if out_file:
        atomic_write_text(Path(out_file), json.dumps(stats, indent=2) + "\n")
    return stats
