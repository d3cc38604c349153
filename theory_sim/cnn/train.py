"""SGD and the SAM family on the two-layer CNN, for R independent runs trained as ONE batched computation
[C23 Sec. 3-4] (docs/science.md §2-3).

Epoch t splits each run's data into H = n/B batches without replacement (its own permutation). At step (t, b):

    SGD:   W <- W - eta * grad L_I(W)
    SAM family: eps from the run's rule, then W <- W - eta * grad L_I(W + eps)

    sam      eps = tau g / ||g||_F  (norm over the 2m filters, and biases, of THIS run)     [F21]
    sam, norm="inf"   eps = tau sign(g)                                                      [F21]
    usam     eps = tau g                                                                     unnormalised SAM
    randsam  eps = tau z / ||z||, z ~ N(0, I) fresh every step                               [T24]
    msam     K projected normalised-gradient ascent steps in the tau-ball (``msam_rule``)  [T24, F21 App. C.6]
    asam     eps = tau T^2 g / ||T g||, T = |w| + eta_a on the weights, 1 on the biases      [K21]
    m_sharpness = M: every chunk of M samples is perturbed with its own gradient; the step is the mean of the
             chunks' gradients at their own perturbed points (sam, usam, msam)                [F21]

with g = grad L_I(W). ``sam_steps=K`` runs the rule for the first K steps and plain SGD afterwards, the schedule of
[C23]'s SAM result. An SGD run is a run of radius 0, which every rule maps to eps = 0, so SGD and SAM-family runs
share an ensemble (and a data set's matmul). Runs stop individually: at max epochs, once their full training loss
is <= loss_eps (checked after each epoch), or when they diverge (non-finite pre-activations: the run is flagged
``diverged`` and frozen at its last finite weights).

Two representations of the same state (``train_ensemble(..., state=)``), one loop:

- **Coefficient space** (``Ensemble``, the default): W = W0 + A @ basis, basis = [e_1, xi_11, ..., xi_nK] (every
  gradient lies in its span, docs/science.md §4), and a step updates only the coefficients A (R, 2, m, 1 + n K).
  With the Gram matrix G = basis basis^T and the initial projections P0 = W0 basis^T, the projections of W are
  P0 + A G, so a step costs O(R m (nK)^2) whatever d is. The rules sam, usam, msam (and m-sharpness) keep eps in
  the span: eps is a coefficient vector, its norm sqrt(sum_r C_r G C_r^T) and the perturbed projections
  P + eps_C G. Rand-SAM's z leaves the span but only its projections and its norm matter, which are sampled
  exactly (``Ensemble.randsam_parts``).
- **Weight space** (``WeightEnsemble``): W (R, 2, m, d) dense, stepped with the same closed-form gradient
  (coefs @ basis); perturbations are computed on dense W and g by ``theory_sim.sam.perturbation``. Needed when a
  rule's eps depends on W coordinate-wise (asam, sam with norm="inf": eps leaves the span and is not a function of
  the projections), and cheaper when 1 + n K > d. It also accumulates A from the same update coefficients: every
  update -eta grad L_I(W + eps) lies in the span whatever eps is (only the perturbed point leaves it), so A is
  exact for every rule and the tracker, the trajectory and ``reconstruction_error`` (dense W against W0 + A basis)
  mean the same in both representations.

``state="auto"`` picks weight space when some run's rule leaves the span or 1 + n K > d, else coefficient space,
so an ensemble of sgd/sam runs (d >= 1 + n K) runs exactly as before. Both representations give the same
numbers up to float round-off (tests/test_sam_family_cnn.py: <= 1e-10 relative); a run's numbers do not depend on
the other runs of its ensemble, except that an asam or norm="inf" run moves the whole ensemble to weight space.

The loop in ``train_ensemble`` reads top to bottom: pick the batch's basis columns, take the (perturbed) gradient,
step the state (freezing runs that diverge), log, and stop runs whose training loss is small enough.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from theory_sim.cnn.data import (
    STREAM_BATCHES,
    STREAM_RANDSAM,
    Batch,
    generate_for,
    run_rng,
)
from theory_sim.cnn.model import Gradient, Params, TwoLayerCNN
from theory_sim.cnn.test_error import (
    gaussian_test_error,
    gaussian_test_error_from_gram,
    heldout_test_error,
    noise_gram,
    standard_draws,
)
from theory_sim.cnn.tracker import CoefficientTracker
from theory_sim.config import (
    STRUCTURAL_FIELDS,
    ConfigError,
    SimConfig,
    check_choice,
    device_of,
)
from theory_sim.sam.perturbation import (
    ascent_step,
    group_norm,
    perturbation,
    usam_perturbation,
)

STATES = ("auto", "coefficients", "weights")
SPAN_LEAVING_RULES = ("sam_inf", "asam")  # eps depends on W coordinate-wise: weight space only


@dataclass
class EnsembleResult:
    configs: list[SimConfig]
    summary: pd.DataFrame                 # one row per run
    trajectory: pd.DataFrame              # one row per (logged step, run)
    params: Params                        # final weights
    init: Params                          # initial weights
    data: Batch                           # training data
    coefficients: dict[str, np.ndarray] = field(default_factory=dict)  # logged gamma/rho snapshots
    tracker: CoefficientTracker | None = None
    state: str = "coefficients"           # the representation trained in ("coefficients" or "weights")


def check_ensemble(configs) -> None:
    if not configs:
        raise ConfigError("configs must hold at least one run")
    c0 = configs[0]
    for c in configs[1:]:
        for name in STRUCTURAL_FIELDS:
            if getattr(c, name) != getattr(c0, name):
                raise ConfigError(f"runs of one ensemble must share {name} (got {getattr(c0, name)!r} and "
                                  f"{getattr(c, name)!r}); group runs by {STRUCTURAL_FIELDS}")


def log_steps(cfg: SimConfig) -> np.ndarray:
    """The steps at which a run is logged (sorted). ``log_points = 0``: every ``log_every`` steps and the last one.
    ``log_points = N``: about N log-spaced steps, always including step 0, the end of epoch 1, the SAM -> SGD switch
    and the last step (the phases the trajectory claims of docs/science.md §6 look at)."""
    total = cfg.total_steps
    if cfg.log_points == 0:
        steps = set(range(0, total + 1, cfg.log_every)) | {total}
    else:
        fixed = {0, min(cfg.steps_per_epoch, total), total}
        # log-spaced steps, as many as it takes for about log_points distinct ones (early steps round together);
        # the same for every optimizer, so SGD and SAM runs of one ensemble are logged at the same steps
        want = min(cfg.log_points, total + 1)
        for num in range(max(1, want - len(fixed)), 4 * want + 4):
            steps = fixed | {int(s) for s in np.round(np.geomspace(1, total, num))}
            if len(steps) >= want:
                break
        if cfg.optimizer != "sgd" and cfg.sam_steps is not None and 0 < cfg.sam_steps < total:
            steps.add(cfg.sam_steps)
    return np.array(sorted(steps), dtype=np.int64)


def _batch_schedule(configs, epochs: int, n: int, B: int) -> np.ndarray | None:
    """(R, epochs, n) per-run permutations; None for full batch (no permutation needed)."""
    if B == n:
        return None
    out = np.empty((len(configs), epochs, n), dtype=np.int64)
    for r, c in enumerate(configs):
        rng = run_rng(c.rng_seed, STREAM_BATCHES)
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
    RULES = ("sam", "usam", "msam", "randsam")  # the rules whose eps this representation can apply

    def __init__(self, configs: list[SimConfig]):
        check_ensemble(configs)
        c0 = self.c0 = configs[0]
        self.configs = list(configs)
        self.rules = [c.rule for c in configs]
        unsupported = sorted({r for r in self.rules if r is not None} - set(self.RULES))
        if unsupported:
            raise ConfigError(f"state must be 'weights' (or 'auto') for rules {unsupported}: their perturbation "
                              f"depends on W coordinate-wise and leaves the span of the data basis")
        self.dtype, self.device = getattr(torch, c0.dtype), device_of(c0.device)
        self.R, self.n, self.B, self.m = len(configs), c0.n, c0.batch_size, c0.m
        self.net = TwoLayerCNN.for_config(c0)
        self.data = data = generate_for(configs, dtype=self.dtype, device=self.device)
        self.init = self.net.init([c.rng_seed for c in configs], [c.sigma_0 for c in configs], c0.d, self.dtype,
                                  self.device)
        self.U, self.G, self.K, self.mult = data.U, data.G, data.K, data.noise_multiplicity
        self.eta = self.vector([c.eta for c in configs])
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

    def _init_rules(self) -> None:
        """Per-run rule parameters: which rule (``uses``), msam's K, the m-sharpness chunks, ASAM's eta_a."""
        self.present = tuple(r for r in ("sam", "usam", "msam", "randsam", "sam_inf", "asam") if r in self.rules)
        self.uses = {r: torch.tensor([x == r for x in self.rules], device=self.device) for r in self.present}
        self.ascent_steps = torch.tensor([c.ascent_steps if c.rule == "msam" else 1 for c in self.configs],
                                         device=self.device)
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
        self._factor_full = None

    def vector(self, values, dtype=None) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype or self.dtype, device=self.device)

    def group_mm(self, X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """X (R', ..., c) @ M (U, c, c'): run r uses the matrix of its data set (R' = R runs, or R C virtual runs)."""
        return torch.bmm(X.reshape(self.U, -1, X.shape[-1]), M).reshape(*X.shape[:-1], M.shape[-1])

    def preactivations(self, proj: torch.Tensor, bias, yhat, mu_norm=None) -> tuple[torch.Tensor, torch.Tensor]:
        mu_norm = self.data.mu_norm if mu_norm is None else mu_norm
        return self.net.preactivations_from_projections(proj, bias, mu_norm, yhat, self.K)

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """f on the whole training set at the current W (R, n), and the noise pre-activations (R, 2, m, n, K)."""
        sig, z = self.preactivations(self.projections(), self.b, self.data.yhat)
        return self.net.output_from_preactivations(sig, z, self.mult), z

    def gradient(self, batch: StepBatch, proj: torch.Tensor, bias) -> Gradient:
        return self.net.gradient(*self.preactivations(proj, bias, batch.yhat, batch.mu_norm), batch.y, batch.yhat,
                                 batch.mu_norm, self.mult, bias is not None, batch.weights)

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
        e, chi2, zb = self.draws.coefficient_draws(step, batch.proj.shape[-1])
        L, counted = self.gram_factor(batch)
        u = self.group_mm(e, L.mT)
        sq = (e if counted is None else e[..., counted]).pow(2).sum(dim=(1, 2, 3)) + chi2
        if zb is not None:
            sq = sq + zb.pow(2).sum(dim=(1, 2))
        return u, zb, sq.sqrt()

    def gram_factor(self, batch: StepBatch) -> tuple[torch.Tensor, slice | None]:
        """L with L L^T = G_b, and which components of e enter ||z_par|| (None: all). Cached for the full batch."""
        if batch.cols is None and self._factor_full is not None:
            return self._factor_full
        L, info = torch.linalg.cholesky_ex(batch.gram)
        counted = None
        if bool((info != 0).any()):  # singular Gram block: eigendecomposition, eigenvalues ascending
            lam, V = torch.linalg.eigh(batch.gram)
            L = V * lam.clamp(min=0).sqrt()[:, None, :]
            c, d = batch.gram.shape[-1], self.c0.d
            counted = slice(c - min(c, d), c)
        if batch.cols is None:
            self._factor_full = (L, counted)
        return L, counted

    def weights(self, previous: bool = False) -> Params:
        """W materialised: W0 + A basis (of the coefficients before the last step with ``previous``)."""
        A, b = (self.prev_A, self.prev_b) if previous else (self.A, self.b)
        return Params(self.init.W + self.group_mm(A, self.data.basis), b)


class WeightEnsemble(Ensemble):
    """The same runs with W (R, 2, m, d) kept dense: projections W basis^T, perturbations on dense W and g.

    A is still accumulated from the update coefficients (exact: every update lies in the span), for the tracker."""

    state = "weights"
    RULES = ("sam", "usam", "msam", "randsam", "sam_inf", "asam")

    def _init_state(self) -> None:
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
        """z (R, 2, m, d) drawn in full, from each run's own generator."""
        z, zb = self.draws.dense_draws(step)
        parts = [z] if zb is None else [z, zb]
        return self.shift(batch, z), zb, group_norm(parts, batch_dims=1)

    def weights(self, previous: bool = False) -> Params:
        return Params(self.prev_W, self.prev_b) if previous else Params(self.W, self.b)


def make_ensemble(configs: list[SimConfig], state: str = "auto") -> Ensemble:
    """The representation for these runs: weight space if asked, or (``auto``) if some run's rule leaves the span
    (asam, sam with norm="inf") or 1 + n K > d (coefficient space is then not cheaper); else coefficient space."""
    check_choice("state", state, STATES)
    check_ensemble(configs)
    c0 = configs[0]
    if state == "auto":
        columns = 1 + c0.n * (1 if c0.noise_patches == "shared" else c0.P - 1)
        leaves = any(c.rule in SPAN_LEAVING_RULES for c in configs)
        state = "weights" if leaves or columns > c0.d else "coefficients"
    return (WeightEnsemble if state == "weights" else Ensemble)(configs)


def randsam_generator(seed: int) -> torch.Generator:
    """The torch generator of a Rand-SAM run's normals, seeded from (seed, STREAM_RANDSAM) (as ``standard_draws``
    seeds its Monte-Carlo stream)."""
    state = np.random.SeedSequence([int(seed), STREAM_RANDSAM]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


class RandSamDraws:
    """Rand-SAM's random numbers: each Rand-SAM run draws from its own generators, seeded from (rng_seed,
    STREAM_RANDSAM): a torch generator for the normals, a numpy one for the chi-square part. So the same seed gives
    the same numbers whatever the ensemble. Coefficient space draws ``S`` steps at a time (S depends on structural
    fields only); weight space draws z in full at every step. Runs of other rules draw nothing (zeros)."""

    def __init__(self, ens: Ensemble):
        self.ens = ens
        self.runs = [r for r, rule in enumerate(ens.rules) if rule == "randsam"]
        self.normal = {r: randsam_generator(ens.configs[r].rng_seed) for r in self.runs}
        self.chi2 = {r: run_rng(ens.configs[r].rng_seed, STREAM_RANDSAM) for r in self.runs}
        self.next_block = 0   # coefficient space: the first step of the next block the generators will draw
        self.bias = ens.init.b is not None
        self.block_start, self.block = None, None

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
        zb = torch.zeros(ens.R, S, 2, ens.m, dtype=ens.dtype) if self.bias else None
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
        z = torch.zeros(ens.R, 2, ens.m, ens.c0.d, dtype=ens.dtype)
        zb = torch.zeros(ens.R, 2, ens.m, dtype=ens.dtype) if self.bias else None
        for r in self.runs:
            torch.randn(z.shape[1:], generator=self.normal[r], dtype=ens.dtype, out=z[r])
            if zb is not None:
                torch.randn(zb.shape[1:], generator=self.normal[r], dtype=ens.dtype, out=zb[r])
        return z.to(ens.device), None if zb is None else zb.to(ens.device)


# ----------------------------------------------------------------------------------------------------------------
# The rules: eps for every run of a (virtual) batch, in the ensemble's representation
# ----------------------------------------------------------------------------------------------------------------
def _as_perturbation(ens: Ensemble, batch: StepBatch, eps: list[torch.Tensor], finite=None) -> Perturbation:
    return Perturbation(ens.shift(batch, eps[0]), eps[1] if len(eps) > 1 else None, finite)


def _gradient_at(ens: Ensemble, batch: StepBatch, pert: Perturbation) -> Gradient:
    """The gradient at W + eps: the batch's projections shifted by <eps, basis_c>, the biases by eps_b."""
    return ens.gradient(batch, batch.proj + pert.shift, None if batch.b is None else batch.b + pert.db)


def sam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """SAM [F21]: eps = tau g / ||g||_2, the norm of the gradient itself (through the Gram matrix in coefficient
    space); a zero gradient gives eps = 0."""
    g = ens.grad_tensors(batch, grad)
    return _as_perturbation(ens, batch, perturbation("sam", g, radius, batch_dims=1, norm=ens.norm(batch, g)))


def usam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """Unnormalised SAM: eps = tau g (linear in g, so it stays in the span)."""
    return _as_perturbation(ens, batch, usam_perturbation(ens.grad_tensors(batch, grad), radius, batch_dims=1))


def msam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """Multi-step SAM [T24, F21 App. C.6], the rule of ``theory_sim.sam.optim.SAM`` (``steps_k = K``, rule sam,
    ``ascent_lr`` = rho): eps_1 = tau g / ||g|| (SAM), then K - 1 times eps <- Proj_tau(eps + tau g(W + eps) /
    ||g(W + eps)||) (``theory_sim.sam.perturbation.ascent_step``), and the step takes the gradient at W + eps_K.
    So K = 1 is SAM and a step costs K + 1 gradients. Every iterate is a combination of gradients, hence stays in
    the span; runs with fewer steps (per-run K) keep their eps once done."""
    def norm(ts):
        return ens.norm(batch, ts)

    g = ens.grad_tensors(batch, grad)
    eps = perturbation("sam", g, radius, batch_dims=1, norm=norm(g))
    steps = batch.per_run(ens.ascent_steps)
    finite = torch.ones_like(grad.finite)
    for i in range(1, int(steps[radius > 0].max())):
        g_i = _gradient_at(ens, batch, _as_perturbation(ens, batch, eps))
        more = (steps > i) & (radius > 0)
        finite &= g_i.finite | ~more
        new = ascent_step(eps, ens.grad_tensors(batch, g_i), radius, batch_dims=1, norm_fn=norm)
        eps = [torch.where(more.reshape(-1, *([1] * (e.dim() - 1))), n, e) for n, e in zip(new, eps)]
    return _as_perturbation(ens, batch, eps, finite)


def randsam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """Rand-SAM [T24]: eps = tau z / ||z||, z ~ N(0, I) over the run's filters and biases, fresh every step
    (``randsam_parts``: drawn in full in weight space, only its projections and norm in coefficient space)."""
    u, zb, znorm = ens.randsam_parts(batch, step)
    scaled = perturbation("sam", [u] if zb is None else [u, zb], radius, batch_dims=1, norm=znorm)
    return Perturbation(scaled[0], scaled[1] if zb is not None else None)


def sam_inf_rule(ens, batch, grad, radius, step) -> Perturbation:
    """SAM with p = inf [F21]: eps = tau sign(g) coordinate-wise (weight space only: sign(g) leaves the span)."""
    return _as_perturbation(ens, batch, perturbation("sam_inf", ens.grad_tensors(batch, grad), radius, batch_dims=1))


def asam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """ASAM [K21]: eps = tau T^2 g / ||T g||, T = |w| + eta_a on the weights, 1 on the biases (weight space only)."""
    params = [ens.W] if ens.b is None else [ens.W, ens.b]
    eps = perturbation("asam", ens.grad_tensors(batch, grad), radius, params=params,
                       adaptive=[True, False][:len(params)], eta_a=ens.asam_eta.reshape(-1, 1, 1, 1), batch_dims=1)
    return _as_perturbation(ens, batch, eps)


RULE_FUNCTIONS = {"sam": sam_rule, "usam": usam_rule, "msam": msam_rule, "randsam": randsam_rule,
                  "sam_inf": sam_inf_rule, "asam": asam_rule}


# ----------------------------------------------------------------------------------------------------------------
# One step
# ----------------------------------------------------------------------------------------------------------------
def select_batch(ens: Ensemble, epoch: int, i_batch: int) -> StepBatch:
    """The batch of step (epoch, i_batch): every run's own permutation (None: full batch)."""
    B = ens.B
    return ens.batch(None if ens.perms is None else ens.perms[:, epoch, i_batch * B:(i_batch + 1) * B])


def perturbed_gradient(ens: Ensemble, batch: StepBatch, grad: Gradient, radius: torch.Tensor,
                       step: int) -> tuple[Gradient, torch.Tensor]:
    """The gradient at W + eps, eps from each run's rule (radius 0: eps = 0, the gradient at W). With several
    rules in the ensemble each is applied with the radius of its own runs only and the shifts add up (exact: the
    others' are 0)."""
    if len(ens.present) == 1:  # one rule (plus SGD runs): the caller knows some radius is > 0
        pert = RULE_FUNCTIONS[ens.present[0]](ens, batch, grad, radius, step)
    else:
        pert = None
        for rule in ens.present:
            r = radius * batch.per_run(ens.uses[rule]).to(radius.dtype)
            if bool((r > 0).any()):
                pert = _add(pert, RULE_FUNCTIONS[rule](ens, batch, grad, r, step))
    grad = _gradient_at(ens, batch, pert)
    return grad, grad.finite if pert.finite is None else grad.finite & pert.finite


def _add(a: Perturbation | None, b: Perturbation) -> Perturbation:
    """Two rules' perturbations of disjoint sets of runs (each is exactly 0 on the other's runs)."""
    if a is None:
        return b
    finite = a.finite if b.finite is None else (b.finite if a.finite is None else a.finite & b.finite)
    return Perturbation(a.shift + b.shift, None if a.db is None else a.db + b.db, finite)


def chunk_batch(ens: Ensemble, batch: StepBatch) -> StepBatch:
    """The batch as R C virtual runs, run r's chunk c weighted 1/M_r on its samples (the chunk's mean loss)."""
    C = ens.C
    rep = lambda t: None if t is None else t.repeat_interleave(C, 0)  # noqa: E731
    return StepBatch(None, batch.gram, rep(batch.proj), rep(batch.y), rep(batch.yhat), batch.basis, rep(batch.b),
                     rep(batch.mu_norm), ens.chunk_weights, C)


def chunked_gradient(ens: Ensemble, batch: StepBatch, radius: torch.Tensor,
                     step: int) -> tuple[Gradient, torch.Tensor]:
    """m-sharpness [F21]: every chunk of M samples is perturbed with its own gradient (the rule on the chunk's mean
    loss), and the run steps with the mean over its chunks of their gradients at their own perturbed points, as
    ``theory_sim.sam.optim.SAM.step_chunked`` does with equal chunk weights."""
    vb = chunk_batch(ens, batch)
    R, C = ens.R, ens.C
    grad0 = ens.gradient(vb, vb.proj, vb.b)
    grad, finite = perturbed_gradient(ens, vb, grad0, vb.per_run(radius) * (vb.weights > 0).any(1), step)
    return _mean_over_chunks(grad, R, C, ens.chunk_scale, vb.weights > 0), (finite & grad0.finite).reshape(R, C).all(1)


def _mean_over_chunks(g: Gradient, R: int, C: int, scale: torch.Tensor, member: torch.Tensor) -> Gradient:
    """Run r's gradient (1/C_r) sum_c g_(r, c) from its virtual runs (padding chunks are exact zeros); f is each
    sample's output at its own chunk's point, the noise-active fraction the sum of the chunks' (each counts its own
    samples over the whole batch)."""
    def fold(t):
        return t.reshape(R, C, *t.shape[1:]).sum(1)

    def scaled(t):
        return fold(t) * scale.reshape(-1, *([1] * (t.dim() - 1)))

    return Gradient(scaled(g.loss), fold(g.f * member), scaled(g.coefs), None if g.db is None else scaled(g.db),
                    scaled(g.a_sig), scaled(g.a_noise), fold(g.noise_active), g.finite.reshape(R, C).all(1))


def _where(mask: torch.Tensor, a: Gradient, b: Gradient) -> Gradient:
    """Per run: a where ``mask``, else b."""
    def pick(x, y):
        return None if x is None else torch.where(mask.reshape(-1, *([1] * (x.dim() - 1))), x, y)

    return Gradient(pick(a.loss, b.loss), pick(a.f, b.f), pick(a.coefs, b.coefs), pick(a.db, b.db),
                    pick(a.a_sig, b.a_sig), pick(a.a_noise, b.a_noise), pick(a.noise_active, b.noise_active),
                    pick(a.finite, b.finite))


def update_gradient(ens: Ensemble, batch: StepBatch, step: int) -> tuple[Gradient, torch.Tensor]:
    """The gradient each run steps with (at W for SGD, at W + eps for the SAM family) and whether its
    pre-activations at W and at every point it was evaluated were finite."""
    grad = ens.gradient(batch, batch.proj, batch.b)
    finite = grad.finite
    radius = ens.tau * ((ens.sam_until > step) & ens.active).to(ens.dtype)
    if not bool((radius > 0).any()):
        return grad, finite
    if ens.chunked is None:
        grad, ok = perturbed_gradient(ens, batch, grad, radius, step)
        return grad, finite & ok
    whole = radius * (~ens.chunked).to(ens.dtype)
    if bool((whole > 0).any()):
        grad, ok = perturbed_gradient(ens, batch, grad, whole, step)
        finite = finite & ok
    if bool((radius * ens.chunked > 0).any()):
        chunked, ok = chunked_gradient(ens, batch, radius * ens.chunked.to(ens.dtype), step)
        grad, finite = _where(ens.chunked, chunked, grad), finite & ok
    return grad, finite


def apply_step(ens: Ensemble, batch: StepBatch, grad: Gradient, finite: torch.Tensor) -> None:
    """A <- A - eta * coefs on the batch's columns (stopped runs step by 0), and the same step on dense W in weight
    space. A run whose pre-activations were not finite has diverged: it is frozen at its last finite weights (the
    state before the last step)."""
    step_size = (ens.eta * ens.active.to(ens.dtype))[:, None, None, None]
    delta = -step_size * torch.nan_to_num(grad.coefs)                   # (a NaN step is caught below)
    new_A = ens.A + delta if batch.cols is None else ens.A.scatter_add(3, batch.cols, delta)
    new_b = None if ens.b is None else ens.b - step_size[..., 0] * torch.nan_to_num(grad.db)
    new_W = ens.dense_step(batch, delta)
    if not bool(finite.all()):
        bad = ~finite
        ens.diverged |= ens.active & bad
        ens.active &= ~bad
        new_A[bad] = ens.prev_A[bad]
        if new_b is not None:
            new_b[bad] = ens.prev_b[bad]
        if new_W is not None:
            new_W[bad] = ens.prev_W[bad]
    ens.prev_A, ens.prev_b, ens.prev_W = ens.A, ens.b, ens.W
    ens.A, ens.b, ens.W = new_A, new_b, new_W
    ens.steps_done += ens.active.long()


def stop_converged(ens: Ensemble) -> None:
    """Early stopping on the full training loss, once per epoch."""
    f, _ = ens.outputs()
    ens.active &= ~(F.softplus(-ens.data.y * f).mean(1) <= ens.loss_eps)


class TrajectoryLog:
    """Per-run rows of summaries at each run's logged steps (``log_steps``), and gamma/rho snapshots.

    ``update_noise_active_frac`` is the fraction of noise pre-activations that are positive where the gradient is
    taken (W + eps for the SAM family: the quantity SAM switches off [C23]), averaged over the run's steps since its
    previous logged step. Everything in a row depends on the run alone, not on the ensemble it was trained in.
    """

    def __init__(self, ens: Ensemble, track: bool):
        self.ens, self.track = ens, track
        total = ens.c0.total_steps
        self.due = np.zeros((ens.R, total + 1), dtype=bool)
        for r, c in enumerate(ens.configs):
            self.due[r, log_steps(c)] = True
        self.any_due = self.due.any(0)
        n_draws = min(ens.c0.trajectory_mc, ens.c0.n_mc)
        self.draws = (standard_draws(ens.configs, n_draws, ens.K, 2 * ens.m, ens.dtype, ens.device) if n_draws
                      else None)
        self.active_sum = torch.zeros(ens.R, dtype=ens.dtype, device=ens.device)
        self.active_count = torch.zeros(ens.R, dtype=ens.dtype, device=ens.device)
        self.rows: list[pd.DataFrame] = []
        self.snapshots: dict[str, list] = {"step": [], "gamma": [], "rho": []}
        self.logged_at = np.full(ens.R, -1)   # each run's last logged step
        self.prev_rho: torch.Tensor | None = None

    def add_update(self, grad: Gradient) -> None:
        self.active_sum += grad.noise_active
        self.active_count += 1

    def test_error(self, wwt: torch.Tensor | None, w0: torch.Tensor | None) -> torch.Tensor:
        """Gaussian test error from W Pi W^T and w_{., 1} (docs/science.md §5); NaN with trajectory_mc = 0."""
        ens = self.ens
        if self.draws is None:  # trajectory_mc = 0: not estimated along the trajectory
            return torch.full((ens.R,), float("nan"), dtype=ens.dtype, device=ens.device)
        return gaussian_test_error_from_gram(ens.net, wwt, w0, ens.b, ens.configs, 0, draws=self.draws)[0]

    def record(self, step: int, epoch: float, force: bool = False) -> None:
        """Log the runs due at ``step`` (every run with ``force``: the last step of an early-stopped ensemble)."""
        rows = (self.logged_at != step) if force else self.due[:, step]
        if not rows.any():
            return
        self.logged_at[rows] = step
        ens = self.ens
        proj, wwt, w0 = ens.snapshot(gram=self.draws is not None)
        sig, z = ens.preactivations(proj, ens.b, ens.data.yhat)
        f = ens.net.output_from_preactivations(sig, z, ens.mult)
        cols = {"step": np.full(ens.R, step), "epoch": np.full(ens.R, epoch), "run": np.arange(ens.R),
                "seed": [c.seed for c in ens.configs], "optimizer": [c.optimizer for c in ens.configs],
                "train_loss": F.softplus(-ens.data.y * f).mean(1),
                "train_acc": (ens.data.y * f > 0).to(ens.dtype).mean(1),
                "test_error": self.test_error(wwt, w0),
                "update_noise_active_frac": self.active_sum / self.active_count}  # 0/0 = NaN at step 0
        mask = torch.as_tensor(rows, device=ens.device)
        self.active_sum[mask] = 0
        self.active_count[mask] = 0
        if self.track:
            tracker = CoefficientTracker(ens.init.W, ens.A, ens.data)
            cols.update(tracker.summaries(z))
            cols["rho_monotone_violations"] = self.monotone_violations(tracker)
            self.snapshots["step"].append(step)
            self.snapshots["gamma"].append(tracker.gamma.cpu().numpy().copy())
            self.snapshots["rho"].append(tracker.rho.cpu().numpy().copy())
        frame = pd.DataFrame({k: v.cpu().numpy() if torch.is_tensor(v) else v for k, v in cols.items()})
        self.rows.append(frame[rows])

    def monotone_violations(self, tracker: CoefficientTracker) -> torch.Tensor:
        """Per run, the rho entries that moved the wrong way since the previous record (rhobar down, rhounder
        up; docs/science.md §6.5), beyond round-off of the entry's size. Exactly 0 for every rule whose noise
        increments have the sign of y_i j."""
        rho = tracker.rho
        prev = self.prev_rho if self.prev_rho is not None else rho
        tol = 64 * torch.finfo(rho.dtype).eps * torch.maximum(rho.abs(), prev.abs())
        wrong = torch.where(tracker.is_bar, rho < prev - tol, rho > prev + tol)
        self.prev_rho = rho.clone()
        return wrong.flatten(1).sum(1).to(rho.dtype)

    def table(self) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame()

    def coefficients(self) -> dict[str, np.ndarray]:
        if not (self.track and self.snapshots["step"]):
            return {}
        return {"step": np.asarray(self.snapshots["step"]), "gamma": np.stack(self.snapshots["gamma"]),
                "rho": np.stack(self.snapshots["rho"]), "y": self.ens.data.y.cpu().numpy(),
                "yhat": self.ens.data.yhat.cpu().numpy()}


def train_ensemble(configs: list[SimConfig], *, track: bool = True, log: bool = True,
                   progress: bool | None = None, heldout: bool = True,
                   reconstruct: bool | None = None, state: str = "auto") -> EnsembleResult:
    """Train every run in ``configs`` (sharing the structural fields) and evaluate it.

    track: gamma/rho summaries and snapshots in the log.  log: record a trajectory at each run's ``log_steps``
    (train loss, test error, coefficient summaries).  heldout: also estimate the test error on ``n_test`` fresh
    samples.  reconstruct (default: track): rebuild W from gamma/rho and report ``reconstruction_error``.
    state: ``"auto"``, ``"coefficients"`` or ``"weights"``, the representation (see the module docstring; the
    tables have the same columns either way).
    """
    from tqdm.auto import tqdm

    ens = make_ensemble(configs, state)
    c0, H = ens.c0, ens.n // ens.B
    logger = TrajectoryLog(ens, track) if log else None
    bar = tqdm(total=c0.total_steps, desc=f"train d={c0.d} R={ens.R}", leave=False,
               disable=(not progress) if progress is not None else None)
    if logger:
        logger.record(0, 0)
    step = 0
    for epoch in range(c0.epochs):
        for i_batch in range(H):
            batch = select_batch(ens, epoch, i_batch)
            grad, finite = update_gradient(ens, batch, step)
            apply_step(ens, batch, grad, finite)
            step += 1
            bar.update(1)
            if logger:
                logger.add_update(grad)
                if logger.any_due[step]:
                    logger.record(step, epoch + (i_batch + 1) / H)
        stop_converged(ens)
        if not bool(ens.active.any()):
            break
    bar.close()
    if logger:  # an ensemble that stopped early logs its last step for every run
        logger.record(step, c0.epochs if step == c0.total_steps else step / H, force=True)
    summary, params, tracker = evaluate(ens, track, heldout, track if reconstruct is None else reconstruct)
    trajectory = logger.table() if logger else pd.DataFrame()
    coefficients = logger.coefficients() if logger else {}
    return EnsembleResult(ens.configs, summary, trajectory, params, ens.init, ens.data, coefficients, tracker,
                          ens.state)


def final_weights(ens: Ensemble) -> Params:
    """W materialised once; a run whose last step produced non-finite weights is frozen at the previous ones.

    Non-finite means: in W itself (materialising W0 + A basis may overflow where the projections did not), in its
    pre-activations, or in its training outputs (finite pre-activations whose sum overflows). Such a run is flagged
    ``diverged`` (docs/science.md §3.3), also one that had stopped early (a loss of exactly 0 from infinite margins).
    So is a run whose weights are finite but out of the dtype's range: a filter's squared norm ||w_{j,r}||^2 (the
    diagonal of the Gram W W^T the test-error estimator needs, docs/science.md §5.1) overflows — e.g. one step of
    eta = 1e300. Its logged test errors are NaN from the step the Gram overflowed, and so is its summary."""
    data = ens.data
    params = ens.weights()
    sig, z = ens.net.preactivations(params, data)
    f = ens.net.output_from_preactivations(sig, z, data.noise_multiplicity)
    bad = ~(torch.isfinite(z).flatten(1).all(1) & torch.isfinite(sig).flatten(1).all(1)
            & torch.isfinite(f).all(1) & torch.stack([torch.isfinite(t).flatten(1).all(1)
                                                      for t in params.tensors()]).all(0))
    if bool(bad.any()):
        previous = ens.weights(previous=True)
        ens.diverged |= bad
        ens.steps_done -= (bad & ens.active).long()
        params = Params.from_tensors([torch.where(bad.reshape(-1, *([1] * (p.dim() - 1))), o, p)
                                      for p, o in zip(params.tensors(), previous.tensors())])
    ens.diverged |= ~torch.isfinite(params.W.pow(2).sum(-1)).flatten(1).all(1)
    return params


def evaluate(ens: Ensemble, track: bool, heldout: bool,
             reconstruct: bool) -> tuple[pd.DataFrame, Params, CoefficientTracker | None]:
    """The summary table (one row per run): the config, training loss/accuracy, test errors, steps, divergence
    and the reconstruction error of W from gamma/rho."""
    configs, data, net = ens.configs, ens.data, ens.net
    params = final_weights(ens)
    f = net.output(params, data)
    test_err, test_se = gaussian_test_error(net, params, configs, ens.c0.n_mc)
    summary = pd.DataFrame([c.to_dict() for c in configs])
    for col in ("tau", "sam_steps", "data_seed"):  # optional fields: None -> NaN, one dtype per column
        summary[col] = pd.to_numeric(summary[col], errors="coerce").astype("float64")
    summary["tau_effective"] = ens.tau.cpu().numpy()
    summary["train_loss"] = F.softplus(-data.y * f).mean(1).cpu().numpy()
    summary["train_acc"] = (data.y * f > 0).to(ens.dtype).mean(1).cpu().numpy()
    summary["test_error"] = test_err.cpu().numpy()
    summary["test_error_se"] = test_se.cpu().numpy()
    if heldout and ens.c0.n_test > 0:
        summary["test_error_heldout"] = heldout_test_error(net, params, configs, ens.c0.n_test).cpu().numpy()
    summary["bayes_error"] = [c.flip_p for c in configs]
    summary["steps"] = ens.steps_done.cpu().numpy()
    tracker = CoefficientTracker(ens.init.W, ens.A, data) if track else None
    if tracker is not None and reconstruct:  # the decomposition of docs/science.md §4, rebuilt from gamma/rho
        err = (tracker.reconstruct(data) - params.W).flatten(1).abs().amax(1)
        summary["reconstruction_error"] = (err / params.W.flatten(1).abs().amax(1)).cpu().numpy()
    summary["diverged"] = ens.diverged.cpu().numpy()
    for col in ("train_loss", "train_acc", "test_error", "test_error_se", "test_error_heldout"):
        if col in summary:
            summary.loc[summary["diverged"], col] = np.nan
    return summary, params, tracker
