"""Sparse-coding data: one signal patch and P-1 noise patches, with label noise [C23 Def. 2.1, K23].

For each sample: true label yhat ~ Rademacher; observed label y = yhat with prob. 1-p, else -yhat (train AND test
labels are flipped, so the Bayes error is p); one patch, at a uniformly chosen position, is yhat * mu with
mu = ||mu|| e_1; the other P-1 patches are noise xi ~ N(0, sigma_p^2 (I - mu mu^T/||mu||^2)) — the same vector in
every noise patch (``noise_patches="shared"``, the default behind the P^4 of the threshold) or independent vectors
(``"independent"``). The [K23] script's variant does not project the noise off mu (``project_noise=False``).

Storage is compact because the networks only ever need <w, mu> and <w, xi>: ``xi`` has shape (R, n, K, d) with
K = 1 (shared; the model counts it P-1 times) or K = P-1 (independent). ``patches()`` expands to the full
(R, n, P, d) input for the autograd oracle and the nn.Module reference.

Every run draws from its own generator, seeded from (seed, stream), so a run's data does not depend on which other
runs share its ensemble.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STREAM_TRAIN, STREAM_TEST, STREAM_INIT, STREAM_BATCHES, STREAM_MC = range(5)


def run_rng(seed: int, stream: int) -> np.random.Generator:
    """Independent, reproducible generator for one run and one purpose (train data, test data, init, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


@dataclass
class Batch:
    """R runs' data sets of n samples each (compact form)."""

    mu: torch.Tensor          # (R, d) signal vector of each run
    yhat: torch.Tensor        # (R, n) true labels, +-1
    y: torch.Tensor           # (R, n) observed labels, +-1
    pos: torch.Tensor         # (R, n) index of the signal patch, in [0, P)
    xi: torch.Tensor          # (R, n, K, d) noise vectors
    P: int
    shared: bool              # True: one xi fills all P-1 noise patches
    basis: torch.Tensor | None = None  # (R, 1 + n K, d) = [mu, xi_11, ..., xi_nK]; built on demand

    def __post_init__(self) -> None:
        if self.basis is None:
            # mu and the noise vectors side by side: the network's forward and backward are then one matmul each
            R, n, K, d = self.xi.shape
            self.basis = torch.cat([self.mu[:, None], self.xi.reshape(R, n * K, d)], 1)

    @property
    def R(self) -> int:
        return self.mu.shape[0]

    @property
    def n(self) -> int:
        return self.y.shape[1]

    @property
    def noise_multiplicity(self) -> int:
        """How many patches each stored noise vector fills."""
        return self.P - 1 if self.shared else 1

    @property
    def clean(self) -> torch.Tensor:
        """(R, n) bool: label not flipped (the set S+ of SPEC 4)."""
        return self.y == self.yhat

    def select(self, idx: torch.Tensor) -> "Batch":
        """Per-run sample subsets: idx has shape (R, B). One gather copies mu and the chosen noise vectors."""
        R, _, K, d = self.xi.shape
        B = idx.shape[1]
        rows = torch.arange(self.R, device=idx.device)[:, None]
        noise_rows = 1 + (idx[..., None] * K + torch.arange(K, device=idx.device)).reshape(R, B * K)
        basis = self.basis[rows, torch.cat([torch.zeros_like(idx[:, :1]), noise_rows], 1)]
        return Batch(self.mu, self.yhat[rows, idx], self.y[rows, idx], self.pos[rows, idx],
                     basis[:, 1:].reshape(R, B, K, d), self.P, self.shared, basis)

    def patches(self) -> torch.Tensor:
        """Full input x of shape (R, n, P, d): patch pos is yhat*mu, the others are the noise vectors in order."""
        R, n, K, d = self.xi.shape
        out = torch.empty(R, n, self.P, d, dtype=self.xi.dtype, device=self.xi.device)
        signal = self.yhat[..., None] * self.mu[:, None, :]                      # (R, n, d)
        for i_patch in range(self.P):
            is_sig = (self.pos == i_patch)[..., None]
            # the k-th noise patch is the k-th non-signal position
            k = i_patch - (self.pos < i_patch).long()  # index among noise patches
            noise = self.xi[:, :, 0] if self.shared else torch.gather(
                self.xi, 2, k.clamp(0, K - 1)[..., None, None].expand(R, n, 1, d))[:, :, 0]
            out[:, :, i_patch] = torch.where(is_sig, signal, noise)
        return out


def generate(seeds, mu_norms, sigma_ps, flip_ps, *, d: int, n: int, P: int, noise_patches: str = "shared",
             project_noise: bool = True, stream: int = STREAM_TRAIN, dtype=torch.float64,
             device="cpu") -> Batch:
    """Draw one data set per run. ``seeds``, ``mu_norms``, ``sigma_ps`` and ``flip_ps`` have one entry per run."""
    R = len(seeds)
    K = 1 if noise_patches == "shared" else P - 1
    yhat = np.empty((R, n))
    y = np.empty((R, n))
    pos = np.empty((R, n), dtype=np.int64)
    xi = np.empty((R, n, K, d))
    for r, seed in enumerate(seeds):
        rng = run_rng(seed, stream)
        yhat[r] = rng.choice([-1.0, 1.0], size=n)
        flips = rng.random(n) < flip_ps[r]
        y[r] = np.where(flips, -yhat[r], yhat[r])
        pos[r] = rng.integers(0, P, size=n)
        xi[r] = rng.standard_normal((n, K, d)) * sigma_ps[r]
    if project_noise:
        xi[..., 0] = 0.0  # mu = ||mu|| e_1: projecting off mu zeroes the first coordinate (also when ||mu|| = 0)
    mu = np.zeros((R, d))
    mu[:, 0] = np.asarray(mu_norms, dtype=float)
    as_t = lambda a, dt=dtype: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return Batch(as_t(mu), as_t(yhat), as_t(y), as_t(pos, torch.long), as_t(xi), P, noise_patches == "shared")


def generate_for(configs, stream: int = STREAM_TRAIN, n: int | None = None, dtype=None, device="cpu") -> Batch:
    """Data for an ensemble of SimConfigs (which agree on the structural fields)."""
    c0 = configs[0]
    return generate([c.seed for c in configs], [c.mu_norm for c in configs], [c.sigma_p for c in configs],
                    [c.flip_p for c in configs], d=c0.d, n=c0.n if n is None else n, P=c0.P,
                    noise_patches=c0.noise_patches, project_noise=c0.project_noise, stream=stream,
                    dtype=dtype or getattr(torch, c0.dtype), device=device)
