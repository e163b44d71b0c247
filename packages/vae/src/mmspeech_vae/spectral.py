"""A spectral encoder and decoder for the VAE (Vocos-style): every layer runs at the latent frame rate.

dac's encoder must learn a filterbank from raw samples through strided convs, and its decoder must learn
to make phase-coherent waveforms by upsampling, both at up to 24,000 steps a second; in the first few
hundred training steps (a CPU quickstart) neither gets there, and the latents carry loudness but no
formants. Here the encoder reads log-mel frames and the decoder predicts STFT frames (log-magnitude and
phase) that an inverse STFT overlaps into audio, so both see the spectrum directly and cost little.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn


class ConvNeXtBlock(nn.Module):
    """Depth-wise conv (kernel 7), LayerNorm, point-wise MLP, scaled residual. x: (B, D, F) -> (B, D, F)."""

    def __init__(self, dim: int, mult: int = 3) -> None:
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, mult * dim)
        self.down = nn.Linear(mult * dim, dim)
        # a small residual scale, as in ConvNeXt / Vocos: every block starts close to the identity
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(F.gelu(self.up(self.norm(self.dw(x).transpose(1, 2)))))
        return x + (self.scale * h).transpose(1, 2)


def _blocks(dim: int, layers: int) -> nn.Sequential:
    return nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(layers)])


class MelEncoder(nn.Module):
    """audio (B, 1, T), T a multiple of hop -> (B, out_dim, T / hop): log-mel frames (window 4 × hop,
    centred on each latent frame's start), then ConvNeXt blocks."""

    fb: torch.Tensor
    window: torch.Tensor

    def __init__(self, out_dim: int, dim: int, layers: int, hop: int, sample_rate: int, mels: int) -> None:
        super().__init__()
        self.hop, self.n_fft = hop, 4 * hop
        fb = AF.melscale_fbanks(self.n_fft // 2 + 1, 0.0, sample_rate / 2, mels, sample_rate)  # (freqs, mels)
        self.register_buffer("fb", fb, persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.inp = nn.Conv1d(mels, dim, kernel_size=7, padding=3)
        self.blocks = _blocks(dim, layers)
        self.out = nn.Conv1d(dim, out_dim, kernel_size=1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.shape[-1] // self.hop
        spec = torch.stft(
            audio[:, 0].float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        ).abs()  # (B, freqs, frames + 1)
        mel = torch.log((spec.transpose(1, 2) @ self.fb).clamp(min=1e-5)).transpose(1, 2)[..., :frames]
        return self.out(self.blocks(self.inp(mel.to(audio.dtype))))


class ISTFTDecoder(nn.Module):
    """z (B, C, F) -> audio (B, 1, F × hop): ConvNeXt blocks, then per frame the log-magnitude and phase of
    an STFT frame (window 4 × hop, centred on each frame's start), overlapped by an inverse STFT."""

    window: torch.Tensor

    def __init__(self, latent_dim: int, dim: int, layers: int, hop: int) -> None:
        super().__init__()
        self.hop, self.n_fft = hop, 4 * hop
        self.inp = nn.Conv1d(latent_dim, dim, kernel_size=7, padding=3)
        self.blocks = _blocks(dim, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.n_fft + 2)  # log-magnitude and phase of n_fft / 2 + 1 bins
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    @property
    def window_reach(self) -> int:
        """Latent frames on each side that one output sample's STFT frames span (plus the frame repeated
        at the end)."""
        return math.ceil(self.n_fft / 2 / self.hop) + 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        frames = z.shape[-1]
        h = self.blocks(self.inp(z))
        # frames + 1 STFT frames make frames × hop samples (centred windows): the last one repeats its neighbour
        h = F.pad(h, (0, 1), mode="replicate")
        logmag, phase = self.head(self.norm(h.transpose(1, 2))).float().transpose(1, 2).chunk(2, dim=1)
        spec = torch.polar(logmag.clamp(max=10.0).exp(), phase)  # exp(10) ≈ 22,000: far above any real bin
        audio = torch.istft(
            spec, self.n_fft, self.hop, window=self.window, center=True, length=frames * self.hop
        )
        return audio[:, None].to(z.dtype)
