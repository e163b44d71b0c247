"""Flow training entry: dynamic length batches, torchrun DDP, AMP, resumable checkpoints (core Trainer)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from mmspeech_core.data import LengthBatchSampler
from mmspeech_core.training import Trainer, init_distributed, set_seed

from .config import FlowConfig
from .data import FlowDataset, collate
from .model import FlowModel


def make_loader(
    ds: FlowDataset, cfg: FlowConfig, rank: int = 0, world: int = 1, shuffle: bool = True
) -> torch.utils.data.DataLoader:
    t = cfg.train
    sampler = LengthBatchSampler(ds.lengths(), t.max_frames, t.max_batch, shuffle, t.seed, rank, world)
    return torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=t.num_workers,
        collate_fn=functools.partial(
            collate, token_rate=cfg.model.token_rate, latent_rate=cfg.model.latent_rate
        ),
    )


def train(
    cfg: FlowConfig,
    dataset: FlowDataset,
    out_dir: str | Path,
    device: str | None = None,
    resume: bool = True,
    init: FlowModel | None = None,
    val_dataset: FlowDataset | None = None,
    trained_with: dict[str, str] | None = None,
) -> tuple[FlowModel, list[dict[str, float]]]:
    """Train (or resume) a flow model; returns it with the per-step metrics of this call
    (steps that validated on ``val_dataset`` carry ``val/...`` entries)."""
    info = init_distributed(device)
    set_seed(cfg.train.seed + info.rank)
    model = init if init is not None else FlowModel(cfg)
    model.config = dataclasses.replace(model.config, train=cfg.train)
    if trained_with is not None:  # fingerprints of the parts behind the data, saved with every checkpoint
        model.trained_with = dict(trained_with)
    loader = make_loader(dataset, cfg, info.rank, info.world_size)
    val = make_loader(val_dataset, cfg, shuffle=False) if val_dataset is not None else None
    trainer = Trainer(model, cfg.train, out_dir, info)
    history = trainer.fit(loader, loader.batch_sampler.set_epoch, resume, val)  # type: ignore[union-attr]
    return model, history
