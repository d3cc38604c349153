"""The state of an ensemble of two-layer CNN runs, in two representations behind one interface (docs/science.md
§2.4): what a step of ``theory_sim.cnn.train`` reads and writes.

- **Coefficient space** (``Ensemble``, the default): W = W0 + A @ basis, basis = [e_1, xi_11, ..., xi_nK] (every
  gradient lies in its span, docs/science.md §4), and a step updates only the coefficients A (R, 2, m, 1 + n K).
  With the Gram matrix G = basis basis^T and the initial projections P0 = W0 basis^T, the projections of W are
  P0 + A G, so a step costs O(R m (nK)^2) whatever d is. Norms of W-space vectors held as coefficients go through
  the Gram matrix; Rand-SAM's z, which leaves the span, is sampled exactly through its projections and its norm
  (``Ensemble.randsam_parts``, theory_sim.cnn.randsam).
- **Weight space** (``WeightEnsemble``): W (R, 2, m, d) dense, stepped with the same closed-form gradient
  (coefs @ basis); perturbations are computed on dense W by ``theory_sim.sam.perturbation``. Needed when a rule's
  eps depends on W coordinate-wise (asam, sam with norm="inf"), and cheaper when 1 + n K > d. It accumulates A from
  the same update coefficients (every update lies in the span whatever eps is), so the tracker, the trajectory and
  ``reconstruction_error`` mean the same in both representations.

``make_ensemble(configs, state="auto")`` picks weight space when some run's rule leaves the span or 1 + n K > d.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from theory_sim.cnn.data import (
    STREAM_BATCHES,
    generate_for,
)
from theory_sim.cnn.deep import network_for
from theory_sim.cnn.layout import STATES, choose_state  # noqa: F401 (STATES re-exported)
from theory_sim.cnn.model import Gradient, Params
from theory_sim.cnn.randsam import RandSamDraws
from theory_sim.cnn.schedule import lr_factors
from theory_sim.cnn.estimators import (
    noise_gram,
)
from theory_sim.config import (
    STRUCTURAL_FIELDS,
    ConfigError,
    SimConfig,
    check_shared,
    device_of,
)
from theory_sim.sam import registry
from theory_sim.sam.perturbation import (
    group_norm,
)
from theory_sim.seeding import run_generators


def check_ensemble(configs) -> None:
    check_shared(configs, STRUCTURAL_FIELDS, "runs of one ensemble", f"; group runs by {STRUCTURAL_FIELDS}")


def _batch_schedule(configs, epochs: int, n: int, B: int) -> np.ndarray | None:
    """(R, epochs, n) per-run permutations; None for full batch (no permutation needed)."""
    if B == n:
        return None
    out = np.empty((len(configs), epochs, n), dtype=np.int64)
    for r, rng in enumerate(run_generators([c.rng_seed for c in configs], STREAM_BATCHES)):   # = run_rng(...)
        for t in range(epochs):
            out[r, t] = rng.permutation(n)
    return out


@dataclass
class StepBatch:
    """One step's batch: the projections of W on the batch's basis columns (and what the rules need of them).

    An m-sharpness pass expands it to R * C "virtual runs" (``reps = C``, run-major: run r's chunks are rows
    r C .. r C + C - 1), each the whole batch with the per-sample ``weights`` of one chunk."""

    cols: torch.Tensor | None    # (R, 2, m, 1 + BK) basis columns of the batch (None: full batch, every column)
    gram: torch.Tensor | None    # (U, 1 + BK, 1 + BK) their Gram block (coefficient space)
    proj: torch.Tensor           # (R, 2, m, 1 + BK)
    y: torch.Tensor              # (R, B)
    yhat: torch.Tensor           # (R, B)
    basis: torch.Tensor | None = None    # (U, 1 + BK, d) the batch's basis vectors (weight space)
    b: torch.Tensor | None = None        # (R, 2, m) biases at W
    mu_norm: torch.Tensor | None = None  # (R,)
    weights: torch.Tensor | None = None  # (R, B) per-sample weights replacing 1/B (m-sharpness chunks)
    reps: int = 1

    def per_run(self, x: torch.Tensor) -> torch.Tensor:
        """A per-run quantity (R, ...) laid out like this batch's (virtual) runs."""
        return x if self.reps == 1 else x.repeat_interleave(self.reps, 0)


