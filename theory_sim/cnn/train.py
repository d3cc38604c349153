"""SGD and the SAM family on the two-layer CNN, for R independent runs trained as ONE batched computation
[C23 Sec. 3-4] (docs/science.md §2-3).

Epoch t splits each run's data into H = n/B batches without replacement (its own permutation). At step (t, b):

    SGD:        W <- W - eta * grad L_I(W)
    SAM family: eps from the run's rule (``theory_sim.cnn.rules``), then W <- W - eta * grad L_I(W + eps)

``sam_steps=K`` runs the rule for the first K steps and plain SGD afterwards, the schedule of [C23]'s SAM result.
SGD and SAM-family runs share an ensemble (and a data set's matmul). Runs stop individually: at max epochs, once
their full training loss is <= loss_eps (checked after each epoch), or when they diverge (non-finite
pre-activations: the run is flagged ``diverged`` and frozen at its last finite weights). The state lives in
coefficient space or in weight space (``theory_sim.cnn.ensemble``; ``train_ensemble(..., state=)``): the same
numbers up to float round-off (tests/test_sam_family_cnn.py: <= 1e-10 relative).

The loop in ``train_ensemble`` reads top to bottom: pick the batch's basis columns, take the (perturbed) gradient,
step the state (freezing runs that diverge), log, and stop runs whose training loss is small enough.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from theory_sim.cnn.data import (
    Batch,
)
from theory_sim.cnn.ensemble import Ensemble, StepBatch, make_ensemble
from theory_sim.cnn.memorization import MEMORIZATION_COLUMNS, memorization_summaries
from theory_sim.cnn.model import Gradient, Params, finite_runs, logistic_loss
from theory_sim.cnn.rules import update_gradient
from theory_sim.cnn.estimators import (
    gaussian_test_error,
    gaussian_test_error_from_gram,
    heldout_test_error,
    standard_draws,
)
from theory_sim.cnn.tracker import CoefficientTracker
from theory_sim.config import (
    SimConfig,
)
from theory_sim.sam.perturbation import expand_runs


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


def select_batch(ens: Ensemble, epoch: int, i_batch: int) -> StepBatch:
    """The batch of step (epoch, i_batch): every run's own permutation (None: full batch)."""
    B = ens.B
    return ens.batch(None if ens.perms is None else ens.perms[:, epoch, i_batch * B:(i_batch + 1) * B])


def apply_step(ens: Ensemble, batch: StepBatch, grad: Gradient, finite: torch.Tensor) -> None:
    """A <- A - eta(t) * coefs on the batch's columns (stopped runs step by 0; eta(t) from the run's lr_schedule),
    and the same step on dense W in weight space. A run whose pre-activations were not finite has diverged: it is
    frozen at its last finite weights (the state before the last step)."""
    step_size = (ens.step_eta() * ens.active.to(ens.dtype))[:, None, None, None]
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


def stop_converged(ens: Ensemble, loss: torch.Tensor | None = None) -> None:
    """Early stopping on the full training loss, once per epoch (``loss``: that loss, when the caller has it)."""
    if loss is None:
        f, _ = ens.outputs()
        loss = logistic_loss(ens.data.y * f).mean(1)
    ens.active &= ~(loss <= ens.loss_eps)


