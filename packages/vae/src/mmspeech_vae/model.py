"""DAC-VAE: dac's encoder/decoder blocks (or spectral ones, spectral.py) around a Gaussian bottleneck;
24 kHz mono <-> latents."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import torch
import torch.nn.functional as F
from dac.model.dac import Decoder, Encoder, init_weights
from mmspeech_core import Latents, PretrainedMixin, Waveform
from torch import nn

from . import __version__
from .config import VAEConfig
from .spectral import ISTFTDecoder, MelEncoder


class DACVAE(nn.Module, PretrainedMixin):
    """``encode(Waveform) -> Latents`` (posterior mean), ``decode(Latents) -> Waveform`` (frames × hop samples)."""

    checkpoint_kind = "vae"
    config_class = VAEConfig
    package_version = __version__

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        m = config.model
        with (
            warnings.catch_warnings()
        ):  # dac builds its convs with the deprecated (still working) weight_norm
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            self.encoder: nn.Module = (
                Encoder(m.encoder_dim, list(m.encoder_rates), 2 * m.latent_dim)
                if m.encoder == "dac"
                else MelEncoder(
                    2 * m.latent_dim,
                    m.spectral_dim,
                    m.spectral_layers,
                    m.hop,
                    m.sample_rate,
                    m.mels,
                    m.spectral_subframes,
                )
            )
            self.decoder: nn.Module = (
                Decoder(m.latent_dim, m.decoder_dim, list(m.decoder_rates))
                if m.decoder == "dac"
                else ISTFTDecoder(
                    m.latent_dim,
                    m.spectral_dim,
                    m.spectral_layers,
                    m.hop,
                    m.spectral_subframes,
                )
            )
        # dac's own init, as DAC() applies it. On its weight-normed convs the truncated-normal weight is
        # recomputed from (g, v) at the first forward, so what lasts is the zeroed bias, exactly as in dac.
        self.apply(init_weights)
        # dac's transposed convs lose one sample per odd stride; output_padding restores frames × hop exactly
        rates = iter(m.decoder_rates)
        for mod in self.decoder.modules():
            if isinstance(mod, nn.ConvTranspose1d):
                s = next(rates)
                mod.output_padding = (s % 2,)

    @property
    def sample_rate(self) -> int:
        return self.config.model.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.model.frame_rate

    @property
    def hop(self) -> int:
        return self.config.model.hop

    @property
    def decoder_context(self) -> int:
        """Latent frames on each side that can change a decoded sample (an upper bound of the decoder's
        one-sided receptive field). Decoding a window with this much context on both sides and cropping
        gives the samples of a full decode (streaming relies on it). Walks dac's layers in order: a conv of
        kernel k and dilation d reaches (k−1)·d/2 samples at its rate; a transposed conv of stride s, k/s
        input frames; the iSTFT decoder adds the frames its windows span."""
        reach = float(self.decoder.window_reach) if isinstance(self.decoder, ISTFTDecoder) else 0.0  # frames
        rate = 1  # output samples per latent frame so far
        for mod in self.decoder.modules():
            if isinstance(mod, nn.ConvTranspose1d):
                reach += math.ceil(mod.kernel_size[0] / mod.stride[0]) / rate
                rate *= mod.stride[0]
            elif isinstance(mod, nn.Conv1d):
                reach += (mod.kernel_size[0] - 1) * mod.dilation[0] / 2 / rate
        return math.ceil(reach)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- raw tensor API (training) ------------------------------------------------------------------
    def posterior(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio: (B, T) with T a multiple of hop -> mean, logvar: (B, C, T / hop)."""
        if audio.shape[-1] % self.hop:
            raise ValueError(f"audio length {audio.shape[-1]} is not a multiple of hop {self.hop}")
        h = self.encoder(audio[:, None])
        mean, logvar = h.chunk(2, dim=1)
        m = self.config.model
        return mean, logvar.clamp(m.logvar_min, m.logvar_max)

    def decode_tensor(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, C, F) -> (B, F × hop)."""
        y = self.decoder(z)[:, 0]
        n = z.shape[-1] * self.hop
        return y[..., :n] if y.shape[-1] >= n else F.pad(y, (0, n - y.shape[-1]))

    def forward(self, audio: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """Training pass: audio (B, T) -> reconstruction (B, T), mean/logvar (B, C, F), KL (scalar, per frame·channel)."""
        mean, logvar = self.posterior(audio)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if sample else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return {"recon": self.decode_tensor(z), "mean": mean, "logvar": logvar, "kl": kl}

    # ---- typed API (inference) ------------------------------------------------------------------------
    def _check_wav(self, wav: Waveform) -> Waveform:
        if wav.sample_rate != self.sample_rate:
            wav = wav.resample(self.sample_rate)
        return wav

    @torch.inference_mode()
    def encode(self, wav: Waveform, sample: bool = False) -> Latents:
        """Waveform (any rate, resampled) -> Latents (B, C, ceil(T / hop)). Posterior mean unless ``sample``.

        Items are grouped by padded length so every item is encoded exactly as it would be alone (dac's convs
        would otherwise let padding bleed into the last frames).
        """
        wav = self._check_wav(wav)
        if (wav.lengths == 0).any():
            raise ValueError("cannot encode empty audio")
        frames = (wav.lengths + self.hop - 1) // self.hop
        out: list[torch.Tensor | None] = [None] * len(wav)
        for n, idx in _groups(frames.tolist()).items():
            x = torch.zeros(len(idx), n * self.hop, device=self.device)
            for k, i in enumerate(idx):
                x[k, : int(wav.lengths[i])] = wav.audio[i, : int(wav.lengths[i])].to(self.device)
            mean, logvar = self.posterior(x)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if sample else mean
            for k, i in enumerate(idx):
                out[i] = z[k]
        return Latents.from_list(out, frame_rate=self.frame_rate)  # type: ignore[arg-type]

    @torch.inference_mode()
    def decode(self, latents: Latents) -> Waveform:
        """Latents (B, C, F) -> Waveform (B, F × hop) at ``sample_rate``; lengths = latent lengths × hop."""
        c = self.config.model
        if latents.channels != c.latent_dim:
            raise ValueError(f"latents have {latents.channels} channels, this VAE expects {c.latent_dim}")
        if abs(latents.frame_rate - self.frame_rate) > 1e-6:
            raise ValueError(f"latents are at {latents.frame_rate} Hz, this VAE decodes {self.frame_rate} Hz")
        if (latents.lengths == 0).any():
            raise ValueError("cannot decode an empty latent sequence")
        return Waveform.from_list(self._decode_padded(latents), self.sample_rate)

    def _decode_padded(self, latents: Latents) -> list[torch.Tensor]:
        """Each item's audio as if decoded alone, in two decoder calls whatever the lengths (plus one per
        distinct length under 2 × context). The padded batch gives every item's samples up to ``context``
        frames before its end exactly (their right context is real); the last ``context`` frames of a shorter
        item come from a second call over windows of ``2 × context`` frames that end where the item ends,
        so padding never reaches them."""
        lengths = latents.lengths.tolist()
        longest, ctx, hop = max(lengths), self.decoder_context, self.hop
        y = self.decode_tensor(latents.data[:, :, :longest].to(self.device))  # (B, longest × hop)
        out = [y[i, : n * hop] for i, n in enumerate(lengths)]
        short = [i for i, n in enumerate(lengths) if n < longest]
        for w, idx in _groups([min(lengths[i], 2 * ctx) for i in short]).items():
            items = [short[k] for k in idx]
            tails = self.decode_tensor(
                torch.stack([latents.data[i, :, lengths[i] - w : lengths[i]] for i in items]).to(self.device)
            )
            for tail, i in zip(tails, items):
                keep = ctx if w == 2 * ctx else w  # a whole short item comes from its own window
                out[i] = torch.cat([y[i, : (lengths[i] - keep) * hop], tail[(w - keep) * hop :]])
        return out

    def training_loss(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Generator pass for the trainer (routed through DDP): see :meth:`forward`."""
        return self(audio, sample=True)


def _groups(lengths: list[int]) -> dict[int, list[int]]:
    g: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        g[n].append(i)
    return g
