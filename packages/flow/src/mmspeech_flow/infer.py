"""ODE solving with torchdiffeq: fixed-step euler / midpoint / rk4 on a (cosine-warped) time grid, or
adaptive dopri5."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchdiffeq import odeint

from .config import FlowInferConfig


def time_grid(steps: int, schedule: str, device: torch.device | None = None) -> torch.Tensor:
    """(steps + 1,) times from 0 to 1; cosine warp t' = 1 − cos(tπ/2) puts more steps near the noise end."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(0, 1, steps + 1, device=device)
    return 1 - torch.cos(t * 0.5 * math.pi) if schedule == "cosine" else t


def solve(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, cfg: FlowInferConfig
) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t=0 (noise x0) to t=1 -> x1."""

    def f(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return velocity(x, t.reshape(1).to(x.dtype))

    if cfg.solver == "dopri5":
        grid = torch.tensor([0.0, 1.0], device=x0.device)
        xs = odeint(f, x0, grid, method="dopri5", rtol=cfg.rtol, atol=cfg.atol)
    elif cfg.solver in ("euler", "midpoint", "rk4"):
        grid = time_grid(cfg.steps, cfg.schedule, x0.device)
        xs = odeint(f, x0, grid, method=cfg.solver)
    else:
        raise ValueError(f"unknown solver {cfg.solver!r}; choose euler, midpoint, rk4 or dopri5")
    return xs[-1]
