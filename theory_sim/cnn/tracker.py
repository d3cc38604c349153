"""Signal-noise decomposition of the filters [C23, K23] (docs/science.md §4).

    w_{j,r}(t) = w_{j,r}(0) + j gamma_{j,r}(t) mu/||mu||^2 + sum_{i,k} rho_{j,r,i,k}(t) xi_{i,k}/||xi_{i,k}||^2

Every gradient of the network is a combination of mu and the noise vectors, so the trainer keeps the weights as
W = W(0) + A @ basis with basis = [e_1, xi_11, ..., xi_nK] and accumulates the coefficients A exactly, step by
step: an update W <- W - eta dW adds -eta * (dW's coefficients), i.e.

    gamma_{j,r}   += -eta * j * a_sig_{j,r} * ||mu||^2          (A[..., 0] = j gamma / ||mu||, as mu = ||mu|| e_1)
    rho_{j,r,i,k} += -eta * a_noise_{j,r,i,k} * ||xi_{i,k}||^2  (A[..., ik] = rho / ||xi_ik||^2)

which is docs/science.md §4's formula (for SAM the gradient is taken at W + eps, the coefficients still describe W). Because a
sample's label is fixed, each rho_{j,r,i} only ever moves one way: it is rhobar (>= 0) when y_i = j and rhounder
(<= 0) when y_i = -j, so one array holds both and masks split them. ``reconstruct`` rebuilds W from gamma and rho
with docs/science.md §4's formula; the tests compare it with the trained W.
"""
from __future__ import annotations

import torch

from theory_sim.cnn.data import Batch


def _safe_inverse(x: torch.Tensor) -> torch.Tensor:
    """1/x with 1/0 := 0 (a zero signal or noise vector never moves the weights, so its coefficient is 0)."""
    return torch.where(x > 0, 1.0 / torch.where(x > 0, x, torch.ones_like(x)), torch.zeros_like(x))


class CoefficientTracker:
    """gamma (R, 2, m) and rho (R, 2, m, n, K) of the weights W = W0 + A @ basis."""

    def __init__(self, W0: torch.Tensor, A: torch.Tensor, data: Batch):
        self.W0 = W0
        R, _, m, _ = A.shape
        self.signs = torch.tensor([1.0, -1.0], dtype=A.dtype, device=A.device)
        self.mu_sq = data.mu_norm.pow(2)                        # (R,)
        self.xi_sq = data.xi_sq                                 # (R, n, K)
        self.gamma = self.signs[None, :, None] * data.mu_norm[:, None, None] * A[..., 0]
        self.rho = A[..., 1:].reshape(R, 2, m, data.n, data.K) * self.xi_sq[:, None, None]
        # rhobar entries: y_i = j ; rhounder entries: y_i = -j
        self.is_bar = (data.y[:, None, None, :, None] == self.signs[None, :, None, None, None])  # (R,2,1,n,1)
        self.clean = data.clean

    def reconstruct(self, data: Batch) -> torch.Tensor:
        """W0 + j gamma mu/||mu||^2 + sum rho xi/||xi||^2, shape (R, 2, m, d). The noise vectors are read from the
        data sets' shared basis (one matmul per data set, never an (R, n, K, d) copy)."""
        R, _, m, d = self.W0.shape
        U, G, n, K = data.U, data.G, data.n, data.K
        scaled = (self.rho * _safe_inverse(self.xi_sq)[:, None, None]).reshape(U, G * 2 * m, n * K)
        noise = torch.bmm(scaled, data.basis[:, 1:]).reshape(R, 2, m, d)
        signal = (self.signs[None, :, None] * self.gamma * _safe_inverse(self.mu_sq)[:, None, None])[..., None]
        mu = data.mu_norm[:, None, None, None] * data.basis[:, :1].repeat_interleave(G, 0)[:, None]  # (R, 1, 1, d)
        return self.W0 + signal * mu + noise

    def summaries(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-run summaries (each (R,)); ``z`` are the noise pre-activations at the current W (R, 2, m, n, K)."""
        neg_inf = torch.tensor(float("-inf"), dtype=self.rho.dtype, device=self.rho.device)
        pos_inf = torch.tensor(float("inf"), dtype=self.rho.dtype, device=self.rho.device)
        bar = torch.where(self.is_bar, self.rho, neg_inf)
        under = torch.where(self.is_bar, pos_inf, self.rho)
        # memorisation of sample i by the filters of its own label: max_{r,k} rhobar_{y_i, r, i, k}
        per_sample = bar.amax(dim=(2, 4)).amax(1)                # (R, n)
        clean = self.clean.to(per_sample.dtype)
        flipped = 1.0 - clean
        nan = torch.full_like(clean[:, 0], float("nan"))
        n_clean, n_flip = clean.sum(1), flipped.sum(1)
        bar_entries = torch.where(self.is_bar, self.rho, torch.zeros_like(self.rho))
        m, n = self.rho.shape[2], self.rho.shape[3]
        return {
            # Gamma and Rho of the ratio law (docs/science.md §6.1): mean over (j, r) of gamma, and mean over
            # (j, r, i with y_i = j) of rhobar summed over the sample's stored noise vectors (m n such entries)
            "gamma_mean": self.gamma.mean(dim=(1, 2)),
            "rhobar_mean": bar_entries.sum(dim=(1, 2, 3, 4)) / (m * n),
            "gamma_max": self.gamma.amax(dim=(1, 2)),
            "gamma_max_pos": self.gamma[:, 0].amax(-1),
            "gamma_max_neg": self.gamma[:, 1].amax(-1),
            "rhobar_max": bar.flatten(1).amax(1),
            "rhounder_min": under.flatten(1).amin(1),
            # the sign invariants (docs/science.md §6.5): rhobar >= 0 and rhounder <= 0 entry by entry
            "rhobar_min": torch.where(self.is_bar, self.rho, pos_inf).flatten(1).amin(1),
            "rhounder_max": torch.where(self.is_bar, neg_inf, self.rho).flatten(1).amax(1),
            "rhobar_clean_mean": torch.where(n_clean > 0, (per_sample * clean).sum(1) / n_clean.clamp(min=1), nan),
            "rhobar_flipped_mean": torch.where(n_flip > 0, (per_sample * flipped).sum(1) / n_flip.clamp(min=1), nan),
            "noise_active_frac": (z > 0).to(z.dtype).flatten(1).mean(1),
        }
