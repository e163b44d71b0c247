"""DAC-VAE GAN training on the core Trainer: generator step (mel, adversarial, feature matching, KL),
discriminator step, both resumable; tensorboard scalars, audio and mel images."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from mmspeech_core.data import Utterance
from mmspeech_core.training import (
    DistInfo,
    Trainer,
    autocast,
    epoch_setter,
    init_distributed,
    set_seed,
    warmup_cosine,
)
from torch import nn

from .config import VAEConfig
from .data import CropDataset
from .losses import VAELosses, kl_weight, phase_loss
from .model import DACVAE


class VAETrainer(Trainer):
    def __init__(
        self, model: DACVAE, cfg: VAEConfig, out_dir: str | Path, dist_info: DistInfo | None = None
    ) -> None:
        if cfg.train.parallel != "ddp" or cfg.train.grad_accum != 1:
            # the discriminator steps inside compute_losses, once per batch, beside its own DDP wrapper
            raise ValueError("VAE training supports parallel 'ddp' with grad_accum 1 only")
        super().__init__(model, cfg.train, out_dir, dist_info)
        self.vcfg = cfg
        self.losses = VAELosses(cfg.loss, cfg.model.sample_rate).to(self.dist.device)
        self.disc: nn.Module = self.losses.discriminator
        if self.dist.world_size > 1:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.disc = nn.parallel.DistributedDataParallel(self.disc, device_ids=ids)
            self.losses.gan.discriminator = self.disc
        t = cfg.train
        self.opt_d = torch.optim.AdamW(
            self.losses.discriminator.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay
        )
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(
            self.opt_d, lambda s: warmup_cosine(self._schedule_step(s), t.warmup_steps, t.max_steps)
        )
        self.last: dict[str, torch.Tensor] = {}
        self.on_log = self._log_media

    def extra_state(self) -> dict[str, Any]:
        return {
            "discriminator": self.losses.discriminator.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_d": self.sched_d.state_dict(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.losses.discriminator.load_state_dict(state["discriminator"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_d.load_state_dict(state["sched_d"])

    def compute_losses(self, batch: Any) -> dict[str, torch.Tensor | float]:
        """Generator forward; once the GAN has joined, the discriminator's own step on the detached
        reconstruction (DAC's order), then the generator's mel + KL (+ adversarial + feature matching) loss.
        The core Trainer does the generator's backward, clipping and optimiser step."""
        lc = self.vcfg.loss
        real = batch  # (B, T)
        with autocast(self.dist.device, self.cfg.amp):
            out = self.loss_module(real)
        fake = out["recon"].float()
        use_gan = self.step >= lc.disc_start_step
        losses: dict[str, torch.Tensor | float] = {}
        if use_gan:
            losses["disc"] = self._discriminator_step(fake.detach(), real)
        mel = self.losses.mel_loss(fake, real)
        kw = kl_weight(self.step, lc)
        loss = lc.mel_weight * mel + kw * out["kl"]
        if lc.phase_weight:
            losses["phase"] = phase_loss(fake, real, lc.phase_windows)
            loss = loss + lc.phase_weight * losses["phase"]
        if use_gan:
            adv, feat = self.losses.generator_losses(fake, real)
            loss = loss + lc.adv_weight * adv + lc.feature_weight * feat
            losses.update(adv=adv, feature=feat)
        self.last = {"real": real[0].detach(), "fake": fake[0].detach()}
        return losses | {"loss": loss, "mel": mel, "kl": out["kl"], "kl_weight": kw}

    def _discriminator_step(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        d_loss = self.losses.discriminator_loss(fake, real)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        nn.utils.clip_grad_norm_(self.losses.discriminator.parameters(), self.vcfg.loss.disc_grad_clip)
        self.opt_d.step()
        self.sched_d.step()
        return d_loss.detach()

    def val_step(self, batch: Any) -> dict[str, float]:
        """Reconstruction from the posterior mean: mel distance and KL."""
        out = self.model(batch, sample=False)
        return {"mel": float(self.losses.mel_loss(out["recon"].float(), batch)), "kl": float(out["kl"])}

    def _log_media(self, writer: Any, step: int) -> None:
        if not self.last:
            return
        sr = self.vcfg.model.sample_rate
        for k, x in self.last.items():
            writer.add_audio(f"audio/{k}", x.float().clamp(-1, 1).cpu(), step, sample_rate=sr)
            spec = torch.stft(
                x.float().cpu(), 1024, 256, window=torch.hann_window(1024), return_complex=True
            ).abs()
            img = spec.clamp_min(1e-5).log().flip(0)
            writer.add_image(f"mel/{k}", ((img - img.min()) / (img.max() - img.min() + 1e-8))[None], step)


def train(
    cfg: VAEConfig,
    utts: list[Utterance],
    out_dir: str | Path,
    device: str | None = None,
    resume: bool = True,
    val_utts: list[Utterance] | None = None,
    init: DACVAE | None = None,
) -> tuple[DACVAE, list[dict[str, float]]]:
    """Train (or resume) the VAE; ``init``: start from these weights (fine-tuning; the discriminator and
    the optimizers start fresh)."""
    if cfg.train.amp == "fp16":  # two optimisers and a GAN: no loss scaling here, so no fp16
        raise ValueError("VAE training supports amp 'bf16' or 'none', not 'fp16'")
    info = init_distributed(device)
    set_seed(cfg.train.seed + info.rank)
    hop = cfg.model.hop
    segment = max(hop, int(cfg.loss.segment_s * cfg.model.sample_rate) // hop * hop)
    ds = CropDataset(utts, cfg.model.sample_rate, segment, seed=cfg.train.seed + info.rank)
    # a seeded, epoch-keyed order on one rank too: a resumed run then reads the batches it would have read
    sampler: torch.utils.data.DistributedSampler[torch.Tensor] = torch.utils.data.DistributedSampler(
        ds, info.world_size, info.rank, seed=cfg.train.seed
    )
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.train.max_batch,
        sampler=sampler,
        num_workers=cfg.train.num_workers,
        drop_last=len(ds) >= cfg.train.max_batch,
    )
    model = init if init is not None else DACVAE(cfg)
    model.config = dataclasses.replace(model.config, train=cfg.train)
    val = None
    if val_utts:  # fixed crops from the start of each file: comparable from one evaluation to the next
        vds = CropDataset(val_utts, cfg.model.sample_rate, segment, random_crop=False)
        val = torch.utils.data.DataLoader(vds, batch_size=cfg.train.max_batch)
    trainer = VAETrainer(model, cfg, out_dir, info)
    history = trainer.fit(loader, epoch_setter(sampler.set_epoch, ds), resume, val)
    return model, history
