"""The full [K23] grid (10,000 cells x 10 runs, 100 full-batch epochs, SGD), timed end to end, against the runs/s
of a per-run nn.Module + autograd + torch.optim loop on a sample of the same cells, in the same process.

Targets (issue 3): the full grid in under 15 minutes on a 2-core machine, >= 40x the per-run loop.

    python benchmarks/bench_sweep.py [--spec studies/kou2023.toml] [--workers 2] [--loop-runs 20] [--out DIR]

The sweep runs through the real runner (process pool, one torch thread per worker, shards on disk, aggregation).
The loop baseline runs on one core with one thread (its best setting here); since the sweep uses every core, the
ratio is also printed per core (the loop's throughput multiplied by the number of workers).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from theory_sim.cnn.data import generate_for
from theory_sim.cnn.model import TwoLayerCNN
from theory_sim.cnn.reference import train_reference
from theory_sim.sweeps.runner import run_sweep
from theory_sim.sweeps.spec import SweepSpec

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "studies" / "kou2023.toml")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--loop-runs", type=int, default=20, help="runs of the per-run loop actually timed")
    ap.add_argument("--out", type=Path, default=None, help="keep the sweep directory here (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    spec = SweepSpec.from_toml(args.spec)
    runs = spec.runs
    print(f"{spec.name}: {len(runs)} runs in {len(spec.chunks())} chunks, {args.workers} workers")

    # the naive baseline: a sample of the grid's runs, each an nn.Module trained by torch.optim, one at a time
    rng = np.random.default_rng(0)
    sample = [runs[i][1] for i in rng.choice(len(runs), args.loop_runs, replace=False)]
    t_loop = 0.0
    for cfg in sample:
        data = generate_for([cfg])
        init = TwoLayerCNN.for_config(cfg).init([cfg.seed], [cfg.sigma_0], cfg.d, dtype=getattr(torch, cfg.dtype))
        x, y = data.patches()[0].to(init.W.dtype), data.y[0].to(init.W.dtype)
        t0 = time.perf_counter()
        train_reference(cfg, x, y, init.W[0], None if init.b is None else init.b[0])
        t_loop += time.perf_counter() - t0
    loop_rate = len(sample) / t_loop
    print(f"per-run nn.Module loop: {loop_rate:.1f} runs/s on one core ({len(sample)} sampled runs, "
          f"mean d={np.mean([c.d for c in sample]):.0f}); the full grid would take {len(runs) / loop_rate / 60:.0f} min")

    out = args.out or Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    if args.out is None or not (out / "results.parquet").exists():
        t0 = time.perf_counter()
        df = run_sweep(spec, out, executor="process" if args.workers > 1 else "inline", workers=args.workers,
                       progress=None)
        elapsed = time.perf_counter() - t0
        rate = len(df) / elapsed
        print(f"batched sweep: {len(df)} runs in {elapsed / 60:.1f} min = {rate:.0f} runs/s end to end "
              f"(target: under 15 min)")
        print(f"speed-up vs the loop: {rate / loop_rate:.0f}x; per core ({args.workers} workers vs a loop on each "
              f"core): {rate / (loop_rate * args.workers):.0f}x  (target >= 40x)")
        print(f"diverged runs: {int(df.diverged.sum())}; mean test error {df.test_error.mean():.3f}")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
