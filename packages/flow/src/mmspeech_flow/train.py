"""Flow training entry: dynamic length batches, torchrun DDP, AMP, resumable checkpoints (core Trainer)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from mmspeech_core.data import LengthBatchSampler
from mmspeech_core.training import Trainer, init_distributed, set_seed, train_loader

from .config import FlowConfig
from .data import FlowBatch, FlowDataset, collate
from .model import FlowModel


def _collate(cfg: FlowConfig) -> functools.partial[FlowBatch]:
    return functools.partial(collate, token_rate=cfg.model.token_rate, latent_rate=cfg.model.latent_rate)


def make_loader(ds: FlowDataset, cfg: FlowConfig) -> torch.utils.data.DataLoader:
    """Validation batches: every item once, in length order."""
    t = cfg.train
    sampler = LengthBatchSampler(ds.lengths(), t.max_frames, t.max_batch, shuffle=False)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=_collate(cfg))


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
    loader, set_epoch = train_loader(dataset, _collate(cfg), cfg.train, info)
    val = make_loader(val_dataset, cfg) if val_dataset is not None else None
    trainer = Trainer(model, cfg.train, out_dir, info)
    history = trainer.fit(loader, set_epoch, resume, val)
    return model, history
