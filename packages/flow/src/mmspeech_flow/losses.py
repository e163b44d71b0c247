"""Flow-matching losses: OT-CFM, immiscible noise assignment (batch / KNN), contrastive ΔFM, CFG dropout,
prompt prefixes masked from the loss."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from mmspeech_core import lengths_to_mask
from scipy.optimize import linear_sum_assignment

from .config import FlowLossConfig

if TYPE_CHECKING:  # the model module imports this one
    from .model import Estimator


def masked_sq_dist(x: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared distances over each data item's own valid frames.

    x: (B, C, T) data, noise: (K, C, T), mask: (B, T) -> (B, K) with d[i, j] = Σ_t m_i[t] ‖x_i[:, t] − ε_j[:, t]‖².
    """
    m = mask.to(x.dtype)
    xm = x * m[:, None]
    x2 = (xm**2).sum((1, 2))  # (B,)
    cross = torch.einsum("bct,kct->bk", xm, noise)
    e2 = m @ (noise**2).sum(1).T  # (B, K): Σ_t m_i[t] ‖ε_j[:, t]‖²
    return x2[:, None] - 2 * cross + e2


def immiscible_batch(x: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Re-pair the batch's noises with its data by minimum-cost assignment (Hungarian on the distances)."""
    cost = masked_sq_dist(x.float(), noise.float(), mask).clamp_min(0).sqrt()
    _, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return noise[torch.as_tensor(cols, device=noise.device)]


def immiscible_knn(
    x: torch.Tensor, mask: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each item draw ``k`` noises and keep the nearest (over its valid frames). Returns (B, C, T)."""
    b, c, t = x.shape
    cand = torch.randn(b, k, c, t, device=x.device, dtype=x.dtype, generator=generator)
    m = mask.to(x.dtype)[:, None, None]
    d = (((x[:, None] - cand) ** 2) * m).sum((2, 3))  # (B, K)
    return cand[torch.arange(b, device=x.device), d.argmin(1)]


def sample_t(b: int, schedule: str, device: torch.device) -> torch.Tensor:
    t = torch.rand(b, device=device)
    return 1 - torch.cos(t * 0.5 * math.pi) if schedule == "cosine" else t


def prompt_lengths(lengths: torch.Tensor, prob: float, max_ratio: float) -> torch.Tensor:
    """(B,) valid lengths -> (B,) prompt prefix lengths (0 for items drawn without a prompt)."""
    use = torch.rand(lengths.shape, device=lengths.device) < prob
    frac = torch.rand(lengths.shape, device=lengths.device) * max_ratio
    return (lengths.float() * frac).long() * use


def flow_matching_loss(
    estimator: Estimator,
    x1: torch.Tensor,
    valid: torch.Tensor,
    mu: torch.Tensor,
    spk: torch.Tensor,
    cfg: FlowLossConfig,
    chunked: bool = False,
) -> dict[str, torch.Tensor]:
    """x1, mu: (B, C, T) target latents and token features; valid: (B, T); spk: (B, S).

    Returns ``loss`` (what is optimised), ``fm`` (the plain flow-matching MSE) and, with ΔFM on, ``contrastive``.
    """
    b, c, t = x1.shape
    lengths = valid.sum(1)
    plen = prompt_lengths(lengths, cfg.prompt_prob, cfg.prompt_max_ratio)
    prompt = lengths_to_mask(plen, t)
    loss_mask = valid & ~prompt  # the prompt prefix is given, not predicted
    cond = x1 * prompt[:, None].to(x1.dtype)

    if cfg.immiscible == "knn":
        noise = immiscible_knn(x1, loss_mask, cfg.knn_k)
    else:
        noise = torch.randn_like(x1)
        if cfg.immiscible == "batch" and b > 1:
            noise = immiscible_batch(x1, noise, loss_mask)

    tt = sample_t(b, cfg.t_schedule, x1.device)
    tb = tt[:, None, None]
    xt = (1 - (1 - cfg.sigma_min) * tb) * noise + tb * x1
    target = x1 - (1 - cfg.sigma_min) * noise

    if cfg.cfg_dropout > 0:  # drop every condition together so the model learns the unconditional field
        keep = (torch.rand(b, device=x1.device) >= cfg.cfg_dropout).to(x1.dtype)
        mu, spk, cond = mu * keep[:, None, None], spk * keep[:, None], cond * keep[:, None, None]

    v = estimator(xt, valid, mu, tt, spk, cond, chunked, mask=estimator.attention_mask(valid, chunked))
    m = loss_mask[:, None].to(v.dtype)
    denom = (m.sum() * c).clamp_min(1.0)
    fm = (((v - target) ** 2) * m).sum() / denom
    out = {"fm": fm}
    loss = fm
    if cfg.contrastive_lambda > 0 and b > 1:
        # ΔFM: push the prediction away from another item's flow, on frames valid for both items
        j = torch.roll(torch.arange(b, device=x1.device), 1)
        neg_target = x1[j] - (1 - cfg.sigma_min) * noise[j]
        mn = (loss_mask & valid[j])[:, None].to(v.dtype)
        neg = (((v - neg_target) ** 2) * mn).sum() / (mn.sum() * c).clamp_min(1.0)
        out["contrastive"] = neg
        loss = fm - cfg.contrastive_lambda * neg
    out["loss"] = loss
    return out
