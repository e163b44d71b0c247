"""Chunk-aware conditional flow matching: speech tokens (+ speaker, + prompt latents) -> VAE latents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmspeech_core import Latents, PretrainedMixin, SpeakerEmbedding, SpeechTokens, lengths_to_mask
from mmspeech_core.nn import SpeakerEncoder, TransformerBlock, chunk_attention_mask, sinusoidal
from mmspeech_core.training import item_seeds
from torch import nn

from . import __version__
from .config import FlowConfig, FlowInferConfig, FlowModelConfig


class TokenEncoder(nn.Module):
    """tokens (B, N) -> mu (B, C, N·ratio). Lookahead conv on tokens, transformer blocks at token rate,
    nearest upsampling + causal conv, transformer blocks at latent rate, projection to latent_dim."""

    def __init__(self, c: FlowModelConfig) -> None:
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.lookahead = nn.Conv1d(c.dim, c.dim, kernel_size=c.lookahead + 1) if c.lookahead > 0 else None
        self.pre = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, c.ff_mult, c.dropout) for _ in range(c.encoder_layers)]
        )
        self.up_conv = nn.Conv1d(c.dim, c.dim, kernel_size=2 * c.ratio + 1)
        self.post = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, c.ff_mult, c.dropout) for _ in range(c.encoder_post_layers)]
        )
        self.norm = nn.LayerNorm(c.dim)
        self.proj = nn.Linear(c.dim, c.latent_dim)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, chunked: bool) -> torch.Tensor:
        c = self.c
        valid = lengths_to_mask(lengths, tokens.shape[1])  # (B, N)
        x = self.embed(tokens.clamp(0, c.vocab_size - 1)) * valid[..., None]  # (B, N, D)
        if self.lookahead is not None:  # right context: token i sees tokens i..i+lookahead
            h = F.pad(x.transpose(1, 2), (0, c.lookahead))
            x = x + F.leaky_relu(self.lookahead(h)).transpose(1, 2) * valid[..., None]
        mask = chunk_attention_mask(valid, c.chunk_size if chunked else None)
        for blk in self.pre:
            x = blk(x, mask)
        x = x * valid[..., None]
        # upsample: repeat each token `ratio` times, then a causal conv (no look into the next chunk)
        x = x.repeat_interleave(c.ratio, dim=1).transpose(1, 2)  # (B, D, T)
        x = x + self.up_conv(F.pad(x, (2 * c.ratio, 0)))
        x = x.transpose(1, 2)
        lat_valid = lengths_to_mask(lengths * c.ratio, x.shape[1])
        mask = chunk_attention_mask(lat_valid, c.chunk_size * c.ratio if chunked else None)
        for blk in self.post:
            x = blk(x, mask)
        mu = self.proj(self.norm(x)) * lat_valid[..., None]
        return mu.transpose(1, 2)  # (B, C, T)


class Estimator(nn.Module):
    """DiT velocity estimator: (x_t, mu, prompt cond) per frame, (t, speaker) globally via AdaLN."""

    def __init__(self, c: FlowModelConfig) -> None:
        super().__init__()
        self.c = c
        self.inp = nn.Linear(3 * c.latent_dim, c.dim)
        self.time = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.spk = nn.Linear(c.spk_dim, c.dim)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(c.dim, c.heads, c.ff_mult, c.dropout, cond_dim=c.dim)
                for _ in range(c.estimator_layers)
            ]
        )
        self.norm = nn.LayerNorm(c.dim, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 2 * c.dim))
        self.out = nn.Linear(c.dim, c.latent_dim)
        nn.init.zeros_(self.final_ada[1].weight)  # type: ignore[index, union-attr, arg-type]
        nn.init.zeros_(self.final_ada[1].bias)  # type: ignore[index, union-attr, arg-type]

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spk: torch.Tensor,
        cond: torch.Tensor,
        chunked: bool,
    ) -> torch.Tensor:
        """x, mu, cond: (B, C, T); valid: (B, T) bool; t: (B,); spk: (B, spk_dim) -> velocity (B, C, T)."""
        h = self.inp(torch.cat([x, mu, cond], dim=1).transpose(1, 2))  # (B, T, D)
        g = self.time(sinusoidal(t, self.c.dim).to(h.dtype)) + self.spk(spk)
        mask = chunk_attention_mask(valid, self.c.chunk_size * self.c.ratio if chunked else None)
        for blk in self.blocks:
            h = blk(h, mask, g)
        scale, shift = self.final_ada(g)[:, None].chunk(2, dim=-1)
        v = self.out(self.norm(h) * (1 + scale) + shift)
        return v.transpose(1, 2) * valid[:, None]


class FlowModel(nn.Module, PretrainedMixin):
    """Stage 2. ``generate(tokens, speaker, prompt...) -> Latents``; ``training_loss(batch)`` for training."""

    checkpoint_kind = "flow"
    config_class = FlowConfig
    package_version = __version__

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        c = config.model
        self.encoder = TokenEncoder(c)
        self.estimator = Estimator(c)
        mean = torch.tensor(c.latent_mean or [0.0] * c.latent_dim)
        std = torch.tensor(c.latent_std or [1.0] * c.latent_dim)
        # from the config, so not saved with the weights
        self.register_buffer("latent_mean", mean[None, :, None], persistent=False)
        self.register_buffer("latent_std", std[None, :, None], persistent=False)
        self.latent_mean: torch.Tensor
        self.latent_std: torch.Tensor
        self.speaker_encoder = SpeakerEncoder(
            c.spk_in_dim, c.dim // 2, c.spk_layers, max(1, c.heads // 2), c.spk_dim
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- latent normalisation (identity unless the config holds statistics) ------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) VAE latents -> the space the flow models."""
        return (x - self.latent_mean) / self.latent_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    # ---- conditioning ---------------------------------------------------------------------------
    def embed_speaker(self, reference: Latents) -> SpeakerEmbedding:
        """Reference utterance latents (B, C, T) of the target speaker -> (B, spk_dim) unit vectors."""
        if reference.channels != self.config.model.spk_in_dim:
            raise ValueError(
                f"reference has {reference.channels} channels, expected {self.config.model.spk_in_dim}"
            )
        ref = reference.to(self.device)
        return SpeakerEmbedding(self.speaker_encoder(self.normalize(ref.data), ref.lengths))

    def _check_tokens(self, tokens: SpeechTokens) -> None:
        c = self.config.model
        if abs(tokens.frame_rate - c.token_rate) > 1e-6:
            raise ValueError(
                f"tokens are at {tokens.frame_rate} Hz, this flow model expects {c.token_rate} Hz"
            )
        valid = tokens.tokens[tokens.mask()]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, {c.vocab_size})")

    # ---- training -------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """batch: ``tokens`` SpeechTokens, ``latents`` Latents (lengths = tokens·ratio), ``reference`` Latents."""
        from .losses import flow_matching_loss

        tokens: SpeechTokens = batch["tokens"]
        latents: Latents = batch["latents"]
        chunked = bool(torch.rand(()) < self.config.loss.chunk_prob)
        mu = self.encoder(tokens.tokens, tokens.lengths, chunked)
        spk = self.speaker_encoder(self.normalize(batch["reference"].data), batch["reference"].lengths)
        x1 = self.normalize(latents.data[..., : mu.shape[-1]])
        if x1.shape[-1] != mu.shape[-1] or not torch.equal(
            latents.lengths, tokens.lengths * self.config.model.ratio
        ):
            raise ValueError("latent lengths must equal token lengths × ratio (use mmspeech_flow.data.align)")
        return flow_matching_loss(self.estimator, x1, latents.mask(), mu, spk, self.config.loss, chunked)

    # ---- inference ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        tokens: SpeechTokens,
        speaker: SpeakerEmbedding,
        prompt_tokens: SpeechTokens | None = None,
        prompt_latents: Latents | None = None,
        infer: FlowInferConfig | None = None,
        seed: int | Sequence[int] | None = None,
        chunked: bool = False,
    ) -> Latents:
        """Tokens (B, N) -> latents (B, C, N·ratio), lengths = token lengths × ratio.

        One-shot: ``prompt_tokens`` and their ``prompt_latents`` (same utterance) prefix the sequence; the
        prompt part is conditioned on and cut from the output. ``seed`` (int: item i uses seed+i, or one per
        item) makes each item's noise independent of its batch-mates, so batched == unbatched.
        """
        from .infer import solve

        infer = infer or self.config.infer
        c = self.config.model
        self._check_tokens(tokens)
        if len(speaker) != len(tokens):
            raise ValueError(f"{len(speaker)} speaker vectors for {len(tokens)} token sequences")
        dev = self.device
        items = [x.to(dev) for x in tokens.unbatch()]
        if any(len(x) == 0 for x in items):
            raise ValueError("every token sequence needs at least one token")
        prompt_frames = [0] * len(items)
        conds: list[torch.Tensor] = [torch.zeros(c.latent_dim, 0, device=dev) for _ in items]
        if (prompt_tokens is None) != (prompt_latents is None):
            raise ValueError(
                "pass prompt_tokens and prompt_latents together (one-shot) or neither (zero-shot)"
            )
        if prompt_tokens is not None and prompt_latents is not None:
            self._check_tokens(prompt_tokens)
            if len(prompt_tokens) != len(tokens) or len(prompt_latents) != len(tokens):
                raise ValueError("prompt batch size must match the token batch size")
            if prompt_latents.channels != c.latent_dim:
                raise ValueError(
                    f"prompt latents have {prompt_latents.channels} channels, expected {c.latent_dim}"
                )
            for i, (pt, pl) in enumerate(zip(prompt_tokens.unbatch(), prompt_latents.unbatch())):
                n = min(len(pt), pl.shape[-1] // c.ratio)  # the two extractors may disagree by a frame
                items[i] = torch.cat([pt[:n].to(dev), items[i]])
                conds[i] = self.normalize(pl[None, :, : n * c.ratio].to(dev))[0]
                prompt_frames[i] = n * c.ratio
        full = SpeechTokens.from_list(items, frame_rate=c.token_rate)
        lengths = full.lengths.to(dev)
        mu = self.encoder(full.tokens.to(dev), lengths, chunked)  # (B, C, T)
        b, _, t = mu.shape
        valid = lengths_to_mask(lengths * c.ratio, t)
        cond = torch.zeros_like(mu)
        for i, cd in enumerate(conds):
            cond[i, :, : cd.shape[-1]] = cd
        seeds = item_seeds(seed, b)
        noise = torch.stack([_noise(t, c.latent_dim, s) for s in seeds]).to(dev, mu.dtype)  # (B, C, T)
        spk = speaker.vectors.to(dev, mu.dtype)

        def velocity(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            w = infer.cfg_rate
            if w == 0:
                return self.estimator(x, valid, mu, tt.expand(b), spk, cond, chunked)
            v = self.estimator(  # one call on (cond, uncond) stacked on the batch axis
                torch.cat([x, x]),
                torch.cat([valid, valid]),
                torch.cat([mu, torch.zeros_like(mu)]),
                tt.expand(2 * b),
                torch.cat([spk, torch.zeros_like(spk)]),
                torch.cat([cond, torch.zeros_like(cond)]),
                chunked,
            )
            vc, vu = v.chunk(2)
            return (1 + w) * vc - w * vu

        x = solve(velocity, noise * valid[:, None], infer)
        x = self.denormalize(x) * valid[:, None]
        outs = [x[i, :, prompt_frames[i] : int(lengths[i]) * c.ratio] for i in range(b)]
        return Latents.from_list(outs, frame_rate=c.latent_rate)


def _noise(frames: int, channels: int, seed: int | None) -> torch.Tensor:
    """(C, T) standard normal. Drawn time-major, so a longer draw with the same seed extends a shorter one
    (streaming re-runs see the same noise on frames they already produced)."""
    g = None
    if seed is not None:
        g = torch.Generator().manual_seed(int(seed))
    return torch.randn(frames, channels, generator=g).T
