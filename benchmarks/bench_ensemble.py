"""R runs of one sweep row as ONE batched computation vs a per-run nn.Module + autograd + torch.optim loop.

Both train the same configs (same data, init and batch order) in this process; the script checks they reach the
same weights, then prints the speed ratio. Target: >= 20x at d=1000, R=100 on a 2-core CPU.

``--rules``: the step cost of every SAM-family rule relative to SGD in coefficient space (targets: <= 2.2x for
sam, usam and randsam, <= (K + 1.2)x for msam with K ascent steps), and each rule's cost on the weight-space path
(dense W, needed by asam and sam with norm inf), as a table. Steps only: setup and evaluation are not timed.

    python benchmarks/bench_ensemble.py [--d 1000] [--runs 100] [--optimizer sgd|sam] [--baseline-runs 10]
    python benchmarks/bench_ensemble.py --rules [--d 1000] [--runs 100] [--steps 200]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from theory_sim.cnn.data import generate_for
from theory_sim.cnn.ensemble import make_ensemble
from theory_sim.cnn.model import TwoLayerCNN
from theory_sim.cnn.reference import train_reference
from theory_sim.cnn.rules import update_gradient
from theory_sim.cnn.train import apply_step, select_batch, train_ensemble
from theory_sim.config import SimConfig

# (label, SimConfig overrides, target ratio to SGD in coefficient space or None)
RULES = [
    ("sgd", dict(optimizer="sgd"), None),
    ("sam", dict(optimizer="sam"), 2.2),
    ("usam", dict(optimizer="usam"), 2.2),
    ("randsam", dict(optimizer="randsam"), 2.2),
    ("msam K=2", dict(optimizer="msam", ascent_steps=2), 3.2),
    ("msam K=3", dict(optimizer="msam", ascent_steps=3), 4.2),
    ("sam m=1", dict(optimizer="sam", m_sharpness=1), None),
    ("sam norm=inf", dict(optimizer="sam", norm="inf", tau=1e-3), None),
    ("asam", dict(optimizer="asam"), None),
]


def step_seconds(cfgs, state: str, steps: int, repeats: int = 3) -> float:
    """Seconds per training step (select_batch + update_gradient + apply_step), best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        ens = make_ensemble(cfgs, state)
        H = ens.n // ens.B
        for s in range(3):  # warm-up
            batch = select_batch(ens, 0, s % H)
            apply_step(ens, batch, *update_gradient(ens, batch, s))
        t0 = time.perf_counter()
        for s in range(steps):
            epoch, i = divmod(s, H)
            batch = select_batch(ens, epoch % ens.c0.epochs, i)
            apply_step(ens, batch, *update_gradient(ens, batch, s))
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def rules_table(args) -> None:
    mus = np.linspace(0.5, 5.0, args.runs)
    base = SimConfig(d=args.d, epochs=args.epochs, batch_size=args.batch_size, dtype=args.dtype, n_test=0, n_mc=1000)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, d={args.d}, R={args.runs}, "
          f"B={args.batch_size}, n={base.n}, {args.dtype}; ms per step, best of 3 x {args.steps} steps")
    rows, sgd = [], None
    for label, overrides, target in RULES:
        cfgs = [base.replace(mu_norm=float(mu), seed=r, **overrides) for r, mu in enumerate(mus)]
        coef = None if cfgs[0].rule in ("sam_inf", "asam") else step_seconds(cfgs, "coefficients", args.steps)
        dense = step_seconds(cfgs, "weights", max(args.steps // 4, 10))
        sgd = coef if label == "sgd" else sgd
        rows.append((label, coef, dense, target))
    print(f"{'rule':<14}{'coefficients':>14}{'x SGD':>8}{'target':>9}{'weights':>11}{'x SGD':>8}")
    for label, coef, dense, target in rows:
        c = f"{1e3 * coef:14.3f}{coef / sgd:8.2f}" if coef is not None else f"{'-':>14}{'-':>8}"
        t = f"{'<= ' + format(target, '.1f'):>9}" if target else f"{'':>9}"
        ok = "" if target is None or coef is None else ("  ok" if coef / sgd <= target else "  MISSED")
        print(f"{label:<14}{c}{t}{1e3 * dense:11.3f}{dense / sgd:8.2f}{ok}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--optimizer", choices=("sgd", "sam"), default="sgd")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--baseline-runs", type=int, default=10,
                    help="runs of the per-run loop actually timed (its time is per run, scaled to --runs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is fastest here)")
    ap.add_argument("--rules", action="store_true", help="time every SAM-family rule's step instead (see above)")
    ap.add_argument("--steps", type=int, default=200, help="--rules: timed steps per rule and repeat")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.rules:
        rules_table(args)
        return

    # one sweep row: R runs at the same d, ||mu|| spread over a grid, one seed each
    mus = np.linspace(0.5, 5.0, args.runs)
    cfgs = [SimConfig(optimizer=args.optimizer, d=args.d, mu_norm=float(mu), seed=r, epochs=args.epochs,
                      batch_size=args.batch_size, dtype=args.dtype, n_test=0, n_mc=1000)
            for r, mu in enumerate(mus)]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.optimizer}, d={args.d}, "
          f"R={args.runs}, {cfgs[0].total_steps} steps (B={args.batch_size}), {args.dtype}")

    t0 = time.perf_counter()
    ens = train_ensemble(cfgs, track=False, log=False, heldout=False, progress=False)
    t_batched = time.perf_counter() - t0

    # the naive baseline on a sample of the same configs
    k = min(args.baseline_runs, args.runs)
    sample = [cfgs[i] for i in np.linspace(0, args.runs - 1, k).astype(int)]
    data = generate_for(sample, dtype=getattr(torch, args.dtype))
    init = TwoLayerCNN.for_config(cfgs[0]).init([c.seed for c in sample], [c.sigma_0 for c in sample], args.d,
                                                dtype=getattr(torch, args.dtype))
    x = data.patches()
    t0 = time.perf_counter()
    nets = [train_reference(c, x[r], data.y[r], init.W[r]) for r, c in enumerate(sample)]
    t_loop = (time.perf_counter() - t0) / k * args.runs

    idx = [cfgs.index(c) for c in sample]
    diff = max(float((net.filters()[0] - ens.params.W[i]).abs().max() / ens.params.W[i].abs().max())
               for net, i in zip(nets, idx))
    print(f"batched ensemble:       {t_batched:8.2f} s  ({args.runs / t_batched:8.1f} runs/s; gamma/rho are its state)")
    print(f"per-run nn.Module loop: {t_loop:8.2f} s  ({args.runs / t_loop:8.1f} runs/s, "
          f"timed on {k} runs)")
    print(f"max relative weight difference batched vs loop: {diff:.2e}")
    print(f"speed-up: {t_loop / t_batched:.1f}x  [target >= 20x]")


if __name__ == "__main__":
    main()
