"""Small neural building blocks shared by stages: rotary self-attention blocks (optionally AdaLN-modulated),
chunk-aware attention masks, a masked learnable speaker encoder, and a log-mel front end."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from einops import rearrange
from torch import nn

from .types import lengths_to_mask

T = TypeVar("T")


def fp32_attention(
    attend: Callable[..., T], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: object, **kw: object
) -> T:
    """``attend(q, k, v, *args, **kw)``, with q, k, v in fp32 and autocast off under CPU autocast; as is
    elsewhere. Under CPU bf16 autocast SDPA would run its bf16 kernel, whose backward is 1.4-4x slower than
    the fp32 one at these models' head sizes (16-32; measured on a 1-core AMX CPU, fwd+bwd of 36 x 4 heads x
    260 frames: 106 ms bf16, 70 ms fp32), while the bf16 matrix products around it are what autocast gains."""
    if q.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return attend(q, k, v, *args, **kw)
    with torch.autocast("cpu", enabled=False):
        return attend(q.float(), k.float(), v.float(), *args, **kw)


def chunk_attention_mask(
    valid: torch.Tensor,
    chunk_size: int | None,
    past: int = 0,
    left_chunks: int = 0,
    kept: int | None = None,
) -> torch.Tensor:
    """(B, T) valid mask -> (B, T, kept + T) bool attention mask (True = may attend).

    ``chunk_size=None``: full attention over valid frames. Otherwise frame i attends to frames j with
    ``j // chunk_size <= i // chunk_size`` (its own chunk and all earlier ones): outputs of a chunk never
    depend on later chunks, which is what streaming needs; with ``left_chunks`` > 0 also only
    ``j // chunk_size >= i // chunk_size - left_chunks`` (its own chunk and that many before it), so a
    streamed chunk costs the same wherever it is. Padded query rows attend to themselves so softmax never
    sees an all-masked row. ``past``: frames before these, already computed (streaming; all valid), of
    which the last ``kept`` (default all) are cached and come first along the key axis; positions count
    from the start of the past.
    """
    b, t = valid.shape
    kept = past if kept is None else kept
    keys_valid = torch.cat([valid.new_ones(b, kept), valid], dim=1) if kept else valid
    allow = keys_valid[:, None, :].expand(b, t, kept + t)
    if chunk_size is not None:
        q = (past + torch.arange(t, device=valid.device)) // chunk_size
        k = (past - kept + torch.arange(kept + t, device=valid.device)) // chunk_size
        order = k[None, :] <= q[:, None]
        if left_chunks:
            order = order & (k[None, :] >= q[:, None] - left_chunks)
        allow = allow & order[None]
    itself = torch.eye(t, dtype=torch.bool, device=valid.device)  # each query frame's own key
    if kept:
        itself = torch.cat([itself.new_zeros(t, kept), itself], dim=1)
    return allow | (itself[None] & ~valid[:, :, None])


def rotary(x: torch.Tensor, base: float = 10000.0, offset: int = 0) -> torch.Tensor:
    """Apply rotary position embedding. x: (B, H, T, Dh), Dh even; positions start at ``offset``."""
    cos, sin = _rotary_table(x.shape[-2], x.shape[-1], offset, base, x.device, x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


@functools.lru_cache(maxsize=64)
def _rotary_table(
    t: int, dh: int, offset: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, Dh/2) cos and sin, built once per shape: every layer and every ODE step of a call reuses them.
    Made outside inference mode, so a table first built while generating also serves training."""
    with torch.inference_mode(False):
        inv = 1.0 / (base ** (torch.arange(0, dh, 2, device=device, dtype=torch.float32) / dh))
        pos = torch.arange(offset, offset + t, device=device, dtype=torch.float32)
        ang = pos[:, None] * inv[None]
        return ang.cos().to(dtype), ang.sin().to(dtype)


