"""R runs of one sweep row as ONE batched computation vs a per-run nn.Module + autograd + torch.optim loop.

Both train the same configs (same data, init and batch order) in this process; the script checks they reach the
same weights, then prints the speed ratio. Target (issue 2): >= 20x at d=1000, R=100 on a 2-core CPU.

    python benchmarks/bench_ensemble.py [--d 1000] [--runs 100] [--optimizer sgd|sam] [--baseline-runs 10]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from theory_sim.cnn.data import generate_for
from theory_sim.cnn.model import TwoLayerCNN
from theory_sim.cnn.reference import train_reference
from theory_sim.cnn.train import train_ensemble
from theory_sim.config import SimConfig


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

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
