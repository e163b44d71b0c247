"""DAC losses: multi-scale mel L1, LSGAN adversarial + feature matching (dac's Discriminator), KL warm-up."""

from __future__ import annotations

import torch
from audiotools import AudioSignal
from dac.model.discriminator import Discriminator
from dac.nn.loss import GANLoss, MelSpectrogramLoss
from torch import nn

from .config import VAELossConfig


def kl_weight(step: int, cfg: VAELossConfig) -> float:
    """Linear warm-up from ``kl_start`` to ``kl_weight`` over ``kl_warmup_steps``."""
    if step >= cfg.kl_warmup_steps:
        return cfg.kl_weight
    return cfg.kl_start + (cfg.kl_weight - cfg.kl_start) * step / max(cfg.kl_warmup_steps, 1)


class VAELosses(nn.Module):
    def __init__(self, cfg: VAELossConfig, sample_rate: int) -> None:
        super().__init__()
        self.cfg, self.sample_rate = cfg, sample_rate
        k = len(cfg.mel_windows)
        self.mel = MelSpectrogramLoss(
            n_mels=list(cfg.mel_bins),
            window_lengths=list(cfg.mel_windows),
            mag_weight=0.0,
            log_weight=1.0,
            pow=1.0,
            clamp_eps=1e-5,
            mel_fmin=[0.0] * k,
            mel_fmax=[None] * k,
        )
        self.discriminator = Discriminator(
            rates=[],
            periods=list(cfg.disc_periods),
            fft_sizes=list(cfg.disc_fft_sizes),
            sample_rate=sample_rate,
        )
        self.gan = GANLoss(self.discriminator)

    def signal(self, x: torch.Tensor) -> AudioSignal:
        """(B, T) -> AudioSignal (B, 1, T)."""
        return AudioSignal(x[:, None], self.sample_rate)

    def mel_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.mel(self.signal(fake.float()), self.signal(real.float()))

    def discriminator_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.gan.discriminator_loss(self.signal(fake), self.signal(real))

    def generator_losses(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (adversarial, feature matching)."""
        return self.gan.generator_loss(self.signal(fake), self.signal(real))
