"""Learning-rate schedules of the two-layer CNN trainer: eta(t) per step (docs/science.md §3.5).

The schedule runs over the run's planned steps T = epochs * n / B; step t = 0 .. T - 1 moves W_t to W_{t+1} with

    constant                eta(t) = eta
    cosine                  eta(t) = eta (1 + cos(pi t / T)) / 2                          (CosineAnnealingLR, T_max = T)
    step                    eta(t) = eta gamma^floor(t / S),  S = max(1, round(lr_step_every T))        (StepLR)
    linear_warmup_cosine    eta(t) = eta (t + 1) / W for t < W,  W = round(lr_warmup T) warm-up steps,
                            then eta (1 + cos(pi (t - W) / (T - W))) / 2

(gamma = ``lr_step_gamma``). One clock for the whole run: the SAM -> SGD switch (``sam_steps``) does not restart it,
and a run that stops early (``loss_eps``) simply ends at the eta(t) it had reached; the planned T, not the steps
taken, sets the shape. The SAM radius tau is not scheduled.
"""
from __future__ import annotations

import math

import numpy as np

from theory_sim.config import SimConfig


def warmup_steps(cfg: SimConfig) -> int:
    """W, the warm-up steps of linear_warmup_cosine (at most T - 1, so the cosine part has a step)."""
    return min(int(round(cfg.lr_warmup * cfg.total_steps)), cfg.total_steps - 1)


def step_every(cfg: SimConfig) -> int:
    """S, the steps between two decays of the step schedule."""
    return max(1, int(round(cfg.lr_step_every * cfg.total_steps)))


def lr_factors(cfg: SimConfig) -> np.ndarray:
    """eta(t) / eta for t = 0 .. T - 1 (float64)."""
    T = cfg.total_steps
    t = np.arange(T, dtype=np.float64)
    if cfg.lr_schedule == "constant":
        return np.ones(T)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + np.cos(math.pi * t / T))
    if cfg.lr_schedule == "step":
        return cfg.lr_step_gamma ** np.floor(t / step_every(cfg))
    W = warmup_steps(cfg)          # linear_warmup_cosine
    return np.where(t < W, (t + 1) / max(W, 1), 0.5 * (1.0 + np.cos(math.pi * (t - W) / (T - W))))