class Perturbation(NamedTuple):
    """eps as the trainer uses it: the shift of the batch's projections, <eps, basis_c>, and of the biases."""
    shift: torch.Tensor
    db: torch.Tensor | None
    finite: torch.Tensor | None = None   # (R,) pre-activations finite at intermediate points (msam), else None


# ----------------------------------------------------------------------------------------------------------------
# The state: coefficient space, and weight space on top of it
# ----------------------------------------------------------------------------------------------------------------
class Ensemble:
    """The state of R runs in coefficient space (W = W0 + A @ basis) and the fixed quantities a step needs.

    The methods under "representation" are all a rule or the loop needs to know about the state; ``WeightEnsemble``
    overrides exactly those."""

    state = "coefficients"
    leaves_span = False   # applies only the rules whose eps stays in the span of the data basis (Rule.in_span)

    @classmethod
    def supported_rules(cls) -> tuple[str, ...]:
        """The rules whose eps this representation can apply (read off theory_sim.sam.registry)."""
        return registry.rules(cnn=True, in_span=None if cls.leaves_span else True)

    def __init__(self, configs: list[SimConfig]):
        check_ensemble(configs)
        c0 = self.c0 = configs[0]
        self.configs = list(configs)
        self.rules = [c.rule for c in configs]
        unsupported = sorted({r for r in self.rules if r is not None} - set(self.supported_rules()))
        if unsupported:
            raise ConfigError(f"state must be 'weights' (or 'auto') for rules {unsupported}: their perturbation "
                              f"depends on W coordinate-wise and leaves the span of the data basis")
        self.dtype, self.device = getattr(torch, c0.dtype), device_of(c0.device)
        self.R, self.n, self.B, self.m = len(configs), c0.n, c0.batch_size, c0.m
        self.net = network_for(c0)
        self.data = data = generate_for(configs, dtype=self.dtype, device=self.device)
        frame = None if data.init_frame is None else \
            data.init_frame.reshape(data.U, 2, c0.m, -1).repeat_interleave(data.G, 0)
        self.init = self.net.init([c.rng_seed for c in configs], [c.sigma_0 for c in configs], c0.d, self.dtype,
                                  self.device, standard=frame)
        self.U, self.G, self.K, self.mult = data.U, data.G, data.K, data.noise_multiplicity
        self.eta = self.vector([c.eta for c in configs])
        # eta(t) / eta per run and step (None: every run constant, the step is eta exactly)
        self.lr_factor = None if all(c.lr_schedule == "constant" for c in configs) else \
            self.vector(np.stack([lr_factors(c) for c in configs]))
        self.tau = self.vector([c.sam_radius if c.optimizer != "sgd" else 0.0 for c in configs])
        self.sam_until = self.vector([(math.inf if c.sam_steps is None else c.sam_steps) if c.optimizer != "sgd"
                                      else 0 for c in configs], torch.float64)
        self.loss_eps = self.vector([c.loss_eps for c in configs])
        self._init_rules()
        # runs sharing a data set share its seed, hence its batch order: one schedule per data set
        perms = _batch_schedule(configs[::self.G], c0.epochs, self.n, self.B)
        self.perms = None if perms is None else torch.as_tensor(perms, device=self.device)
        self.A = torch.zeros(self.R, 2, self.m, data.basis.shape[1], dtype=self.dtype, device=self.device)
        self.b = None if self.init.b is None else self.init.b.clone()
        self.W = None
        self._init_state()
        self.prev_A, self.prev_b, self.prev_W = self.A, self.b, self.W
        self.active = torch.ones(self.R, dtype=torch.bool, device=self.device)
        self.diverged = torch.zeros(self.R, dtype=torch.bool, device=self.device)
        self.steps_done = torch.zeros(self.R, dtype=torch.long, device=self.device)
        self.update_point = None   # the last update's L_I(W) and perturbed runs (theory_sim.cnn.rules.UpdatePoint)

    def _init_rules(self) -> None:
        """Per-run rule parameters: which rule (``uses``), msam's K and step length, the m-sharpness chunks,
        ASAM's eta_a."""
        self.present = tuple(r for r in registry.rules(cnn=True) if r in self.rules)
        self.uses = {r: torch.tensor([x == r for x in self.rules], device=self.device) for r in self.present}
        multi = [c.rule is not None and registry.RULES[c.rule].multi_step for c in self.configs]
        self.ascent_steps = torch.tensor([c.ascent_steps if k else 1 for c, k in zip(self.configs, multi)],
                                         device=self.device)
        self.ascent_step = self.vector([c.ascent_step if k else 1.0 for c, k in zip(self.configs, multi)])
        self.asam_eta = self.vector([c.asam_eta for c in self.configs])
        chunk = [c.chunk_size for c in self.configs]
        self.C = max(self.B // M for M in chunk)       # chunks per batch of the most finely chunked run
        self.chunked = None
        if self.C > 1:
            self.chunked = torch.tensor([M < self.B for M in chunk], device=self.device)
            # virtual run (r, c) = chunk c of run r: weight 1/M_r on its samples [c M_r, (c+1) M_r), 0 elsewhere
            pos = torch.arange(self.B)
            w = torch.stack([torch.stack([(pos // M == c).double() / M for c in range(self.C)]) for M in chunk])
            self.chunk_weights = w.reshape(self.R * self.C, self.B).to(self.dtype).to(self.device)
            self.chunk_scale = self.vector([M / self.B for M in chunk])   # 1 / (number of chunks of run r)
        self.draws = RandSamDraws(self) if "randsam" in self.present else None

    def _init_state(self) -> None:
        self.gram = self.data.basis @ self.data.basis.transpose(1, 2)              # (U, 1 + nK, 1 + nK)
        self.P0 = self.net.projections(self.init, self.data)                       # (R, 2, m, 1 + nK)
        self._W0_gram = None

    def vector(self, values, dtype=None) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype or self.dtype, device=self.device)

    def step_eta(self) -> torch.Tensor:
        """Each run's eta(t) for its next step (R,): t = its steps done, which for an active run is the global step
        (a stopped run steps by 0 anyway)."""
        if self.lr_factor is None:
            return self.eta
        t = self.steps_done.clamp(max=self.lr_factor.shape[1] - 1)
        return self.eta * self.lr_factor.gather(1, t[:, None])[:, 0]

    def group_mm(self, X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """X (R', ..., c) @ M (U, c, c'): run r uses the matrix of its data set (R' = R runs, or R C virtual runs)."""
        return torch.bmm(X.reshape(self.U, -1, X.shape[-1]), M).reshape(*X.shape[:-1], M.shape[-1])

    def preactivations(self, proj: torch.Tensor, bias, yhat, mu_norm=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's pre-activations (``TwoLayerCNN.preactivations_from_projections``) with this ensemble's data."""
        mu_norm = self.data.mu_norm if mu_norm is None else mu_norm
        return self.net.preactivations_from_projections(proj, bias, mu_norm, yhat, self.K)

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """f on the whole training set at the current W (R, n), and the noise pre-activations (R, 2, m, n, K)."""
        sig, z = self.preactivations(self.projections(), self.b, self.data.yhat)
        return self.net.output_from_preactivations(sig, z, self.mult, self.b), z

    def gradient(self, batch: StepBatch, proj: torch.Tensor, bias) -> Gradient:
        """The model's gradient (``TwoLayerCNN.batch_gradient``, also behind its ``loss_and_grad``) on the batch."""
        mu_norm = self.data.mu_norm if batch.mu_norm is None else batch.mu_norm
        return self.net.batch_gradient(proj, bias, batch.y, batch.yhat, mu_norm, self.K, self.mult, batch.weights)

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """(U, 1 + BK): e_1 and the noise vectors of the batch samples ``idx`` (U, B)."""
        noise_cols = 1 + (idx[..., None] * self.K + torch.arange(self.K, device=self.device)).reshape(self.U, -1)
        return torch.cat([torch.zeros_like(idx[:, :1]), noise_cols], 1)

    def per_run_columns(self, cols: torch.Tensor) -> torch.Tensor:
        return cols.repeat_interleave(self.G, 0)[:, None, None, :].expand(self.R, 2, self.m, cols.shape[1])

    def labels(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx_r = idx.repeat_interleave(self.G, 0)
        return torch.gather(self.data.y, 1, idx_r), torch.gather(self.data.yhat, 1, idx_r)

    # ---- representation ---------------------------------------------------------------------------------------
    def projections(self) -> torch.Tensor:
        """<w, basis_c> for every column at the current W: P0 + A G."""
        return self.P0 + self.group_mm(self.A, self.gram)

    def snapshot(self, gram: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Projections at W and, with ``gram``, W Pi W^T and w_{., 1} for the Gaussian test error, built out of
        small matrices: W W^T = W0 W0^T + P0 A^T + A P0^T + A G A^T, w_1 = W0_1 + A basis_{:, 1} (docs/science.md
        §2.4, §5)."""
        AG = self.group_mm(self.A, self.gram)
        proj = self.P0 + AG
        if not gram:
            return proj, None, None
        R, m = self.R, self.m
        if self._W0_gram is None:
            W0 = self.init.W.reshape(R, 2 * m, -1)
            self._W0_gram = W0 @ W0.mT
        Pf, Af, AGf = (t.reshape(R, 2 * m, -1) for t in (self.P0, self.A, AG))
        wwt = self._W0_gram + Pf @ Af.mT + Af @ Pf.mT + AGf @ Af.mT
        w0 = self.init.W[..., 0] + self.group_mm(self.A, self.data.basis[..., :1])[..., 0]
        if self.c0.project_noise:
            wwt = wwt - w0.reshape(R, 2 * m, 1) * w0.reshape(R, 1, 2 * m)
        return proj, wwt, w0

    def batch(self, idx: torch.Tensor | None) -> StepBatch:
        """The columns e_1 and the batch samples' noise vectors; a full batch uses every column (no gather)."""
        data, U = self.data, self.U
        if idx is None:
            return StepBatch(None, self.gram, self.P0 + self.group_mm(self.A, self.gram), data.y, data.yhat,
                             b=self.b, mu_norm=data.mu_norm)
        cols = self.columns(idx)                                                       # (U, 1 + BK)
        gram_cb = torch.gather(self.gram, 2, cols[:, None, :].expand(U, self.gram.shape[1], cols.shape[1]))
        gram_b = torch.gather(gram_cb, 1, cols[:, :, None].expand(U, cols.shape[1], cols.shape[1]))
        cols_r = self.per_run_columns(cols)
        proj = torch.gather(self.P0, 3, cols_r) + self.group_mm(self.A, gram_cb)
        y, yhat = self.labels(idx)
        return StepBatch(cols_r, gram_b, proj, y, yhat, b=self.b, mu_norm=data.mu_norm)

    def grad_tensors(self, batch: StepBatch, grad: Gradient) -> list[torch.Tensor]:
        """The gradient as the rules see it: its coefficients on the batch columns (and db)."""
        return grad.coefficient_tensors()

    def norm(self, batch: StepBatch, tensors) -> torch.Tensor:
        """The Euclidean norm of W-space vectors held as coefficients, per run: sqrt(sum_r C_r G_b C_r^T + ||db||^2)
        (the basis is not orthonormal, so this is not the norm of the coefficient vector)."""
        sq = (self.group_mm(tensors[0], batch.gram) * tensors[0]).sum(dim=(1, 2, 3))
        if len(tensors) > 1:
            sq = sq + tensors[1].pow(2).sum(dim=(1, 2))
        return sq.clamp(min=0).sqrt()

    def shift(self, batch: StepBatch, eps: torch.Tensor) -> torch.Tensor:
        """<eps, basis_c> on the batch columns for eps held as coefficients: eps_C G_b."""
        return self.group_mm(eps, batch.gram)

    def dense_step(self, batch: StepBatch, delta: torch.Tensor) -> None:
        """Weight space steps W as well; coefficient space has nothing else to update."""
        return None

    def randsam_parts(self, batch: StepBatch, step: int):
        """Rand-SAM's z on the batch: its projections u (R, 2, m, 1 + BK), bias part z_b and ||z||, sampled without
        materialising z (theory_sim.cnn.randsam.RandSamDraws.coefficient_parts)."""
        return self.draws.coefficient_parts(batch, step)

    def weights(self, previous: bool = False) -> Params:
        """W materialised: W0 + A basis (of the coefficients before the last step with ``previous``)."""
        A, b = (self.prev_A, self.prev_b) if previous else (self.A, self.b)
        return Params(self.init.W + self.group_mm(A, self.data.basis), b)


class WeightEnsemble(Ensemble):
    """The same runs with W (R, 2, m, d) kept dense: projections W basis^T, perturbations on dense W and g.

    A is still accumulated from the update coefficients (exact: every update lies in the span), for the tracker."""

    state = "weights"
    leaves_span = True    # every rule, also those whose eps depends on W coordinate-wise

    def _init_state(self) -> None:
        if self.draws is not None and self.init.W.shape[-1] < self.c0.d:
            raise ConfigError(f"state must be 'coefficients' (or 'auto') for randsam with dimension_free data: its "
                              f"z ~ N(0, I_d) leaves the frame of dimension {self.init.W.shape[-1]} < d = {self.c0.d}")
        self.W = self.init.W.clone()

    def _dense(self, coefs: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """coefs (R', 2, m, c) @ basis (U, c, d): W-space vectors from coefficients."""
        return self.group_mm(coefs, basis)

    def projections(self) -> torch.Tensor:
        return self.group_mm(self.W, self.data.basis.mT)

    def snapshot(self, gram: bool):
        proj = self.projections()
        if not gram:
            return proj, None, None
        wwt, w0 = noise_gram(self.W, self.c0.project_noise)
        return proj, wwt, w0

    def batch(self, idx: torch.Tensor | None) -> StepBatch:
        data = self.data
        if idx is None:
            basis, cols_r, y, yhat = data.basis, None, data.y, data.yhat
        else:
            cols = self.columns(idx)
            basis = torch.gather(data.basis, 1, cols[..., None].expand(self.U, cols.shape[1], data.basis.shape[2]))
            cols_r = self.per_run_columns(cols)
            y, yhat = self.labels(idx)
        proj = self.group_mm(self.W, basis.mT)
        return StepBatch(cols_r, None, proj, y, yhat, basis=basis, b=self.b, mu_norm=data.mu_norm)

    def grad_tensors(self, batch: StepBatch, grad: Gradient) -> list[torch.Tensor]:
        """The gradient materialised, dW = coefs @ basis_b (R', 2, m, d) (and db)."""
        dW = self._dense(grad.coefs, batch.basis)
        return [dW] if grad.db is None else [dW, grad.db]

    def norm(self, batch: StepBatch, tensors) -> torch.Tensor:
        return group_norm(tensors, batch_dims=1)

    def shift(self, batch: StepBatch, eps: torch.Tensor) -> torch.Tensor:
        return self.group_mm(eps, batch.basis.mT)

    def dense_step(self, batch: StepBatch, delta: torch.Tensor) -> torch.Tensor:
        basis = self.data.basis if batch.cols is None else batch.basis
        return self.W + self._dense(delta, basis)

    def randsam_parts(self, batch: StepBatch, step: int):
        """z (R, 2, m, d) drawn in full (theory_sim.cnn.randsam.RandSamDraws.dense_parts)."""
        return self.draws.dense_parts(batch, step)

    def weights(self, previous: bool = False) -> Params:
        return Params(self.prev_W, self.prev_b) if previous else Params(self.W, self.b)


def make_ensemble(configs: list[SimConfig], state: str = "auto") -> Ensemble:
    """The runs in the representation ``theory_sim.cnn.layout.choose_state`` picks: weight space if asked, or
    (``auto``) if some run's rule leaves the span (asam, sam with norm="inf") or 1 + n K > d (coefficient space is
    then not cheaper); else coefficient space."""
    check_ensemble(configs)
    return (WeightEnsemble if choose_state(configs, state) == "weights" else Ensemble)(configs)
