"""LLM training entry: dynamic length batches, torchrun DDP, AMP, resumable checkpoints (core Trainer)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from mmspeech_core.data import LengthBatchSampler
from mmspeech_core.training import Trainer, init_distributed, set_seed

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
) -> tuple[SpeechLM, list[dict[str, float]]]:
    """Train (or resume) the LM. With ``cfg.model.backbone.pretrained`` set, a fresh model starts from that
    local Qwen2 folder's weights."""
    info = init_distributed(device)
    set_seed(cfg.train.seed + info.rank)
    model = init
    if model is None:
        model = SpeechLM(cfg)
        if cfg.model.backbone.pretrained:
            model.load_backbone(cfg.model.backbone.pretrained)
    model.config = dataclasses.replace(model.config, train=cfg.train)
    t = cfg.train
    sampler = LengthBatchSampler(
        dataset.lengths(), t.max_frames, t.max_batch, True, t.seed, info.rank, info.world_size
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=t.num_workers,
        collate_fn=functools.partial(collate, sample_rate=cfg.model.spk_sample_rate),
    )
    trainer = Trainer(model, t, out_dir, info)
    history = trainer.fit(loader, set_epoch=sampler.set_epoch, resume=resume)
    return model, history
