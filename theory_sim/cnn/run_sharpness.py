"""Sharpness of trained two-layer CNN runs, and the ``sharpness RUN_DIR`` verb.

Each run of an ensemble becomes an ``Objective`` of its own (the mean logistic training loss of that run as a function
of its filters and biases), on which the generic toolkit computes the top Hessian eigenvalues (Lanczos), the
Hutchinson trace, the cosine between the gradient and the top eigenvector, and the sharpness notions of [W23]:
R_Max (projected ascent on the rho-ball), R_Asc (SAM's direction, [F21]) and R_Avg (random directions).
The radius defaults to the run's [C23] SAM radius tau = c_tau m sqrt(B) / (P sigma_p sqrt(d)) — the same for the SGD
and SAM runs of one setting, so their numbers compare. Computed in float64.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from theory_sim.cnn.data import Batch
from theory_sim.cnn.deep import network_for
from theory_sim.cnn.model import Params, TwoLayerCNN
from theory_sim.config import ConfigError, check_float, check_int
from theory_sim.io import write_json
from theory_sim.sharpness import (
    Objective,
    grad_top_eigvec_cosine,
    hutchinson_trace,
    r_asc,
    r_avg,
    r_max,
    top_eigenvalues,
)


def run_objective(net: TwoLayerCNN, params: Params, data: Batch, r: int) -> Objective:
    """The training loss of run r as a function of [W_r] (or [W_r, b_r]), in float64."""
    one = data.run(r).to(torch.float64)
    point = [t[r].detach().to(torch.float64) for t in params.tensors()]

    def loss(ts):
        return net.loss(Params.from_tensors([t[None] for t in ts]), one)[0]

    return Objective.from_function(loss, point)


def sharpness_of_run(net: TwoLayerCNN, params: Params, data: Batch, r: int, rho: float, *, k: int = 3,
                     trace_samples: int = 64, avg_samples: int = 128, max_steps: int = 30, seed: int = 0) -> dict:
    obj = run_objective(net, params, data, r)
    eig = top_eigenvalues(obj, k=min(k, obj.dim), seed=seed)
    grad = obj.grad()
    gnorm = math.sqrt(sum(float((g ** 2).sum()) for g in grad))
    trace = hutchinson_trace(obj, trace_samples, seed=seed)
    avg = r_avg(obj, rho, avg_samples, seed=seed)
    return {"loss": float(obj.loss()), "grad_norm": gnorm, "lambda": [float(v) for v in eig.values],
            "lambda_1": float(eig.values[0]), "trace": trace.value, "trace_se": trace.stderr,
            "grad_top_eigvec_cosine": grad_top_eigvec_cosine(obj, v1=eig.vectors[0]) if gnorm > 0 else float("nan"),
            "rho": rho, "r_max": r_max(obj, rho, n_steps=max_steps, n_restarts=2, seed=seed),
            "r_asc": r_asc(obj, rho), "r_avg": avg.value, "r_avg_se": avg.stderr}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="output directory of `simulate`")
    p.add_argument("--rho", type=float, default=None, help="radius (default: each run's [C23] SAM radius tau)")
    p.add_argument("--k", type=int, default=3, help="top Hessian eigenvalues")
    p.add_argument("--trace-samples", type=int, default=64, help="Hutchinson probes for the Hessian trace")
    p.add_argument("--avg-samples", type=int, default=128, help="random directions for R_Avg")
    p.add_argument("--max-steps", type=int, default=30, help="projected-ascent steps per start for R_Max")


def run(args: argparse.Namespace) -> int:
    from theory_sim.cnn.simulate_verb import load_run

    if args.rho is not None:
        check_float("rho", args.rho, 0.0, lo_open=True)
    check_int("k", args.k, 1)
    check_int("trace_samples", args.trace_samples, 2)
    check_int("avg_samples", args.avg_samples, 2)
    check_int("max_steps", args.max_steps, 0)
    state = load_run(args.run_dir)
    configs, params, data = state["configs"], state["params"], state["data"]
    net = network_for(configs[0])   # the deep model too (its hidden weights in params.b)
    rows = []
    for r, cfg in enumerate(configs):
        rho = args.rho if args.rho is not None else cfg.sam_radius
        if rho <= 0:
            raise ConfigError(f"rho must be > 0; run {r} has SAM radius {rho} (pass --rho)")
        row = {"seed": cfg.seed, "optimizer": cfg.optimizer,
               **sharpness_of_run(net, params, data, r, rho, k=args.k, trace_samples=args.trace_samples,
                                  avg_samples=args.avg_samples, max_steps=args.max_steps, seed=cfg.seed)}
        rows.append(row)
        print(f"seed {cfg.seed}: lambda_1 {row['lambda_1']:.4g}, trace {row['trace']:.4g} +- {row['trace_se']:.2g}, "
              f"R_Max {row['r_max']:.3g}, R_Asc {row['r_asc']:.3g}, R_Avg {row['r_avg']:.3g} (rho {rho:.3g})")
    write_json(args.run_dir / "sharpness.json", {"runs": rows})
    return 0
