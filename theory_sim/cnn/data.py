"""Sparse-coding data: one signal patch and P-1 noise patches, with label noise [C23 Def. 2.1, K23].

For each sample: true label yhat ~ Rademacher; observed label y = yhat with prob. 1-p, else -yhat (train AND test
labels are flipped, so the Bayes error is p); one patch, at a uniformly chosen position, is yhat * mu with
mu = ||mu|| e_1; the other P-1 patches are noise xi ~ N(0, sigma_p^2 (I - mu mu^T/||mu||^2)) — the same vector in
every noise patch (``noise_patches="shared"``, the default behind the P^4 of the threshold) or independent vectors
(``"independent"``). The [K23] script's variant does not project the noise off mu (``project_noise=False``).

Storage is compact because the networks only ever need <w, mu> and <w, xi>. A run's data set is its ``basis``
[e_1, xi_11, ..., xi_nK] of shape (1 + n K, d), with K = 1 noise vector per sample (shared: the model counts it P-1
times) or K = P-1 (independent), plus its labels and ||mu||. Runs whose data are identical — the same seed, sigma_p
and flip_p, e.g. one seed across every ||mu|| of a sweep row and every optimizer — share one basis: R runs in U
groups of G = R/U consecutive runs. The network's forward and backward are then one (G 2m x d) x (d x (1 + n K))
matmul per group instead of R small ones. ``patches()`` expands to the full (R, n, P, d) input for the autograd
oracle and the nn.Module reference.

Every data set is drawn from its own generator, seeded from (seed, stream), so a run's data do not depend on which
other runs share its ensemble.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from theory_sim.cnn.labels import LABELS, draw_labels  # noqa: F401  (LABELS: the clean labels, re-exported)
from theory_sim.cnn.layout import group_size
from theory_sim.seeding import run_generators

STREAM_TRAIN, STREAM_TEST, STREAM_INIT, STREAM_BATCHES, STREAM_MC, STREAM_RANDSAM = range(6)


def run_rng(seed: int, stream: int) -> np.random.Generator:
    """Independent, reproducible generator for one run and one purpose (train data, test data, init, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


@dataclass
class Batch:
    """R runs' data sets of n samples each (compact form), in U groups of G consecutive runs sharing data."""

    basis: torch.Tensor       # (U, 1 + n K, d): [e_1, xi_11, ..., xi_nK] for each distinct data set
    mu_norm: torch.Tensor     # (R,) ||mu|| of each run (mu = ||mu|| e_1)
    yhat: torch.Tensor        # (R, n) true labels, +-1
    y: torch.Tensor           # (R, n) observed labels, +-1
    pos: torch.Tensor         # (R, n) index of the signal patch, in [0, P)
    K: int                    # stored noise vectors per sample
    P: int
    shared: bool              # True: one xi fills all P-1 noise patches

    @property
    def R(self) -> int:
        return self.y.shape[0]

    @property
    def n(self) -> int:
        return self.y.shape[1]

    @property
    def U(self) -> int:
        return self.basis.shape[0]

    @property
    def G(self) -> int:
        return self.R // self.U

    @property
    def d(self) -> int:
        return self.basis.shape[-1]

    @property
    def noise_multiplicity(self) -> int:
        """How many patches each stored noise vector fills."""
        return self.P - 1 if self.shared else 1

    @property
    def clean(self) -> torch.Tensor:
        """(R, n) bool: label not flipped (the set S+ of docs/science.md §4)."""
        return self.y == self.yhat

    @property
    def mu(self) -> torch.Tensor:
        """(R, d) signal vectors (materialised)."""
        return self.mu_norm[:, None] * self.basis[:, 0].repeat_interleave(self.G, 0)

    @property
    def xi(self) -> torch.Tensor:
        """(R, n, K, d) noise vectors (materialised)."""
        return self.basis[:, 1:].repeat_interleave(self.G, 0).reshape(self.R, self.n, self.K, self.d)

    @property
    def xi_sq(self) -> torch.Tensor:
        """(R, n, K) squared norms of the noise vectors."""
        return self.basis[:, 1:].pow(2).sum(-1).repeat_interleave(self.G, 0).reshape(self.R, self.n, self.K)

    def run(self, r: int) -> "Batch":
        """The data of run r alone (a one-run batch)."""
        return Batch(self.basis[r // self.G:r // self.G + 1], self.mu_norm[r:r + 1], self.yhat[r:r + 1],
                     self.y[r:r + 1], self.pos[r:r + 1], self.K, self.P, self.shared)

    def to(self, dtype=None, device=None) -> "Batch":
        cast = lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)  # noqa: E731
        return Batch(cast(self.basis), cast(self.mu_norm), cast(self.yhat), cast(self.y), cast(self.pos), self.K,
                     self.P, self.shared)

    def select(self, idx: torch.Tensor) -> "Batch":
        """Sample subsets, one per data set: idx has shape (U, B). One gather copies e_1 and the chosen noise."""
        K, B = self.K, idx.shape[1]
        groups = torch.arange(self.U, device=idx.device)[:, None]
        noise_rows = 1 + (idx[..., None] * K + torch.arange(K, device=idx.device)).reshape(self.U, B * K)
        basis = self.basis[groups, torch.cat([torch.zeros_like(idx[:, :1]), noise_rows], 1)]
        run_idx = idx.repeat_interleave(self.G, 0)
        runs = torch.arange(self.R, device=idx.device)[:, None]
        return Batch(basis, self.mu_norm, self.yhat[runs, run_idx], self.y[runs, run_idx], self.pos[runs, run_idx],
                     K, self.P, self.shared)

    def patches(self) -> torch.Tensor:
        """Full input x of shape (R, n, P, d): patch pos is yhat*mu, the others are the noise vectors in order."""
        xi = self.xi
        R, n, K, d = xi.shape
        out = torch.empty(R, n, self.P, d, dtype=xi.dtype, device=xi.device)
        signal = self.yhat[..., None] * self.mu[:, None, :]                      # (R, n, d)
        for i_patch in range(self.P):
            is_sig = (self.pos == i_patch)[..., None]
            k = i_patch - (self.pos < i_patch).long()  # index among the noise patches
            noise = xi[:, :, 0] if self.shared else torch.gather(
                xi, 2, k.clamp(0, K - 1)[..., None, None].expand(R, n, 1, d))[:, :, 0]
            out[:, :, i_patch] = torch.where(is_sig, signal, noise)
        return out


def generate(seeds, mu_norms, sigma_ps, flip_ps, *, d: int, n: int, P: int, noise_patches: str = "shared",
             project_noise: bool = True, stream: int = STREAM_TRAIN, dtype=torch.float64,
             device="cpu") -> Batch:
    """Draw the data of every run (``seeds``, ``mu_norms``, ``sigma_ps``, ``flip_ps``: one entry per run). Runs in
    consecutive blocks with the same (seed, sigma_p, flip_p) share one draw."""
    R = len(seeds)
    K = 1 if noise_patches == "shared" else P - 1
    keys = [(int(s), float(sp), float(fp)) for s, sp, fp in zip(seeds, sigma_ps, flip_ps)]
    G = group_size(keys)
    U = R // G
    yhat = np.empty((U, n))
    y = np.empty((U, n))
    pos = np.empty((U, n), dtype=np.int64)
    # filled run by run in the target dtype (each run's float64 draws cast as a whole array would be): no
    # float64 copy of every run's noise at once
    basis = torch.zeros(U, 1 + n * K, d, dtype=dtype)
    basis[:, 0, 0] = 1.0  # the signal direction e_1
    noise = np.empty((n, K, d))
    group_keys = keys[::G]
    for u, rng in enumerate(run_generators([k[0] for k in group_keys], stream)):  # = run_rng(seed, stream)
        _, sigma_p, flip_p = group_keys[u]
        yhat[u], flips = draw_labels(rng, n, flip_p)
        y[u] = np.where(flips, -yhat[u], yhat[u])
        pos[u] = rng.integers(0, P, size=n)
        rng.standard_normal((n, K, d), out=noise)
        if sigma_p != 1.0:  # x * 1.0 == x: a pass over n K d values saved for the [K23] sigma_p = 1
            noise *= sigma_p
        basis[u, 1:] = torch.from_numpy(noise.reshape(n * K, d))
    if project_noise:
        basis[:, 1:, 0] = 0.0  # projecting off mu = ||mu|| e_1 zeroes the first coordinate (also when ||mu|| = 0)
    as_t = lambda a, dt=dtype: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    per_run = lambda a, dt=dtype: as_t(a, dt).repeat_interleave(G, 0)  # noqa: E731
    return Batch(as_t(basis), as_t(np.asarray(mu_norms, dtype=float)), per_run(yhat), per_run(y),
                 per_run(pos, torch.long), K, P, noise_patches == "shared")


def generate_for(configs, stream: int = STREAM_TRAIN, n: int | None = None, dtype=None, device="cpu") -> Batch:
    """Data for an ensemble of SimConfigs (which agree on the structural fields)."""
    c0 = configs[0]
    return generate([c.rng_seed for c in configs], [c.mu_norm for c in configs], [c.sigma_p for c in configs],
                    [c.flip_p for c in configs], d=c0.d, n=c0.n if n is None else n, P=c0.P,
                    noise_patches=c0.noise_patches, project_noise=c0.project_noise, stream=stream,
                    dtype=dtype or getattr(torch, c0.dtype), device=device)
