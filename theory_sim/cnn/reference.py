"""A plain per-run reference: nn.Module + autograd + torch.optim, one run at a time.

It shares no forward or gradient code with the batched trainer: the network is a ``Conv1d(1, 2m, kernel=d,
stride=d)`` over the flattened patches (the layer of the [K23] public script), gradients come from autograd, the
step from ``torch.optim.SGD``, and SAM is written out by hand [F21]. Tests use it as an independent oracle for
``train_ensemble``; ``benchmarks/bench_ensemble.py`` uses it as the naive baseline.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from theory_sim.cnn.data import STREAM_BATCHES, run_rng
from theory_sim.config import ConfigError, SimConfig


class PatchCNN(nn.Module):
    """f(x) = F_{+1} - F_{-1}; channels [:m] are F_{-1} (logit of class y=-1), [m:] are F_{+1}, as in [K23]."""

    def __init__(self, d: int, P: int, m: int, model: str = "c23"):
        super().__init__()
        self.d, self.P, self.m, self.model = d, P, m, model
        self.conv = nn.Conv1d(1, 2 * m, kernel_size=d, stride=d, bias=(model == "kou2023"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (n, P*d) -> f: (n,)
        h = torch.relu(self.conv(x.unsqueeze(1)))          # (n, 2m, P)
        if self.model == "kou2023":
            h = h.mean(2)                                  # mean over patches, sum over filters
            F_neg, F_pos = h[:, :self.m].sum(1), h[:, self.m:].sum(1)
        else:
            h = h.sum(2)                                   # sum over patches, mean over filters
            F_neg, F_pos = h[:, :self.m].mean(1), h[:, self.m:].mean(1)
        return F_pos - F_neg

    def load_filters(self, W: torch.Tensor, b: torch.Tensor | None = None) -> "PatchCNN":
        """Load one run's (2, m, d) filters (index 0: j=+1, index 1: j=-1) and (2, m) biases."""
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([W[1], W[0]]).unsqueeze(1))
            if b is not None:
                self.conv.bias.copy_(torch.cat([b[1], b[0]]))
        return self

    def filters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.conv.weight.detach()[:, 0]
        W = torch.stack([w[self.m:], w[:self.m]])
        b = None if self.conv.bias is None else torch.stack([self.conv.bias.detach()[self.m:],
                                                             self.conv.bias.detach()[:self.m]])
        return W, b


def train_reference(cfg: SimConfig, x: torch.Tensor, y: torch.Tensor, W0: torch.Tensor,
                    b0: torch.Tensor | None = None) -> PatchCNN:
    """Train one run: x (n, P, d) full patches, y (n,) labels, from filters W0 (2, m, d). Same batch order as the
    ensemble trainer (the run's own permutation stream); no early stopping or divergence handling. Implements SGD
    and SAM (norm 2, whole batch), with ``cfg.lr_schedule`` from torch's schedulers (``torch_scheduler``); the
    other SAM-family rules are checked against autograd oracles in tests/test_sam_family_cnn.py."""
    if cfg.optimizer not in ("sgd", "sam") or cfg.rule == "sam_inf" or cfg.chunk_size != cfg.batch_size:
        raise ConfigError(f"train_reference implements sgd and sam (norm 2, m_sharpness 0) only, got "
                          f"optimizer={cfg.optimizer!r} norm={cfg.norm!r} m_sharpness={cfg.m_sharpness}")
    net = PatchCNN(cfg.d, cfg.P, cfg.m, cfg.model).to(dtype=x.dtype, device=x.device).load_filters(W0, b0)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.eta)
    sched = torch_scheduler(cfg, opt)
    x = x.reshape(cfg.n, cfg.P * cfg.d)
    rng = run_rng(cfg.rng_seed, STREAM_BATCHES)
    B, step = cfg.batch_size, 0
    for _ in range(cfg.epochs):
        order = np.arange(cfg.n) if B == cfg.n else rng.permutation(cfg.n)
        for lo in range(0, cfg.n, B):
            idx = torch.as_tensor(order[lo:lo + B], device=x.device)
            xb, yb = x[idx], y[idx]
            loss_fn = lambda: F.softplus(-yb * net(xb)).mean()  # noqa: E731
            opt.zero_grad()
            loss_fn().backward()
            sam = cfg.optimizer == "sam" and (cfg.sam_steps is None or step < cfg.sam_steps)
            if sam and cfg.sam_radius > 0:
                params = [p for p in net.parameters()]
                gnorm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
                eps = [cfg.sam_radius * p.grad / gnorm for p in params]
                with torch.no_grad():
                    for p, e in zip(params, eps):
                        p.add_(e)
                opt.zero_grad()
                loss_fn().backward()
                with torch.no_grad():
                    for p, e in zip(params, eps):
                        p.sub_(e)
            opt.step()
            sched.step()
            step += 1
    return net


def torch_scheduler(cfg: SimConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """``cfg.lr_schedule`` built from torch's own schedulers (an oracle for ``theory_sim.cnn.schedule``), stepped
    once per optimizer step over T = epochs n / B steps."""
    from torch.optim import lr_scheduler as ls

    T = cfg.epochs * (cfg.n // cfg.batch_size)
    if cfg.lr_schedule == "constant":
        return ls.LambdaLR(opt, lambda t: 1.0)
    if cfg.lr_schedule == "cosine":
        return ls.CosineAnnealingLR(opt, T_max=T)
    if cfg.lr_schedule == "step":
        return ls.StepLR(opt, step_size=max(1, round(cfg.lr_step_every * T)), gamma=cfg.lr_step_gamma)
    W = min(round(cfg.lr_warmup * T), T - 1)
    if W == 0:
        return ls.CosineAnnealingLR(opt, T_max=T)
    warm = ls.LinearLR(opt, start_factor=1 / W, end_factor=1.0, total_iters=max(W - 1, 1))
    return ls.SequentialLR(opt, [warm, ls.CosineAnnealingLR(opt, T_max=T - W)], milestones=[W])
