"""SGD and SAM on the two-layer CNN, for R independent runs trained as ONE batched computation [C23 Sec. 3-4]
(docs/science.md §2-3).

Epoch t splits each run's data into H = n/B batches without replacement (its own permutation). At step (t, b):

    SGD:  W <- W - eta * grad L_I(W)
    SAM:  eps = tau * grad L_I(W) / ||grad L_I(W)||_F   (norm over the 2m filters, and biases, of THIS run)
          W <- W - eta * grad L_I(W + eps)

``sam_steps=K`` runs SAM for the first K steps and plain SGD afterwards, the schedule of [C23]'s SAM result. Runs
stop individually: at max epochs, once their full training loss is <= loss_eps (checked after each epoch), or when
they diverge (non-finite weights: the run is flagged ``diverged`` and frozen at its last finite weights).

The weights are kept as W = W0 + A @ basis, basis = [e_1, xi_11, ..., xi_nK] (every gradient lies in its span,
docs/science.md §4), and training updates only the coefficients A (R, 2, m, 1 + n K). With the Gram matrix
G = basis basis^T and the initial projections P0 = W0 basis^T, the projections of W are P0 + A G, so a step costs
O(R m (nK)^2) whatever d is; W itself is materialised once, at the end. SAM's perturbation lives in the same span:
||grad||^2 = sum_r C_r G C_r^T and the perturbed projections are P + eps_C G. The perturbation uses the SAM-family
rule of ``theory_sim.sam.perturbation`` with one radius per run, so SGD runs (radius 0) and SAM runs share an
ensemble.

The loop in ``train_ensemble`` reads top to bottom: pick the batch's basis columns, take the (perturbed) gradient,
step the coefficients (freezing runs that diverge), log, and stop runs whose training loss is small enough.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from theory_sim.cnn.data import STREAM_BATCHES, Batch, generate_for, run_rng
from theory_sim.cnn.model import Gradient, Params, TwoLayerCNN
from theory_sim.cnn.test_error import (
    gaussian_test_error,
    gaussian_test_error_from_gram,
    heldout_test_error,
    standard_draws,
)
from theory_sim.cnn.tracker import CoefficientTracker
from theory_sim.config import STRUCTURAL_FIELDS, ConfigError, SimConfig, device_of
from theory_sim.sam.perturbation import perturbation


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
        if cfg.optimizer == "sam" and cfg.sam_steps is not None and 0 < cfg.sam_steps < total:
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


class Ensemble:
    """The state of R runs in coefficient space (W = W0 + A @ basis) and the fixed quantities a step needs."""

    def __init__(self, configs: list[SimConfig]):
        check_ensemble(configs)
        c0 = self.c0 = configs[0]
        self.configs = list(configs)
        self.dtype, self.device = getattr(torch, c0.dtype), device_of(c0.device)
        self.R, self.n, self.B, self.m = len(configs), c0.n, c0.batch_size, c0.m
        self.net = TwoLayerCNN.for_config(c0)
        self.data = data = generate_for(configs, dtype=self.dtype, device=self.device)
        self.init = self.net.init([c.rng_seed for c in configs], [c.sigma_0 for c in configs], c0.d, self.dtype,
                                  self.device)
        self.U, self.G, self.K, self.mult = data.U, data.G, data.K, data.noise_multiplicity
        self.eta = self.vector([c.eta for c in configs])
        self.tau = self.vector([c.sam_radius if c.optimizer == "sam" else 0.0 for c in configs])
        self.sam_until = self.vector([(math.inf if c.sam_steps is None else c.sam_steps) if c.optimizer == "sam"
                                      else 0 for c in configs], torch.float64)
        self.loss_eps = self.vector([c.loss_eps for c in configs])
        # runs sharing a data set share its seed, hence its batch order: one schedule per data set
        perms = _batch_schedule(configs[::self.G], c0.epochs, self.n, self.B)
        self.perms = None if perms is None else torch.as_tensor(perms, device=self.device)
        self.gram = data.basis @ data.basis.transpose(1, 2)                         # (U, 1 + nK, 1 + nK)
        self.P0 = self.net.projections(self.init, data)                            # (R, 2, m, 1 + nK)
        self.A = torch.zeros_like(self.P0)
        self.b = None if self.init.b is None else self.init.b.clone()
        self.prev_A, self.prev_b = self.A, self.b
        self.active = torch.ones(self.R, dtype=torch.bool, device=self.device)
        self.diverged = torch.zeros(self.R, dtype=torch.bool, device=self.device)
        self.steps_done = torch.zeros(self.R, dtype=torch.long, device=self.device)

    def vector(self, values, dtype=None) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype or self.dtype, device=self.device)

    def group_mm(self, X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """X (R, 2, m, c) @ M (U, c, c'): run r uses the matrix of its data set."""
        return torch.bmm(X.reshape(self.U, self.G * 2 * self.m, X.shape[-1]), M).reshape(self.R, 2, self.m,
                                                                                         M.shape[-1])

    def preactivations(self, proj: torch.Tensor, bias, yhat) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.preactivations_from_projections(proj, bias, self.data.mu_norm, yhat, self.K)

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """f on the whole training set at the current W (R, n), and the noise pre-activations (R, 2, m, n, K)."""
        sig, z = self.preactivations(self.P0 + self.group_mm(self.A, self.gram), self.b, self.data.yhat)
        return self.net.output_from_preactivations(sig, z, self.mult), z

    def gradient(self, batch: "StepBatch", proj: torch.Tensor, bias) -> Gradient:
        return self.net.gradient(*self.preactivations(proj, bias, batch.yhat), batch.y, batch.yhat,
                                 self.data.mu_norm, self.mult, bias is not None)


@dataclass
class StepBatch:
    """One step's batch in coefficient space: the projections of W on the batch's basis columns and their Gram."""

    cols: torch.Tensor | None    # (R, 2, m, 1 + BK) basis columns of the batch (None: full batch, every column)
    gram: torch.Tensor           # (U, 1 + BK, 1 + BK)
    proj: torch.Tensor           # (R, 2, m, 1 + BK)
    y: torch.Tensor              # (R, B)
    yhat: torch.Tensor           # (R, B)


def select_batch(ens: Ensemble, epoch: int, i_batch: int) -> StepBatch:
    """The columns e_1 and the batch samples' noise vectors; a full batch uses every column (no gather)."""
    data, U, K, B = ens.data, ens.U, ens.K, ens.B
    if ens.perms is None:
        return StepBatch(None, ens.gram, ens.P0 + ens.group_mm(ens.A, ens.gram), data.y, data.yhat)
    idx = ens.perms[:, epoch, i_batch * B:(i_batch + 1) * B]                       # (U, B)
    noise_cols = 1 + (idx[..., None] * K + torch.arange(K, device=ens.device)).reshape(U, B * K)
    cols = torch.cat([torch.zeros_like(idx[:, :1]), noise_cols], 1)                # (U, 1 + BK)
    gram_cb = torch.gather(ens.gram, 2, cols[:, None, :].expand(U, ens.gram.shape[1], cols.shape[1]))
    gram_b = torch.gather(gram_cb, 1, cols[:, :, None].expand(U, cols.shape[1], cols.shape[1]))
    cols_r = cols.repeat_interleave(ens.G, 0)[:, None, None, :].expand(ens.R, 2, ens.m, cols.shape[1])
    proj = torch.gather(ens.P0, 3, cols_r) + ens.group_mm(ens.A, gram_cb)
    idx_r = idx.repeat_interleave(ens.G, 0)
    return StepBatch(cols_r, gram_b, proj, torch.gather(data.y, 1, idx_r), torch.gather(data.yhat, 1, idx_r))


def update_gradient(ens: Ensemble, batch: StepBatch, step: int) -> tuple[Gradient, torch.Tensor]:
    """The gradient each run steps with (at W for SGD, at W + eps for SAM) and whether its pre-activations at W
    and at the update point were finite."""
    grad = ens.gradient(batch, batch.proj, ens.b)
    finite = grad.finite
    radius = ens.tau * ((ens.sam_until > step) & ens.active).to(ens.dtype)
    if not bool((radius > 0).any()):
        return grad, finite
    # ||grad||^2 = sum over filters of C G C^T (+ ||db||^2): the norm of the gradient, not of its coefficients
    sq = (ens.group_mm(grad.coefs, batch.gram) * grad.coefs).sum(dim=(1, 2, 3))
    if grad.db is not None:
        sq = sq + grad.db.pow(2).sum(dim=(1, 2))
    eps = perturbation("sam", grad.coefficient_tensors(), radius, batch_dims=1, norm=sq.clamp(min=0).sqrt())
    b_pert = None if ens.b is None else ens.b + eps[1]
    grad = ens.gradient(batch, batch.proj + ens.group_mm(eps[0], batch.gram), b_pert)
    return grad, finite & grad.finite


def apply_step(ens: Ensemble, batch: StepBatch, grad: Gradient, finite: torch.Tensor) -> None:
    """A <- A - eta * coefs on the batch's columns (stopped runs step by 0). A run whose pre-activations were not
    finite has diverged: it is frozen at its last finite weights (the coefficients before the last step)."""
    step_size = (ens.eta * ens.active.to(ens.dtype))[:, None, None, None]
    delta = -step_size * torch.nan_to_num(grad.coefs)                   # (a NaN step is caught below)
    new_A = ens.A + delta if batch.cols is None else ens.A.scatter_add(3, batch.cols, delta)
    new_b = None if ens.b is None else ens.b - step_size[..., 0] * torch.nan_to_num(grad.db)
    if not bool(finite.all()):
        bad = ~finite
        ens.diverged |= ens.active & bad
        ens.active &= ~bad
        new_A[bad] = ens.prev_A[bad]
        if new_b is not None:
            new_b[bad] = ens.prev_b[bad]
    ens.prev_A, ens.prev_b = ens.A, ens.b
    ens.A, ens.b = new_A, new_b
    ens.steps_done += ens.active.long()


def stop_converged(ens: Ensemble) -> None:
    """Early stopping on the full training loss, once per epoch."""
    f, _ = ens.outputs()
    ens.active &= ~(F.softplus(-ens.data.y * f).mean(1) <= ens.loss_eps)


class TrajectoryLog:
    """Per-run rows of summaries at each run's logged steps (``log_steps``), and gamma/rho snapshots.

    ``update_noise_active_frac`` is the fraction of noise pre-activations that are positive where the gradient is
    taken (W + eps for SAM: the quantity SAM switches off [C23]), averaged over the run's steps since its previous
    logged step. Everything in a row depends on the run alone, not on the ensemble it was trained in.
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
        self.W0_gram = ens.init.W.reshape(ens.R, 2 * ens.m, -1) @ ens.init.W.reshape(ens.R, 2 * ens.m, -1).mT
        self.active_sum = torch.zeros(ens.R, dtype=ens.dtype, device=ens.device)
        self.active_count = torch.zeros(ens.R, dtype=ens.dtype, device=ens.device)
        self.rows: list[pd.DataFrame] = []
        self.snapshots: dict[str, list] = {"step": [], "gamma": [], "rho": []}
        self.logged_at = np.full(ens.R, -1)   # each run's last logged step
        self.prev_rho: torch.Tensor | None = None

    def add_update(self, grad: Gradient) -> None:
        self.active_sum += grad.noise_active
        self.active_count += 1

    def test_error(self, AG: torch.Tensor) -> torch.Tensor:
        """Gaussian test error from W Pi W^T built out of small matrices: W W^T = W0 W0^T + P0 A^T + A P0^T +
        A G A^T, and w_1 = W0_1 + A e_1-coordinates (docs/science.md §5)."""
        ens = self.ens
        R, m = ens.R, ens.m
        if self.draws is None:  # trajectory_mc = 0: not estimated along the trajectory
            return torch.full((R,), float("nan"), dtype=ens.dtype, device=ens.device)
        Pf, Af, AGf = (t.reshape(R, 2 * m, -1) for t in (ens.P0, ens.A, AG))
        wwt = self.W0_gram + Pf @ Af.mT + Af @ Pf.mT + AGf @ Af.mT
        w0 = ens.init.W[..., 0] + ens.group_mm(ens.A, ens.data.basis[..., :1])[..., 0]
        if ens.c0.project_noise:
            wwt = wwt - w0.reshape(R, 2 * m, 1) * w0.reshape(R, 1, 2 * m)
        return gaussian_test_error_from_gram(ens.net, wwt, w0, ens.b, ens.configs, 0, draws=self.draws)[0]

    def record(self, step: int, epoch: float, force: bool = False) -> None:
        """Log the runs due at ``step`` (every run with ``force``: the last step of an early-stopped ensemble)."""
        rows = (self.logged_at != step) if force else self.due[:, step]
        if not rows.any():
            return
        self.logged_at[rows] = step
        ens = self.ens
        AG = ens.group_mm(ens.A, ens.gram)
        sig, z = ens.preactivations(ens.P0 + AG, ens.b, ens.data.yhat)
        f = ens.net.output_from_preactivations(sig, z, ens.mult)
        cols = {"step": np.full(ens.R, step), "epoch": np.full(ens.R, epoch), "run": np.arange(ens.R),
                "seed": [c.seed for c in ens.configs], "optimizer": [c.optimizer for c in ens.configs],
                "train_loss": F.softplus(-ens.data.y * f).mean(1),
                "train_acc": (ens.data.y * f > 0).to(ens.dtype).mean(1),
                "test_error": self.test_error(AG),
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
                   reconstruct: bool | None = None) -> EnsembleResult:
    """Train every run in ``configs`` (sharing the structural fields) and evaluate it.

    track: gamma/rho summaries and snapshots in the log.  log: record a trajectory at each run's ``log_steps``
    (train loss, test error, coefficient summaries).  heldout: also estimate the test error on ``n_test`` fresh
    samples.  reconstruct (default: track): rebuild W from gamma/rho and report ``reconstruction_error``.
    """
    from tqdm.auto import tqdm

    ens = Ensemble(configs)
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
    return EnsembleResult(ens.configs, summary, trajectory, params, ens.init, ens.data, coefficients, tracker)


def final_weights(ens: Ensemble) -> Params:
    """W materialised once; a run whose last step produced non-finite weights is frozen at the previous ones.

    Non-finite means: in W itself (materialising W0 + A basis may overflow where the projections did not), in its
    pre-activations, or in its training outputs (finite pre-activations whose sum overflows). Such a run is flagged
    ``diverged`` (docs/science.md §3.3), also one that had stopped early (a loss of exactly 0 from infinite margins).
    So is a run whose weights are finite but out of the dtype's range: a filter's squared norm ||w_{j,r}||^2 (the
    diagonal of the Gram W W^T the test-error estimator needs, docs/science.md §5.1) overflows — e.g. one step of
    eta = 1e300. Its logged test errors are NaN from the step the Gram overflowed, and so is its summary."""
    init, data = ens.init, ens.data
    params = Params(init.W + ens.group_mm(ens.A, data.basis), ens.b)
    sig, z = ens.net.preactivations(params, data)
    f = ens.net.output_from_preactivations(sig, z, data.noise_multiplicity)
    bad = ~(torch.isfinite(z).flatten(1).all(1) & torch.isfinite(sig).flatten(1).all(1)
            & torch.isfinite(f).all(1) & torch.stack([torch.isfinite(t).flatten(1).all(1)
                                                      for t in params.tensors()]).all(0))
    if bool(bad.any()):
        previous = Params(init.W + ens.group_mm(ens.prev_A, data.basis), ens.prev_b)
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
