"""ODE solving: fixed-step euler / midpoint / rk4 on a (cosine-warped) time grid, or adaptive dopri5 with
torchdiffeq."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torchdiffeq import odeint

from .config import FlowInferConfig

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(steps: int, schedule: str, device: torch.device | None = None) -> torch.Tensor:
    """(steps + 1,) times from 0 to 1; cosine warp t' = 1 − cos(tπ/2) puts more steps near the noise end."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(0, 1, steps + 1, device=device)
    return 1 - torch.cos(t * 0.5 * math.pi) if schedule == "cosine" else t


def solve(velocity: Velocity, x0: torch.Tensor, cfg: FlowInferConfig) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t=0 (noise x0) to t=1 -> x1."""
    if cfg.solver == "dopri5":

        def f(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return velocity(x, t.reshape(1).to(x.dtype))

        grid = torch.tensor([0.0, 1.0], device=x0.device)
        return odeint(f, x0, grid, method="dopri5", rtol=cfg.rtol, atol=cfg.atol)[-1]  # type: ignore[no-any-return]
    if cfg.solver not in _STEPS:
        raise ValueError(f"unknown solver {cfg.solver!r}; choose euler, midpoint, rk4 or dopri5")
    return fixed_steps(velocity, x0, cfg.solver, cfg.steps, cfg.schedule)


def fixed_steps(velocity: Velocity, x0: torch.Tensor, solver: str, steps: int, schedule: str) -> torch.Tensor:
    """A fixed-step solve with no host sync, so a GPU's launch queue never drains and the whole solve can
    be captured as a CUDA graph: the step sizes are Python floats and the times the velocity sees are
    views of a grid built once per device (torchdiffeq's fixed-grid loop compares times on the device at
    every step). The same arithmetic as torchdiffeq's euler, midpoint and rk4 (its 3/8 rule)."""
    grid = time_grid(steps, schedule)  # (steps + 1,) on the CPU: the step sizes
    times = _device_grid(steps, schedule, x0.device, x0.dtype)  # the same, where the velocity runs
    step = _STEPS[solver]
    x = x0
    for i in range(steps):
        dt = float(grid[i + 1] - grid[i])
        x = x + step(velocity, x, times, i, dt)
    return x


@functools.lru_cache(maxsize=32)
def _device_grid(steps: int, schedule: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(steps + 1, 4): each step's start t and the inner times t + dt/3, t + 2dt/3 (rk4) and t + dt/2
    (midpoint), built once per device: a CUDA graph capture must not copy from the host. Made outside
    inference mode, so a grid first built while generating also serves training."""
    with torch.inference_mode(False):
        t = time_grid(steps, schedule)
        dt = torch.diff(t, append=t[-1:])
        inner = [t + dt * (1 / 3), t + dt * (2 / 3), t + 0.5 * dt]
        return torch.stack([t, *inner], 1).to(device, dtype)


def _euler(v: Velocity, x: torch.Tensor, times: torch.Tensor, i: int, dt: float) -> torch.Tensor:
    return dt * v(x, times[i, 0:1])


def _midpoint(v: Velocity, x: torch.Tensor, times: torch.Tensor, i: int, dt: float) -> torch.Tensor:
    half = 0.5 * dt
    return dt * v(x + v(x, times[i, 0:1]) * half, times[i, 3:4])


def _rk4(v: Velocity, x: torch.Tensor, times: torch.Tensor, i: int, dt: float) -> torch.Tensor:
    k1 = v(x, times[i, 0:1])
    k2 = v(x + dt * k1 * (1 / 3), times[i, 1:2])
    k3 = v(x + dt * (k2 - k1 * (1 / 3)), times[i, 2:3])
    k4 = v(x + dt * (k1 - k2 + k3), times[i + 1, 0:1])
    return (k1 + 3 * (k2 + k3) + k4) * dt * 0.125


_STEPS: dict[str, Callable[[Velocity, torch.Tensor, torch.Tensor, int, float], torch.Tensor]] = {
    "euler": _euler,
    "midpoint": _midpoint,
    "rk4": _rk4,
}
