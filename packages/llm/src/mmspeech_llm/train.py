"""LLM training entry: dynamic length batches, torchrun DDP, AMP, resumable checkpoints (core Trainer)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from mmspeech_core.data import LengthBatchSampler
from mmspeech_core.training import Trainer, init_distributed, set_seed, train_loader

from .config import LLMConfig
from .data import LLMDataset, collate
from .model import SpeechLM


def train(
    cfg: LLMConfig,
    dataset: LLMDataset,
    out_dir: str | Path,
    device: str | None = None,
    resume: bool = True,
    init: SpeechLM | None = None,
    val_dataset: LLMDataset | None = None,
    trained_with: dict[str, str] | None = None,
) -> tuple[SpeechLM, list[dict[str, float]]]:
    """Train (or resume) the LM. With ``cfg.model.backbone.pretrained`` set, a fresh model starts from that
    local Qwen2 folder's weights. Steps that validated on ``val_dataset`` carry ``val/...`` metrics."""
    info = init_distributed(device)
    set_seed(cfg.train.seed + info.rank)
    model = init
    if model is None:
        model = SpeechLM(cfg)
        if cfg.model.backbone.pretrained:
            model.load_backbone(cfg.model.backbone.pretrained)
    model.config = dataclasses.replace(model.config, train=cfg.train)
    if trained_with is not None:  # fingerprints of the parts behind the data, saved with every checkpoint
        model.trained_with = dict(trained_with)
    t = cfg.train
    loader, set_epoch = train_loader(dataset, collate, t, info)
    val = None
    if val_dataset is not None:
        vs = LengthBatchSampler(val_dataset.lengths(), t.max_frames, t.max_batch, shuffle=False)
        val = torch.utils.data.DataLoader(val_dataset, batch_sampler=vs, collate_fn=collate)
    trainer = Trainer(model, t, out_dir, info)
    history = trainer.fit(loader, set_epoch, resume, val)
    return model, history
