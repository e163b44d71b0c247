"""DAC-VAE configs (config.json next to the weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mmspeech_core.training import TrainConfig


@dataclass
class VAEModelConfig:
    sample_rate: int = 24000
    encoder_dim: int = 64
    encoder_rates: tuple[int, ...] = (2, 4, 6, 10)  # product = hop = 480 -> 50 Hz (2x the 25 Hz tokens)
    latent_dim: int = 64
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (10, 6, 4, 2)
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    # "dac": dac's strided-conv encoder and upsampling decoder (the DAC-VAE design; the rates above).
    # "mel" / "istft": spectral ones at the latent frame rate (spectral.py; window 4 × hop): measured on the
    # quickstart corpus (2 CPU cores, 500 steps) 3.4x cheaper per step and mel distance 0.90 against 1.39
    encoder: str = "dac"  # "dac" or "mel"
    decoder: str = "dac"  # "dac" or "istft"
    spectral_dim: int = 128  # width of the spectral encoder / decoder
    spectral_layers: int = 4  # ConvNeXt blocks in each
    mels: int = 80  # the mel encoder's input bands
    # STFT frames per latent frame in the spectral encoder and decoder (hop / subframes apart): 1 is a window
    # of 4 × hop (80 ms at 50 Hz), too coarse for phase and for fast formant and pitch movement
    spectral_subframes: int = 1

    def __post_init__(self) -> None:
        if self.encoder not in ("dac", "mel"):
            raise ValueError(f"encoder must be 'dac' or 'mel', got {self.encoder!r}")
        if self.decoder not in ("dac", "istft"):
            raise ValueError(f"decoder must be 'dac' or 'istft', got {self.decoder!r}")
        if self.spectral_subframes < 1 or self.hop % self.spectral_subframes:
            raise ValueError(
                f"spectral_subframes {self.spectral_subframes} must be >= 1 and divide hop {self.hop}"
            )
        if math.prod(self.encoder_rates) != math.prod(self.decoder_rates):
            raise ValueError(
                f"encoder rates {self.encoder_rates} and decoder rates {self.decoder_rates} must have the same product"
            )
        if self.sample_rate % self.hop:
            raise ValueError(f"sample_rate {self.sample_rate} is not a multiple of hop {self.hop}")
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            raise ValueError("decoder_dim must be divisible by 2 ** len(decoder_rates)")

    @property
    def hop(self) -> int:
        return math.prod(self.encoder_rates)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop


@dataclass
class VAELossConfig:
    mel_weight: float = 15.0
    feature_weight: float = 2.0
    adv_weight: float = 1.0
    kl_weight: float = 0.1  # final weight, reached after kl_warmup_steps (starts at kl_start)
    kl_start: float = 1e-4
    kl_warmup_steps: int = 20_000
    mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    disc_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    disc_fft_sizes: tuple[int, ...] = (2048, 1024, 512)
    disc_start_step: int = 0  # steps of reconstruction-only warm-up before the GAN joins
    disc_grad_clip: float = 10.0  # discriminator gradient-norm clip (DAC's value)
    segment_s: float = 0.38  # training crop (rounded to a multiple of hop)
    # phase-difference loss (losses.phase_loss): 0 is DAC's recipe, where only the GAN shapes phase
    phase_weight: float = 0.0
    phase_windows: tuple[int, ...] = (480, 960)


@dataclass
class VAEConfig:
    """``train.grad_clip`` is the generator's gradient-norm clip: 1e3 as in DAC (was 1.0 before 0.2, which
    clipped nearly every GAN step); ``loss.disc_grad_clip`` the discriminator's (10, as in DAC)."""

    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=1e-4, betas=(0.8, 0.99), weight_decay=0.0, max_batch=16, grad_clip=1e3
        )
    )


def tiny_config() -> VAEConfig:
    """A small config for tests and the CPU quickstart (hop 480, 8 latent channels)."""
    return VAEConfig(
        model=VAEModelConfig(
            encoder_dim=8,
            encoder_rates=(2, 4, 6, 10),
            latent_dim=8,
            decoder_dim=64,
            decoder_rates=(10, 6, 4, 2),
        ),
        loss=VAELossConfig(
            mel_windows=(64, 256, 1024),
            mel_bins=(10, 40, 80),
            disc_periods=(2, 3),
            disc_fft_sizes=(512,),
            kl_warmup_steps=10,
        ),
    )
