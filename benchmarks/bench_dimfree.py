"""A run's cost against d in the dimension-free mode (docs/science.md §2.6): target, a run at d = 10^8 within
1.5x of its cost at d = 10^2. The explicit generator at d = 10^2 .. 10^5 is timed alongside (its cost grows with d).

Every size trains the same ensemble (SGD and SAM -> SGD runs, --seeds seeds, the c23 defaults with n_test = 0),
end to end through ``train_ensemble`` (data, init, steps, evaluation). The sizes are timed in alternation, --reps
times each, in this process, so machine load hits them alike; the median per run is reported, and the ratio of each
size to the smallest.

    python benchmarks/bench_dimfree.py [--seeds 16] [--reps 5] [--epochs 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from theory_sim.cnn.train import train_ensemble
from theory_sim.config import SimConfig

FREE_D = (10 ** 2, 10 ** 4, 10 ** 6, 10 ** 8)
EXPLICIT_D = (10 ** 2, 10 ** 3, 10 ** 4, 10 ** 5)


def configs(d: int, free: bool, seeds: int, epochs: int) -> list[SimConfig]:
    return [SimConfig(optimizer=o, d=d, mu_norm=2.0, epochs=epochs, n_test=0, n_mc=2000, seed=s,
                      sam_steps=40 if o == "sam" else None, dimension_free=free,
                      init_scale=0.1 if free else None, noise_step=0.1 if free else None)
            for o in ("sgd", "sam") for s in range(seeds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("dimension-free", d, True) for d in FREE_D] + [("explicit", d, False) for d in EXPLICIT_D]
    times = {case: [] for case in cases}
    for case in cases:   # warm-up: imports, allocator
        train_ensemble(configs(case[1], case[2], 2, 2), progress=False, log=False)
    for _ in range(args.reps):
        for case in cases:
            cfgs = configs(case[1], case[2], args.seeds, args.epochs)
            t0 = time.perf_counter()
            train_ensemble(cfgs, progress=False, log=False)
            times[case].append((time.perf_counter() - t0) / len(cfgs))
    runs = 2 * args.seeds
    print(f"{runs} runs per ensemble ({args.epochs} epochs, n=20, B=5, m=10), median of {args.reps} alternating reps,"
          f" {args.threads} thread(s)")
    for mode in ("dimension-free", "explicit"):
        base = np.median(times[next(c for c in cases if c[0] == mode)])
        for case in (c for c in cases if c[0] == mode):
            t = np.median(times[case])
            print(f"  {mode:15s} d = 10^{int(round(np.log10(case[1]))):d}: {1e3 * t:8.2f} ms per run, "
                  f"{t / base:6.2f}x the smallest d")
    ratio = np.median(times[("dimension-free", FREE_D[-1], True)]) / np.median(times[("dimension-free", FREE_D[0],
                                                                                          True)])
    print(f"dimension-free d = 10^8 over d = 10^2: {ratio:.2f}x (target <= 1.5x): {'OK' if ratio <= 1.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