class TrajectoryLog:
    """Per-run rows of summaries at each run's logged steps (``log_steps``), and gamma/rho snapshots.

    ``update_noise_active_frac`` is the fraction of noise pre-activations that are positive where the gradient is
    taken (W + eps for the SAM family: the quantity SAM switches off [C23]), averaged over the run's steps since its
    previous logged step. ``perturbed_loss`` = L_I(W + eps) and ``perturbed_loss_gain`` = L_I(W + eps) - L_I(W),
    on each update's batch at its update point, are averaged over the perturbed steps since the previous logged
    step (NaN where there were none: SGD, after the SAM -> SGD switch, step 0); so the row at step 1 is the first
    batch at initialisation. Everything in a row depends on the run alone, not on the ensemble it was trained in.
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
        self.perturbed_sum = torch.zeros(ens.R, dtype=ens.dtype, device=ens.device)   # L_I(W + eps)
        self.gain_sum = torch.zeros(ens.R, dtype=ens.dtype, device=ens.device)        # L_I(W + eps) - L_I(W)
        self.perturbed_count = torch.zeros(ens.R, dtype=ens.dtype, device=ens.device)
        self.rows: list[pd.DataFrame] = []
        self.snapshots: dict[str, list] = {"step": [], "gamma": [], "rho": []}
        self.logged_at = np.full(ens.R, -1)   # each run's last logged step
        self.prev_rho: torch.Tensor | None = None

    def add_update(self, grad: Gradient) -> None:
        self.active_sum += grad.noise_active
        self.active_count += 1
        point = self.ens.update_point
        on = point.perturbed.to(self.ens.dtype)
        self.perturbed_sum += torch.where(point.perturbed, grad.loss, 0.0)
        self.gain_sum += torch.where(point.perturbed, grad.loss - point.clean_loss, 0.0)
        self.perturbed_count += on

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
        f = ens.net.output_from_preactivations(sig, z, ens.mult, ens.b)
        memorized = memorization_summaries(ens.net, sig, z, ens.mult, ens.b, ens.data.y, ens.data.clean)
        cols = {"step": np.full(ens.R, step), "epoch": np.full(ens.R, epoch), "run": np.arange(ens.R),
                "seed": [c.seed for c in ens.configs], "optimizer": [c.optimizer for c in ens.configs],
                "train_loss": logistic_loss(ens.data.y * f).mean(1),
                "train_acc": (ens.data.y * f > 0).to(ens.dtype).mean(1),
                "test_error": self.test_error(wwt, w0),
                "lr": ens.step_eta(),                                # eta(t) of the run's next step
                "update_noise_active_frac": self.active_sum / self.active_count,  # 0/0 = NaN at step 0
                # NaN for SGD, after the SAM -> SGD switch and at step 0 (no perturbed update since the last log)
                "perturbed_loss": self.perturbed_sum / self.perturbed_count,
                "perturbed_loss_gain": self.gain_sum / self.perturbed_count,
                **memorized}
        mask = torch.as_tensor(rows, device=ens.device)
        for acc in (self.active_sum, self.active_count, self.perturbed_sum, self.gain_sum, self.perturbed_count):
            acc[mask] = 0
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
    step, plain = 0, None
    for epoch in range(c0.epochs):
        for i_batch in range(H):
            if plain is None:
                batch = select_batch(ens, epoch, i_batch)
            grad, finite = update_gradient(ens, batch, step, plain)
            plain = None
            apply_step(ens, batch, grad, finite)
            step += 1
            bar.update(1)
            if logger:
                logger.add_update(grad)
                if logger.any_due[step]:
                    logger.record(step, epoch + (i_batch + 1) / H)
        if H == 1 and epoch + 1 < c0.epochs:
            # full batch: the next step's gradient at W is taken on the whole training set, so its loss is the
            # stopping criterion (the same numbers): compute it once, for both
            batch = select_batch(ens, epoch + 1, 0)
            plain = ens.gradient(batch, batch.proj, batch.b)
            stop_converged(ens, plain.loss)
        else:
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


def final_weights(ens: Ensemble) -> tuple[Params, torch.Tensor, torch.Tensor, torch.Tensor]:
    """W materialised once, with its pre-activations (sig, z) and outputs f on the training set (what the summary
    reads: computed once here); a run whose last step produced non-finite weights is frozen at the previous ones.

    Non-finite means: in W itself (materialising W0 + A basis may overflow where the projections did not), in its
    pre-activations, or in its training outputs (finite pre-activations whose sum overflows). Such a run is flagged
    ``diverged`` (docs/science.md §3.3), also one that had stopped early (a loss of exactly 0 from infinite margins).
    So is a run whose weights are finite but out of the dtype's range: a filter's squared norm ||w_{j,r}||^2 (the
    diagonal of the Gram W W^T the test-error estimator needs, docs/science.md §5.1) overflows — e.g. one step of
    eta = 1e300. Its logged test errors are NaN from the step the Gram overflowed, and so is its summary."""
    data = ens.data
    params = ens.weights()
    sig, z = ens.net.preactivations(params, data)
    f = ens.net.output_from_preactivations(sig, z, data.noise_multiplicity, params.b)
    flat = params.W.flatten(1)
    w_max, w_min = flat.amax(1), flat.amin(1)   # W's extremes, read once: the finite check and the overflow bound
    bad = ~(finite_runs(z, sig, f, params.b) & torch.isfinite(w_max) & torch.isfinite(w_min))
    peak = torch.maximum(w_max, -w_min)
    if bool(bad.any()):
        previous = ens.weights(previous=True)
        ens.diverged |= bad
        ens.steps_done -= (bad & ens.active).long()
        params = Params.from_tensors([torch.where(expand_runs(bad, p), o, p)
                                      for p, o in zip(params.tensors(), previous.tensors())])
        sig, z = ens.net.preactivations(params, data)
        f = ens.net.output_from_preactivations(sig, z, data.noise_multiplicity, params.b)
        peak = None   # W changed for the frozen runs
    ens.diverged |= ~squared_norms_finite(params.W, peak)
    return params, sig, z, f


def squared_norms_finite(W: torch.Tensor, peak: torch.Tensor | None = None) -> torch.Tensor:
    """(R,) whether every filter's ||w||^2 = sum_k w_k^2 is finite in W's dtype. A run whose largest |entry| is
    below sqrt(max / (2 d)) cannot overflow (every partial sum stays below max / 2), so only the others' sums are
    computed — the same verdict as summing every run's squares, without a pass over W for almost every run.
    ``peak``: each run's largest |entry| when the caller has it."""
    if peak is None:
        flat = W.flatten(1)
        peak = torch.maximum(flat.amax(1), -flat.amin(1))
    sure = peak.double() < math.sqrt(torch.finfo(W.dtype).max / (2 * W.shape[-1]))   # NaN compares False: checked below
    ok = sure.clone()
    rest = (~sure).nonzero().flatten()
    if len(rest):
        ok[rest] = torch.isfinite(W[rest].pow(2).sum(-1)).flatten(1).all(1)
    return ok


