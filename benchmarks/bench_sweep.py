"""The full [K23] grid (10,000 cells x 10 runs, 100 full-batch epochs, SGD), timed end to end, against the runs/s
of a per-run nn.Module + autograd + torch.optim loop on a sample of the same cells, in the same process; with a
profile of one chunk (where the time goes) and the fraction of a measured matmul peak the sweep achieves.

Targets (issues 3 and 18): the full grid in under 60 s on a 2-core machine, >= 40x the per-run loop.

    python benchmarks/bench_sweep.py [--spec studies/kou2023.toml] [--workers 2] [--loop-runs 20] [--out DIR]
                                     [--device cpu|cuda] [--profile-chunk N] [--no-sweep]

The sweep runs through the real runner (process pool, one torch thread per worker, shards on disk, aggregation).
The loop baseline runs on one core with one thread (its best setting here); since the sweep uses every core, the
ratio is also printed per core (the loop's throughput multiplied by the number of workers). ``--device cuda``
runs the same code with every run's ``device = "cuda"`` (one inline worker); without a GPU it stops with an error.

The peak is the best float32 (or the spec's dtype) GFLOP/s of a 1024^3 matmul per thread (times the workers on
CPU). The sweep's FLOPs are counted analytically (``grid_flops``): every matmul of setup, steps and evaluation
exactly, plus one FLOP per element of each elementwise pass over a step's (R, 2, m, 1 + nK) tensors (about 30
passes): a generous count, so the fraction is an upper bound of the useful work.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
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
STEP_PASSES = 30  # elementwise passes of a step over its (R, 2, m, 1 + nK) tensors (forward, gradient, update)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 1024, reps: int = 5) -> float:
    """Best GFLOP/s of a size^3 matmul on this device with the current thread count."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def grid_flops(spec: SweepSpec) -> float:
    """Analytic FLOPs of the sweep: per run, with c = 1 + nK basis columns and 2m filters of dimension d:
    setup (Gram c^2 d, initial projections 2m c d), every step (A G: 2m c^2, plus STEP_PASSES elementwise passes
    over 2m c), evaluation (W = W0 + A basis: 2m c d, its projections 2m d c, W W^T: (2m)^2 d, the Gaussian
    estimator's draws times the factor: n_mc K (2m)^2), each matmul counted as 2 FLOPs per multiply-add."""
    total = 0.0
    for _, cfg in spec.runs:
        K = 1 if cfg.noise_patches == "shared" else cfg.P - 1
        c, w, d = 1 + cfg.n * K, 2 * cfg.m, cfg.d
        steps = cfg.epochs * (cfg.n // cfg.batch_size)
        setup = 2 * c * c * d + 2 * w * c * d
        step = 2 * w * c * c + STEP_PASSES * w * c
        evaluation = 2 * w * c * d * 2 + 2 * w * w * d + 2 * cfg.n_mc * K * w * w
        total += setup + steps * step + evaluation
    return total


def with_device(spec: SweepSpec, device: str) -> SweepSpec:
    d = spec.to_dict()
    d["base"] = {**d["base"], "device": device}
    return SweepSpec.from_dict(d, name=spec.name)


def profile_chunk(spec: SweepSpec, chunk_id: int, top: int = 12) -> None:
    """Train one chunk in this process and print where its time goes: the phases of ``train_ensemble`` (CPU
    seconds of this process) and the functions with the most own time (cProfile)."""
    import theory_sim.cnn.ensemble as E
    import theory_sim.cnn.train as T

    configs = [cfg for _, cfg in spec.chunks()[chunk_id]]
    phases: dict[str, float] = {}
    originals = []

    def timed(module, name, label):
        fn = getattr(module, name)
        originals.append((module, name, fn))

        def wrapper(*args, **kwargs):
            c0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.process_time() - c0
        setattr(module, name, wrapper)

    timed(T, "make_ensemble", "setup (data, init, Gram, projections)")
    timed(E, "generate_for", "  of which: training data")
    timed(T, "evaluate", "evaluation (final W, summary)")
    timed(T, "gaussian_test_error", "  of which: Gaussian test error")
    prof = cProfile.Profile()
    try:
        c0, w0 = time.process_time(), time.perf_counter()
        prof.enable()
        T.train_ensemble(configs, track=spec.trajectories, log=spec.trajectories, progress=False,
                         heldout=configs[0].n_test > 0, reconstruct=False)
        prof.disable()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
    steps = cpu - phases["setup (data, init, Gram, projections)"] - phases["evaluation (final W, summary)"]
    phases = {**phases, "training steps": steps}
    print(f"profile of chunk {chunk_id} (d={configs[0].d}, {len(configs)} runs, {configs[0].total_steps} steps): "
          f"{cpu:.2f} s CPU, {wall:.2f} s wall in this process (cProfile on)")
    for label in ("setup (data, init, Gram, projections)", "  of which: training data", "training steps",
                  "evaluation (final W, summary)", "  of which: Gaussian test error"):
        print(f"  {label:<42}{phases.get(label, 0.0):7.2f} s  {100 * phases.get(label, 0.0) / cpu:5.1f}%")
    draws = random_draws_seconds(configs)
    print(f"  {'random draws alone (same streams, shapes)':<42}{draws:7.2f} s  {100 * draws / cpu:5.1f}%   <- fixed by "
          f"the seeds: no faster path gives the same numbers")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    print(f"  functions with the most own time (cProfile, wall seconds, top {top}):")
    for ln in lines[start:start + top + 1]:
        print("   ", ln[:150])


def random_draws_seconds(configs) -> float:
    """CPU seconds of just the random numbers a chunk's results are fixed to: every run's training data (labels,
    signal positions, noise) and initial weights (NumPy PCG64 streams), and its Monte-Carlo normals (torch), drawn
    with the trainer's own generators and shapes but nothing else computed."""
    from theory_sim.cnn.data import STREAM_INIT, STREAM_TRAIN
    from theory_sim.cnn.estimators import standard_draws
    from theory_sim.seeding import run_generators

    c0 = configs[0]
    K = 1 if c0.noise_patches == "shared" else c0.P - 1
    seeds = [c.rng_seed for c in configs]
    noise = np.empty((c0.n, K, c0.d))
    t0 = time.process_time()
    for rng in run_generators(seeds, STREAM_TRAIN):
        rng.choice([-1.0, 1.0], size=c0.n)
        rng.random(c0.n)
        rng.integers(0, c0.P, size=c0.n)
        rng.standard_normal((c0.n, K, c0.d), out=noise)
    for rng in run_generators(seeds, STREAM_INIT):
        if c0.model == "kou2023":
            rng.uniform(-1, 1, size=(2, c0.m, c0.d))
            rng.uniform(-1, 1, size=(2, c0.m))
        else:
            rng.standard_normal((2, c0.m, c0.d))
    standard_draws(configs, c0.n_mc, K, 2 * c0.m, getattr(torch, c0.dtype))
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "studies" / "kou2023.toml")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--loop-runs", type=int, default=20, help="runs of the per-run loop actually timed")
    ap.add_argument("--out", type=Path, default=None, help="keep the sweep directory here (default: a temp dir)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--profile-chunk", type=int, default=None, help="chunk to profile (default: the middle one)")
    ap.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                    help="time the full sweep (--no-sweep: the loop, the profile and the peak only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is "
              "False); run with --device cpu", file=sys.stderr)
        sys.exit(2)

    t0 = time.perf_counter()
    spec = SweepSpec.from_toml(args.spec)
    t_spec = time.perf_counter() - t0   # paid once by the sweep's main process
    if device.type == "cuda":
        spec, args.workers = with_device(spec, "cuda"), 1   # one process drives the GPU
    runs = spec.runs
    dtype = getattr(torch, runs[0][1].dtype)
    print(f"{spec.name}: {len(runs)} runs in {len(spec.chunks())} chunks, {args.workers} workers, {device}; "
          f"torch {torch.__version__}")
    print(f"spec expansion (validated configs of every run): {t_spec:.1f} s, once, in the main process (a worker "
          f"gets its chunk's runs with the task)")

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
    print(f"per-run nn.Module loop: {loop_rate:.1f} runs/s on one CPU core ({len(sample)} sampled runs, "
          f"mean d={np.mean([c.d for c in sample]):.0f}); the full grid would take "
          f"{len(runs) / loop_rate / 60:.0f} min")

    profile_chunk(spec, len(spec.chunks()) // 2 if args.profile_chunk is None else args.profile_chunk)

    peak = matmul_peak(device, dtype) * (args.workers if device.type == "cpu" else 1)
    flops = grid_flops(spec)
    print(f"matmul peak: {peak:.1f} GFLOP/s ({dtype}, {args.workers if device.type == 'cpu' else 1} x one "
          f"thread); the grid: {flops / 1e9:.0f} GFLOP counted")

    if not args.sweep:
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    if args.out is None or not (out / "results.parquet").exists():
        t0 = time.perf_counter()
        df = run_sweep(spec, out, executor="process" if args.workers > 1 else "inline", workers=args.workers,
                       progress=None)
        elapsed = time.perf_counter() - t0
        rate = len(df) / elapsed
        print(f"batched sweep: {len(df)} runs in {elapsed:.1f} s = {elapsed / 60:.2f} min = {rate:.0f} runs/s end "
              f"to end (target: under 60 s)")
        print(f"speed-up vs the loop: {rate / loop_rate:.0f}x; per core ({args.workers} workers vs a loop on each "
              f"core): {rate / (loop_rate * args.workers):.0f}x  (target >= 40x)")
        print(f"achieved: {flops / elapsed / 1e9:.2f} GFLOP/s = {100 * flops / elapsed / 1e9 / peak:.1f}% of the "
              f"matmul peak")
        print(f"diverged runs: {int(df.diverged.sum())}; mean test error {df.test_error.mean():.3f}")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
