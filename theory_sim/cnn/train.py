"""SGD and SAM on the two-layer CNN, for R independent runs trained as ONE batched computation [C23 Sec. 3-4].

Epoch t splits each run's data into H = n/B batches without replacement (its own permutation). At step (t, b):

    SGD:  W <- W - eta * grad L_I(W)
    SAM:  eps = tau * grad L_I(W) / ||grad L_I(W)||_F   (norm over the 2m filters, and biases, of THIS run)
          W <- W - eta * grad L_I(W + eps)

``sam_steps=K`` runs SAM for the first K steps and plain SGD afterwards, the schedule of [C23]'s SAM result. Runs
stop individually: at max epochs, once their full training loss is <= loss_eps (checked after each epoch), or when
they diverge (non-finite weights: the run is flagged ``diverged`` and frozen at its last finite weights).

The perturbation uses the SAM-family rule of ``theory_sim.sam.perturbation`` with one radius per run, so SGD runs
(radius 0) and SAM runs share an ensemble.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from theory_sim.cnn.data import STREAM_BATCHES, Batch, generate_for, run_rng
from theory_sim.cnn.model import Params, TwoLayerCNN
from theory_sim.cnn.test_error import (
    gaussian_test_error,
    gaussian_test_error_from_gram,
    heldout_test_error,
    standard_draws,
)
from theory_sim.cnn.tracker import CoefficientTracker
from theory_sim.config import STRUCTURAL_FIELDS, ConfigError, SimConfig, device_of
from theory_sim.sam.perturbation import perturbation

TRAJECTORY_MC = 2000  # Gaussian draws per logged test error (the final one uses the config's n_mc)


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


def _batch_schedule(configs, epochs: int, n: int, B: int) -> np.ndarray | None:
    """(R, epochs, n) per-run permutations; None for full batch (no permutation needed)."""
    if B == n:
        return None
    out = np.empty((len(configs), epochs, n), dtype=np.int64)
    for r, c in enumerate(configs):
        rng = run_rng(c.seed, STREAM_BATCHES)
        for t in range(epochs):
            out[r, t] = rng.permutation(n)
    return out


def train_ensemble(configs: list[SimConfig], *, track: bool = True, log: bool = True,
                   progress: bool | None = None, heldout: bool = True) -> EnsembleResult:
    """Train every run in ``configs`` (sharing the structural fields) and evaluate it.

    track: log gamma/rho summaries and snapshots.  log: record a trajectory every ``log_every`` steps (train loss,
    test error, coefficient summaries).  heldout: also estimate the test error on ``n_test`` fresh samples.

    The weights are kept as W = W0 + A @ basis, basis = [e_1, xi_11, ..., xi_nK] (every gradient lies in its span,
    SPEC 4), and training updates only the coefficients A (R, 2, m, 1 + n K). With the Gram matrix G = basis
    basis^T and the initial projections P0 = W0 basis^T, the projections of W are P0 + A G, so a step costs
    O(R m (nK)^2) whatever d is; W itself is materialised once, at the end. SAM's perturbation lives in the same
    span: ||grad||^2 = sum_r C_r G C_r^T and the perturbed projections are P + eps_C G.
    """
    from tqdm.auto import tqdm

    check_ensemble(configs)
    c0 = configs[0]
    dtype, device = getattr(torch, c0.dtype), device_of(c0.device)
    R, n, B, m = len(configs), c0.n, c0.batch_size, c0.m
    net = TwoLayerCNN.for_config(c0)
    data = generate_for(configs, dtype=dtype, device=device)
    init = net.init([c.seed for c in configs], [c.sigma_0 for c in configs], c0.d, dtype, device)
    U, G, K, mult = data.U, data.G, data.K, data.noise_multiplicity
    vec = lambda vals, dt=dtype: torch.tensor(vals, dtype=dt, device=device)  # noqa: E731
    eta = vec([c.eta for c in configs])
    tau = vec([c.sam_radius if c.optimizer == "sam" else 0.0 for c in configs])
    sam_until = vec([(math.inf if c.sam_steps is None else c.sam_steps) if c.optimizer == "sam" else 0
                     for c in configs], torch.float64)
    loss_eps = vec([c.loss_eps for c in configs])
    # runs sharing a data set share its seed, hence its batch order: one schedule per data set
    perms = _batch_schedule(configs[::G], c0.epochs, n, B)
    perms_t = None if perms is None else torch.as_tensor(perms, device=device)

    def group_mm(X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """X (R, 2, m, c) @ M (U, c, c'): run r uses the matrix of its data set."""
        return torch.bmm(X.reshape(U, G * 2 * m, X.shape[-1]), M).reshape(R, 2, m, M.shape[-1])

    gram = data.basis @ data.basis.transpose(1, 2)                               # (U, 1 + nK, 1 + nK)
    P0 = net.projections(init, data)                                              # (R, 2, m, 1 + nK)
    W0 = init.W.reshape(R, 2 * m, -1)
    W0_gram = W0 @ W0.transpose(1, 2)                                             # for the test error
    basis_col0 = data.basis[..., :1]                                              # (U, 1 + nK, 1): e_1 coordinate
    A = torch.zeros_like(P0)
    b = None if init.b is None else init.b.clone()
    prev_A, prev_b = A, b

    def preactivations(proj, bias, yhat):
        return net.preactivations_from_projections(proj, bias, data.mu_norm, yhat, K)

    active = torch.ones(R, dtype=torch.bool, device=device)
    diverged = torch.zeros(R, dtype=torch.bool, device=device)
    steps_done = torch.zeros(R, dtype=torch.long, device=device)
    rows: list[pd.DataFrame] = []
    snapshots: dict[str, list] = {"step": [], "gamma": [], "rho": []}
    draws = standard_draws(configs, min(TRAJECTORY_MC, c0.n_mc), K, 2 * m, dtype, device) if log else None

    # fraction of noise terms that are active where the gradient is taken (W + eps for SAM, the quantity SAM
    # switches off [C23]), averaged over the steps since the last log
    update_active = {"sum": torch.zeros(R, dtype=dtype, device=device), "count": 0}

    def record(step: int, epoch: float) -> None:
        AG = group_mm(A, gram)
        sig, z = preactivations(P0 + AG, b, data.yhat)
        f = net.output_from_preactivations(sig, z, mult)
        # W Pi W^T from small matrices: W W^T = W0 W0^T + P0 A^T + A P0^T + A G A^T, and w_1 = W0_1 + A e_1-coords
        Pf, Af = P0.reshape(R, 2 * m, -1), A.reshape(R, 2 * m, -1)
        AGf = AG.reshape(R, 2 * m, -1)
        wwt = W0_gram + Pf @ Af.transpose(1, 2) + Af @ Pf.transpose(1, 2) + AGf @ Af.transpose(1, 2)
        w0 = init.W[..., 0] + group_mm(A, basis_col0)[..., 0]
        if c0.project_noise:
            wwt = wwt - w0.reshape(R, 2 * m, 1) * w0.reshape(R, 1, 2 * m)
        cols = {"step": np.full(R, step), "epoch": np.full(R, epoch), "run": np.arange(R),
                "seed": [c.seed for c in configs], "optimizer": [c.optimizer for c in configs],
                "train_loss": torch.nn.functional.softplus(-data.y * f).mean(1),
                "train_acc": (data.y * f > 0).to(dtype).mean(1),
                "test_error": gaussian_test_error_from_gram(net, wwt, w0, b, configs, 0, draws=draws)[0]}
        cols["update_noise_active_frac"] = (update_active["sum"] / update_active["count"] if update_active["count"]
                                            else torch.full((R,), float("nan"), dtype=dtype))
        update_active["sum"].zero_()
        update_active["count"] = 0
        if track:
            tracker = CoefficientTracker(init.W, A, data)
            cols.update(tracker.summaries(z))
            snapshots["step"].append(step)
            snapshots["gamma"].append(tracker.gamma.cpu().numpy().copy())
            snapshots["rho"].append(tracker.rho.cpu().numpy().copy())
        rows.append(pd.DataFrame({k: v.cpu().numpy() if torch.is_tensor(v) else v for k, v in cols.items()}))

    H = n // B
    total = c0.total_steps
    bar = tqdm(total=total, desc=f"train d={c0.d} R={R}", disable=(not progress) if progress is not None else None,
               leave=False)
    if log:
        record(0, 0)
    step = 0
    for epoch in range(c0.epochs):
        for i_batch in range(H):
            if perms_t is None:  # full batch: every basis column
                cols, gram_b, proj = None, gram, P0 + group_mm(A, gram)
                y_b, yhat_b = data.y, data.yhat
            else:  # the batch's columns of the basis: e_1 and its samples' noise vectors
                idx = perms_t[:, epoch, i_batch * B:(i_batch + 1) * B]                  # (U, B)
                noise_cols = 1 + (idx[..., None] * K + torch.arange(K, device=device)).reshape(U, B * K)
                cols = torch.cat([torch.zeros_like(idx[:, :1]), noise_cols], 1)       # (U, 1 + BK)
                cols_g = cols[:, None, :].expand(U, gram.shape[1], cols.shape[1])
                gram_cb = torch.gather(gram, 2, cols_g)                               # (U, 1 + nK, 1 + BK)
                gram_b = torch.gather(gram_cb, 1, cols[:, :, None].expand(U, cols.shape[1], cols.shape[1]))
                cols_r = cols.repeat_interleave(G, 0)[:, None, None, :].expand(R, 2, m, cols.shape[1])
                proj = torch.gather(P0, 3, cols_r) + group_mm(A, gram_cb)
                idx_r = idx.repeat_interleave(G, 0)
                y_b, yhat_b = torch.gather(data.y, 1, idx_r), torch.gather(data.yhat, 1, idx_r)
            grad = net.gradient(*preactivations(proj, b, yhat_b), y_b, yhat_b, data.mu_norm, mult, b is not None)
            finite = grad.finite
            use_sam = (sam_until > step).to(dtype) * active.to(dtype)
            if bool((use_sam * tau > 0).any()):
                # ||grad||^2 = sum over filters of C G C^T (+ ||db||^2): the norm of the gradient, not of C
                sq = (group_mm(grad.coefs, gram_b) * grad.coefs).sum(dim=(1, 2, 3))
                if grad.db is not None:
                    sq = sq + grad.db.pow(2).sum(dim=(1, 2))
                eps = perturbation("sam", grad.coefficient_tensors(), tau * use_sam, batch_dims=1,
                                   norm=sq.clamp(min=0).sqrt())
                b_pert = None if b is None else b + eps[1]
                grad = net.gradient(*preactivations(proj + group_mm(eps[0], gram_b), b_pert, yhat_b), y_b, yhat_b,
                                    data.mu_norm, mult, b is not None)
                finite = finite & grad.finite
            update_active["sum"] += grad.noise_active
            update_active["count"] += 1
            step_size = (eta * active.to(dtype))[:, None, None, None]   # stopped runs step by 0
            delta = -step_size * torch.nan_to_num(grad.coefs)            # (a NaN step is caught below)
            if cols is None:
                new_A = A + delta
            else:
                new_A = A.scatter_add(3, cols_r, delta)
            new_b = None if b is None else b - step_size[..., 0] * torch.nan_to_num(grad.db)
            if not bool(finite.all()):
                # W_t gave non-finite pre-activations: the run diverged. Freeze it at its last finite weights
                # W_{t-1} (the coefficients before the last step).
                bad = ~finite
                diverged |= active & bad
                active &= ~bad
                new_A[bad] = prev_A[bad]
                if new_b is not None:
                    new_b[bad] = prev_b[bad]
            prev_A, prev_b = A, b
            A, b = new_A, new_b
            steps_done += active.long()
            step += 1
            bar.update(1)
            if log and step % c0.log_every == 0:
                record(step, epoch + (i_batch + 1) / H)
        # early stopping on the full training loss, once per epoch
        sig, z = preactivations(P0 + group_mm(A, gram), b, data.yhat)
        full_loss = torch.nn.functional.softplus(-data.y * net.output_from_preactivations(sig, z, mult)).mean(1)
        active &= ~(full_loss <= loss_eps)
        if not bool(active.any()):
            break
    bar.close()
    if log and step % c0.log_every != 0:
        record(step, c0.epochs if step == total else step / H)

    # the weights, materialised once
    params = Params(init.W + group_mm(A, data.basis), b)
    previous = Params(init.W + group_mm(prev_A, data.basis), prev_b)
    tracker = CoefficientTracker(init.W, A, data) if track else None

    # final evaluation; a run whose last step produced non-finite weights is frozen at the previous ones
    sig, z = net.preactivations(params, data)
    bad = ~(torch.isfinite(z).flatten(1).all(1) & torch.isfinite(sig).flatten(1).all(1))
    if bool(bad.any()):
        diverged |= bad & active
        steps_done -= (bad & active).long()
        params = Params.from_tensors([torch.where(bad.reshape(-1, *([1] * (p.dim() - 1))), o, p)
                                      for p, o in zip(params.tensors(), previous.tensors())])
    f = net.output(params, data)
    test_err, test_se = gaussian_test_error(net, params, configs, c0.n_mc)
    summary = pd.DataFrame([c.to_dict() for c in configs])
    for col in ("tau", "sam_steps"):  # optional fields: None -> NaN, so every table has one dtype per column
        summary[col] = pd.to_numeric(summary[col], errors="coerce").astype("float64")
    summary["tau_effective"] = tau.cpu().numpy()
    summary["train_loss"] = torch.nn.functional.softplus(-data.y * f).mean(1).cpu().numpy()
    summary["train_acc"] = (data.y * f > 0).to(dtype).mean(1).cpu().numpy()
    summary["test_error"] = test_err.cpu().numpy()
    summary["test_error_se"] = test_se.cpu().numpy()
    if heldout and c0.n_test > 0:
        summary["test_error_heldout"] = heldout_test_error(net, params, configs, c0.n_test).cpu().numpy()
    summary["bayes_error"] = [c.flip_p for c in configs]
    summary["steps"] = steps_done.cpu().numpy()
    if tracker is not None:  # SPEC 4's decomposition, rebuilt from gamma and rho, against the trained weights
        err = (tracker.reconstruct(data) - params.W).flatten(1).abs().amax(1)
        summary["reconstruction_error"] = (err / params.W.flatten(1).abs().amax(1)).cpu().numpy()
    summary["diverged"] = diverged.cpu().numpy()
    for col in ("train_loss", "train_acc", "test_error", "test_error_se", "test_error_heldout"):
        if col in summary:
            summary.loc[summary["diverged"], col] = np.nan
    coefficients = {}
    if tracker is not None and snapshots["step"]:
        coefficients = {"step": np.asarray(snapshots["step"]), "gamma": np.stack(snapshots["gamma"]),
                        "rho": np.stack(snapshots["rho"]), "y": data.y.cpu().numpy(),
                        "yhat": data.yhat.cpu().numpy()}
    trajectory = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return EnsembleResult(list(configs), summary, trajectory, params, init, data, coefficients, tracker)