def evaluate(ens: Ensemble, track: bool, heldout: bool,
             reconstruct: bool) -> tuple[pd.DataFrame, Params, CoefficientTracker | None]:
    """The summary table (one row per run): the config, training loss/accuracy, test errors, steps, divergence
    and the reconstruction error of W from gamma/rho."""
    configs, data, net = ens.configs, ens.data, ens.net
    params, sig, z, f = final_weights(ens)
    test_err, test_se = gaussian_test_error(net, params, configs, ens.c0.n_mc)
    # column by column (the same table as from one to_dict per run, built faster)
    summary = pd.DataFrame({name: [getattr(c, name) for c in configs] for name in SimConfig.field_names()})
    for col in ("tau", "sam_steps", "data_seed", "init_scale", "noise_step"):  # optional: None -> NaN, one dtype
        summary[col] = pd.to_numeric(summary[col], errors="coerce").astype("float64")
    summary["tau_effective"] = ens.tau.cpu().numpy()
    summary["train_loss"] = logistic_loss(data.y * f).mean(1).cpu().numpy()
    summary["train_acc"] = (data.y * f > 0).to(ens.dtype).mean(1).cpu().numpy()
    summary["test_error"] = test_err.cpu().numpy()
    summary["test_error_se"] = test_se.cpu().numpy()
    if heldout and ens.c0.n_test > 0:
        summary["test_error_heldout"] = heldout_test_error(net, params, configs, ens.c0.n_test).cpu().numpy()
    summary["bayes_error"] = [c.flip_p for c in configs]
    summary["steps"] = ens.steps_done.cpu().numpy()
    for col, value in memorization_summaries(net, sig, z, data.noise_multiplicity, params.b, data.y,
                                             data.clean).items():
        summary[col] = value.cpu().numpy()
    tracker = CoefficientTracker(ens.init.W, ens.A, data) if track else None
    if tracker is not None and reconstruct:  # the decomposition of docs/science.md §4, rebuilt from gamma/rho
        err = (tracker.reconstruct(data) - params.W).flatten(1).abs().amax(1)
        summary["reconstruction_error"] = (err / params.W.flatten(1).abs().amax(1)).cpu().numpy()
    summary["diverged"] = ens.diverged.cpu().numpy()
    for col in ("train_loss", "train_acc", "test_error", "test_error_se", "test_error_heldout",
                *MEMORIZATION_COLUMNS):
        if col in summary:
            summary.loc[summary["diverged"], col] = np.nan
    return summary, params, tracker