class KVCache:
    """Keys and values of the frames one attention layer has already seen (streaming). Stored in buffers
    that double when full, so appending a chunk copies only the chunk (amortised), not the whole past.

    ``window``: keep only that many of the latest frames for the next call (a model whose chunks attend to
    a bounded number of earlier chunks needs no more); older ones are dropped as new ones come, so memory
    and the cost of a call stay bounded however long the stream. ``length`` counts every frame seen (the
    position of the next one); :attr:`kept` says how many the next call attends to."""

    def __init__(self, window: int | None = None) -> None:
        self._k: torch.Tensor | None = None  # (B, H, capacity, Dh): the last _stored frames seen
        self._v: torch.Tensor | None = None
        self.window = window
        self.length = 0
        self._stored = 0

    @property
    def kept(self) -> int:
        """Cached frames the next :meth:`extend` returns before its own."""
        return self._stored if self.window is None else min(self._stored, self.window)

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's (B, H, T, Dh) keys / values; returns the kept past and them, past first."""
        if self._k is not None and self._v is not None and self.kept < self._stored:  # drop the oldest
            drop, self._stored = self._stored - self.kept, self.kept
            self._k[..., : self._stored, :] = self._k[..., drop : drop + self._stored, :].clone()
            self._v[..., : self._stored, :] = self._v[..., drop : drop + self._stored, :].clone()
        end = self._stored + k.shape[-2]
        if self._k is None or self._v is None or end > self._k.shape[-2]:
            cap = max(end, 2 * (self._k.shape[-2] if self._k is not None else 0), 64)
            grown_k = k.new_empty(*k.shape[:-2], cap, k.shape[-1])
            grown_v = v.new_empty(*v.shape[:-2], cap, v.shape[-1])
            if self._k is not None and self._v is not None:
                grown_k[..., : self._stored, :] = self._k[..., : self._stored, :]
                grown_v[..., : self._stored, :] = self._v[..., : self._stored, :]
            self._k, self._v = grown_k, grown_v
        self._k[..., self._stored : end, :] = k
        self._v[..., self._stored : end, :] = v
        self._stored, self.length = end, self.length + k.shape[-2]
        return self._k[..., :end, :], self._v[..., :end, :]

    def clone(self) -> KVCache:
        """A copy at the same position, of the frames the next call attends to (its buffers are new, so
        the original may be overwritten: a CUDA graph's replay does)."""
        out = KVCache(self.window)
        out.length, out._stored = self.length, self.kept
        if self._k is not None and self._v is not None:
            out._k = self._k[..., self._stored - self.kept : self._stored, :].clone()
            out._v = self._v[..., self._stored - self.kept : self._stored, :].clone()
        return out

    def select(self, rows: torch.Tensor) -> KVCache:
        """A cache of these batch rows only (copied), at the same position: one stream of a batch that
        goes on alone, or the batch without it."""
        out = KVCache(self.window)
        out.length, out._stored = self.length, self._stored
        if self._k is not None and self._v is not None:
            rows = rows.to(self._k.device)
            out._k = self._k[rows, ..., : self._stored, :].clone()
            out._v = self._v[rows, ..., : self._stored, :].clone()
        return out


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of even size")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x: (B, T, D), attn_mask: (B, T, past + T) bool, or None when every frame may attend to every
        other (SDPA's fast kernels then apply) -> (B, T, D). With a ``cache`` (streaming), x
        continues the frames cached there: it attends to their keys and values too, and its own are
        appended."""
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        past = cache.length if cache is not None else 0
        q, k = rotary(q, offset=past), rotary(k, offset=past)
        if cache is not None:
            k, v = cache.extend(k, v)
        y = fp32_attention(
            F.scaled_dot_product_attention,
            q,
            k,
            v,
            attn_mask=attn_mask[:, None] if attn_mask is not None else None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(rearrange(y, "b h t d -> b t (h d)"))


class TransformerBlock(nn.Module):
    """Pre-norm block. With ``cond_dim`` it is a DiT block: LayerNorm scale/shift/gate from a global
    conditioning vector (AdaLN-zero, so each block starts as identity)."""

    def __init__(
        self, dim: int, heads: int, ff_mult: int = 4, dropout: float = 0.0, cond_dim: int | None = None
    ):
        super().__init__()
        affine = cond_dim is None
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=affine)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * dim, dim)
        )
        self.ada: nn.Module | None = None
        if cond_dim is not None:
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
            nn.init.zeros_(self.ada[1].weight)  # type: ignore[index, union-attr, arg-type]
            nn.init.zeros_(self.ada[1].bias)  # type: ignore[index, union-attr, arg-type]

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cond: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D), attn_mask: (B, T, past + T), cond: (B, cond_dim) -> (B, T, D); ``cache``: see
        :meth:`Attention.forward`."""
        if self.ada is None:
            x = x + self.attn(self.norm1(x), attn_mask, cache)
            return x + self.ff(self.norm2(x))
        if cond is None:
            raise ValueError("this block is conditioned: pass cond")
        s1, b1, g1, s2, b2, g2 = self.ada(cond)[:, None].chunk(6, dim=-1)
        x = x + g1 * self.attn(self.norm1(x) * (1 + s1) + b1, attn_mask, cache)
        return x + g2 * self.ff(self.norm2(x) * (1 + s2) + b2)


class SpeakerEncoder(nn.Module):
    """Learnable speaker encoder (MiniMax-Speech): variable-length, untranscribed reference features
    -> one fixed vector. Masked self-attention then masked attentive-statistics pooling, so padding never
    leaks into the vector (the seed implementation ignored its mask and pooled the first frame)."""

    def __init__(
        self, in_dim: int, dim: int = 256, layers: int = 4, heads: int = 4, out_dim: int = 192
    ) -> None:
        super().__init__()
        self.inp = nn.Conv1d(in_dim, dim, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.att = nn.Linear(dim, 1)
        self.proj = nn.Linear(2 * dim, out_dim)
        self.out_dim = out_dim

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """feats: (B, F, T), lengths: (B,) -> (B, out_dim), L2-normalised."""
        if (lengths <= 0).any():
            raise ValueError("speaker reference must have at least one frame")
        valid = lengths_to_mask(lengths, feats.shape[-1])  # (B, T)
        x = self.inp(feats * valid[:, None]).transpose(1, 2)  # (B, T, D)
        mask = chunk_attention_mask(valid, None)
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.norm(x)
        w = self.att(x).squeeze(-1).masked_fill(~valid, float("-inf")).softmax(-1)[..., None]  # (B, T, 1)
        mean = (w * x).sum(1)
        std = ((w * (x - mean[:, None]) ** 2).sum(1)).clamp_min(1e-6).sqrt()
        return F.normalize(self.proj(torch.cat([mean, std], -1)), dim=-1)


class LogMel(nn.Module):
    """Log-mel front end for speaker references: (B, T) audio -> (B, n_mels, frames)."""

    def __init__(self, sample_rate: int = 24000, n_fft: int = 1024, hop: int = 240, n_mels: int = 80) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        fb = AF.melscale_fbanks(
            n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
        )
        self.register_buffer("fb", fb, persistent=False)  # (n_freq, n_mels)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """(B,) sample counts -> (B,) frame counts (centre-padded STFT)."""
        return num_samples // self.hop + 1

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # zero (not reflect) padding: a padded batch item then sees exactly what it sees alone
        spec = torch.stft(
            audio.float(),
            self.n_fft,
            self.hop,
            window=self.window,  # type: ignore[arg-type]
            pad_mode="constant",
            return_complex=True,
        ).abs()
        mel = torch.einsum("bft,fm->bmt", spec, self.fb)
        return torch.log(mel.clamp_min(1e-5))


def sinusoidal(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) in [0, 1] -> (B, dim) time embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = scale * t.float()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)
