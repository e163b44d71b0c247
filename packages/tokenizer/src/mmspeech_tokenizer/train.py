"""Train the CTC-supervised FSQ tokenizer (core Trainer: DDP, AMP, resumable)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from mmspeech_core.data import LengthBatchSampler, Utterance
from mmspeech_core.training import Trainer, init_distributed, set_seed

from .config import FSQTokenizerConfig
from .data import CTCDataset, collate
from .model import FSQTokenizer, build_vocab


def train(
    cfg: FSQTokenizerConfig,
    utts: list[Utterance],
    out_dir: str | Path,
    device: str | None = None,
    resume: bool = True,
    val_utts: list[Utterance] | None = None,
    cache_features: bool = False,
) -> tuple[FSQTokenizer, list[dict[str, float]]]:
    """With an empty ``cfg.model.vocab`` the character vocabulary is built from the transcripts (and the
    validation transcripts, so no validation character is unknown). ``cache_features``: keep every
    utterance's log-mels in memory after the first epoch (see :class:`CTCDataset`)."""
    if not cfg.model.vocab:
        cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(
                cfg.model, vocab=build_vocab([u.text or "" for u in utts + (val_utts or [])])
            ),
        )
    info = init_distributed(device)
    set_seed(cfg.train.seed + info.rank)
    ds = CTCDataset(utts, cfg.model.vocab, cfg.model.n_mels, cache=cache_features)
    t = cfg.train
    sampler = LengthBatchSampler(
        ds.lengths(), t.max_frames, t.max_batch, True, t.seed, info.rank, info.world_size
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=t.num_workers, collate_fn=collate
    )
    model = FSQTokenizer(cfg)
    val = None
    if val_utts:
        vds = CTCDataset(val_utts, cfg.model.vocab, cfg.model.n_mels, cache=cache_features)
        vs = LengthBatchSampler(vds.lengths(), t.max_frames, t.max_batch, shuffle=False)
        val = torch.utils.data.DataLoader(vds, batch_sampler=vs, collate_fn=collate)
    trainer = Trainer(model, t, out_dir, info)
    history = trainer.fit(loader, sampler.set_epoch, resume, val)
    return model, history
