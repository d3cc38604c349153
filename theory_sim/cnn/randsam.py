"""Rand-SAM's sampling: the random direction z ~ N(0, I) of every Rand-SAM run, in either state representation.

Each Rand-SAM run draws from its own generators (``randsam_generator``), so the same seed gives the same z whatever
the ensemble. Weight space draws z (R, 2, m, d) in full (``RandSamDraws.dense_parts``); coefficient space samples
only what a step reads, z's projections on the batch columns and ||z||, exactly in distribution
(``RandSamDraws.coefficient_parts``; docs/science.md §2.4). theory_sim.cnn.rules turns them into eps.
"""
from __future__ import annotations

import numpy as np
import torch

from theory_sim.cnn.data import STREAM_RANDSAM, run_rng
from theory_sim.sam.perturbation import group_norm
from theory_sim.seeding import seed_words


def randsam_generator(seed: int) -> torch.Generator:
    """The torch generator of a Rand-SAM run's normals, seeded from (seed, STREAM_RANDSAM) (as ``standard_draws``
    seeds its Monte-Carlo stream)."""
    return torch.Generator().manual_seed(seed_words([(seed, STREAM_RANDSAM)])[0])


class RandSamDraws:
    """Rand-SAM's random numbers: each Rand-SAM run draws from its own generators, seeded from (rng_seed,
    STREAM_RANDSAM): a torch generator for the normals, a numpy one for the chi-square part. So the same seed gives
    the same numbers whatever the ensemble. Coefficient space draws ``S`` steps at a time (S depends on structural
    fields only); weight space draws z in full at every step. Runs of other rules draw nothing (zeros)."""

    def __init__(self, ens):
        self.ens = ens
        self.runs = [r for r, rule in enumerate(ens.rules) if rule == "randsam"]
        self.normal = {r: randsam_generator(ens.configs[r].rng_seed) for r in self.runs}
        self.chi2 = {r: run_rng(ens.configs[r].rng_seed, STREAM_RANDSAM) for r in self.runs}
        self.next_block = 0   # coefficient space: the first step of the next block the generators will draw
        self.bias = ens.init.b is not None   # z covers every parameter: biases, or the deep model's hidden weights
        self.extra_shape = () if ens.init.b is None else tuple(ens.init.b.shape[1:])
        self.block_start, self.block = None, None
        self._factor_full = None   # coefficient space: the Gram factor of the full batch, computed once

    def coefficient_draws(self, step: int, c: int):
        """e (R, 2, m, c), chi^2_{2m max(d - c, 0)} (R,) and z_b (R, 2, m) or None, for ``step``."""
        ens = self.ens
        S = int(min(64, max(1, 2 ** 18 // (2 * ens.m * c))))
        start = step - step % S
        if self.block_start != start:
            skipped = (start - self.next_block) // S   # blocks come in order; one never asked for is drawn, dropped
            for _ in range(skipped + 1):
                self.block = self._draw_block(S, c)
            self.block_start, self.next_block = start, start + S
        e, chi2, zb = self.block
        i = step - start
        return e[:, i], chi2[:, i], None if zb is None else zb[:, i]

    def _draw_block(self, S: int, c: int):
        ens = self.ens
        dof = 2 * ens.m * max(ens.c0.d - c, 0)
        e = torch.zeros(ens.R, S, 2, ens.m, c, dtype=ens.dtype)
        chi2 = torch.zeros(ens.R, S, dtype=ens.dtype)
        zb = torch.zeros(ens.R, S, *self.extra_shape, dtype=ens.dtype) if self.bias else None
        for r in self.runs:
            torch.randn(e.shape[1:], generator=self.normal[r], dtype=ens.dtype, out=e[r])
            if zb is not None:
                torch.randn(zb.shape[1:], generator=self.normal[r], dtype=ens.dtype, out=zb[r])
            if dof > 0:
                chi2[r] = torch.as_tensor(self.chi2[r].chisquare(dof, S), dtype=ens.dtype)
        to = lambda t: None if t is None else t.to(ens.device)  # noqa: E731
        return to(e), to(chi2), to(zb)

    def dense_draws(self, step: int):
        """z (R, 2, m, d) and z_b (R, 2, m) or None, one step's worth from every Rand-SAM run's generator."""
        ens = self.ens
        z = torch.zeros(ens.R, 2, ens.m, ens.init.W.shape[-1], dtype=ens.dtype)   # d, or a full frame (§2.6)
        zb = torch.zeros(ens.R, *self.extra_shape, dtype=ens.dtype) if self.bias else None
        for r in self.runs:
            torch.randn(z.shape[1:], generator=self.normal[r], dtype=ens.dtype, out=z[r])
            if zb is not None:
                torch.randn(zb.shape[1:], generator=self.normal[r], dtype=ens.dtype, out=zb[r])
        return z.to(ens.device), None if zb is None else zb.to(ens.device)

    def coefficient_parts(self, batch, step: int):
        """Rand-SAM without materialising z (R, 2, m, d): per run, u = z basis_b^T (R, 2, m, 1 + BK), the bias
        part z_b and ||z||, exact in distribution.

        Why this is enough: the perturbed pre-activations are <w + eps, basis_c> = P + tau u / ||z|| on the batch
        columns (and b + tau z_b / ||z||), and the gradient at W + eps is a combination of the batch's data vectors
        (§2.3 at the perturbed point), so it lives in the span and steps A exactly: W + eps itself leaves
        W0 + span, W never does, and A keeps describing W.

        Sampling, per filter: z ~ N(0, I_d), so u = basis_b z ~ N(0, G_b). Take L L^T = G_b (Cholesky) and
        e ~ N(0, I_c), c = 1 + BK: u = L e has that law. Split z = z_par + z_perp along span(basis_b). With G_b
        invertible, ||z_par||^2 = u^T G_b^{-1} u = ||e||^2, and ||z_perp||^2 ~ chi^2 with d - c degrees of freedom,
        independent of u (Gaussian projections on orthogonal subspaces). So ||z||^2 = ||e||^2 + chi^2_{2m (d - c)}
        over the run's 2m filters, plus ||z_b||^2. A singular G_b (d < c when coefficient space is forced) uses
        its eigendecomposition instead, L = V Lambda^{1/2}: the components of e on zero eigenvalues are independent
        normals that do not move u, and exactly d - rank of them complete z_perp, so ||z||^2 counts e's top
        min(c, d) eigen-components plus chi^2_{2m max(d - c, 0)}."""
        e, chi2, zb = self.coefficient_draws(step, batch.proj.shape[-1])
        L, counted = self.gram_factor(batch)
        u = self.ens.group_mm(e, L.mT)
        sq = (e if counted is None else e[..., counted]).pow(2).sum(dim=(1, 2, 3)) + chi2
        if zb is not None:
            sq = sq + zb.pow(2).sum(dim=(1, 2))
        return u, zb, sq.sqrt()

    def gram_factor(self, batch) -> tuple[torch.Tensor, slice | None]:
        """L with L L^T = G_b, and which components of e enter ||z_par|| (None: all). Cached for the full batch."""
        if batch.cols is None and self._factor_full is not None:
            return self._factor_full
        L, info = torch.linalg.cholesky_ex(batch.gram)
        counted = None
        if bool((info != 0).any()):  # singular Gram block: eigendecomposition, eigenvalues ascending
            lam, V = torch.linalg.eigh(batch.gram)
            L = V * lam.clamp(min=0).sqrt()[:, None, :]
            c, d = batch.gram.shape[-1], self.ens.c0.d
            counted = slice(c - min(c, d), c)
        if batch.cols is None:
            self._factor_full = (L, counted)
        return L, counted

    def dense_parts(self, batch, step: int):
        """z (R, 2, m, d) drawn in full, from each run's own generator."""
        z, zb = self.dense_draws(step)
        parts = [z] if zb is None else [z, zb]
        return self.ens.shift(batch, z), zb, group_norm(parts, batch_dims=1)
