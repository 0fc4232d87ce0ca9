"""MAML's sinusoid regression family (Finn et al. 2017): y = A sin(x - phase),
A in [0.1, 5], phase in [0, pi], x uniform in [-5, 5], MSE loss."""

from __future__ import annotations

import math

import torch

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


def sample_tasks(n_tasks: int, k_shot: int, n_query: int, gen: torch.Generator):
    """-> support x [T,K,1], y [T,K,1], query x [T,Q,1], y [T,Q,1], all float32."""
    amp = torch.empty(n_tasks, 1, 1).uniform_(*AMPLITUDE, generator=gen)
    phase = torch.empty(n_tasks, 1, 1).uniform_(*PHASE, generator=gen)
    x = torch.empty(n_tasks, k_shot + n_query, 1).uniform_(*X_RANGE, generator=gen)
    y = amp * torch.sin(x - phase)
    return x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:]
