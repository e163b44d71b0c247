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
from einops import rearrange
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
    """audio (B, 1, T), T a multiple of hop -> (B, out_dim, T / hop): log-mel frames (window 4 × the STFT
    hop, centred on each frame's start) at ``subframes`` frames per latent frame, stacked into channels, then
    ConvNeXt blocks."""

    fb: torch.Tensor
    window: torch.Tensor

    def __init__(
        self, out_dim: int, dim: int, layers: int, hop: int, sample_rate: int, mels: int, subframes: int = 1
    ) -> None:
        super().__init__()
        self.hop, self.subframes = hop, subframes
        self.stft_hop = hop // subframes
        self.n_fft = 4 * self.stft_hop
        fb = AF.melscale_fbanks(self.n_fft // 2 + 1, 0.0, sample_rate / 2, mels, sample_rate)  # (freqs, mels)
        self.register_buffer("fb", fb, persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.inp = nn.Conv1d(mels * subframes, dim, kernel_size=7, padding=3)
        self.blocks = _blocks(dim, layers)
        self.out = nn.Conv1d(dim, out_dim, kernel_size=1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.shape[-1] // self.hop
        spec = torch.stft(
            audio[:, 0].float(),
            self.n_fft,
            self.stft_hop,
            window=self.window,
            center=True,
            return_complex=True,
        ).abs()  # (B, freqs, frames × subframes + 1)
        mel = torch.log((spec.transpose(1, 2) @ self.fb).clamp(min=1e-5))[:, : frames * self.subframes]
        # (B, frames × subframes, mels) -> (B, subframes × mels, frames): a latent frame's subframes, in order
        mel = rearrange(mel, "b (f s) m -> b (s m) f", s=self.subframes)
        return self.out(self.blocks(self.inp(mel.to(audio.dtype))))


class ISTFTDecoder(nn.Module):
    """z (B, C, F) -> audio (B, 1, F × hop): ConvNeXt blocks at the latent rate, then per latent frame the
    log-magnitude and phase of ``subframes`` STFT frames (hop / subframes apart, window 4 × that, centred on
    each frame's start), overlapped by an inverse STFT. The head's width, subframes × (n_fft + 2), hardly
    depends on ``subframes``; a finer STFT makes phase easier to predict (Griffin-Lim from the recordings'
    own magnitudes, medium corpus, 8 items: PESQ-wb 3.15 at hop 480 / window 1920, 3.91 at 240 / 960)."""

    window: torch.Tensor

    def __init__(self, latent_dim: int, dim: int, layers: int, hop: int, subframes: int = 1) -> None:
        super().__init__()
        self.hop, self.subframes = hop, subframes
        self.stft_hop = hop // subframes
        self.n_fft = 4 * self.stft_hop
        self.inp = nn.Conv1d(latent_dim, dim, kernel_size=7, padding=3)
        self.blocks = _blocks(dim, layers)
        self.norm = nn.LayerNorm(dim)
        # log-magnitude and phase of n_fft / 2 + 1 bins, for each of a latent frame's STFT frames (the phase as
        # the direction of a predicted 2-D vector, as APNet does, was no better: PESQ-wb 1.600 against 1.604)
        self.head = nn.Linear(dim, subframes * (self.n_fft + 2))
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    @property
    def window_reach(self) -> int:
        """Latent frames on each side that one output sample's STFT frames span (plus the frame repeated
        at the end)."""
        return math.ceil(self.n_fft / 2 / self.hop) + 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        frames = z.shape[-1]
        h = self.blocks(self.inp(z))
        stft = self.head(self.norm(h.transpose(1, 2))).float()  # (B, F, subframes × (n_fft + 2))
        stft = rearrange(stft, "b f (s c) -> b c (f s)", s=self.subframes)  # (B, n_fft + 2, F × subframes)
        # F × subframes + 1 STFT frames make F × hop samples (centred windows): the last repeats its neighbour
        stft = F.pad(stft, (0, 1), mode="replicate")
        logmag, phase = stft.chunk(2, dim=1)
        spec = torch.polar(logmag.clamp(max=10.0).exp(), phase)  # exp(10) ≈ 22,000: far above any real bin
        audio = torch.istft(
            spec, self.n_fft, self.stft_hop, window=self.window, center=True, length=frames * self.hop
        )
        return audio[:, None].to(z.dtype)
