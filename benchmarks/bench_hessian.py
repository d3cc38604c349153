"""Cost of Hessian tools on a CIFAR-sized network (CPU): gradient vs HVP, and Lanczos for lambda_1.

Builds a pre-activation WRN-16-4 (Zagoruyko & Komodakis 2016; depth 16 = 2 blocks per group, widths 64/128/256,
~2.7M parameters, BatchNorm) here, self-contained, and a random CIFAR-shaped batch. Then
  1. times one gradient and one HVP with each method (double backward, torch.func forward-over-reverse) on
     ``--hvp-batch`` images and prints the HVP / gradient ratio (target: <= 3);
  2. runs ``--iters`` Lanczos steps for the top eigenvalue on ``--batch`` images, accumulated over sub-batches of
     ``--sub-batch`` (a DataLoader), and prints the wall time and lambda_1. By default the first-order graphs are
     cached (``Objective.cached_graph``: ~1.6 GB per 64 images); ``--no-cache`` recomputes them for every HVP, so
     memory stays at one sub-batch's double-backward graph.

    python benchmarks/bench_hessian.py                     # defaults: a few minutes on 2 shared cores
    python benchmarks/bench_hessian.py --batch 512 --iters 20

Random weights and images: the numbers measure cost, not a trained network's sharpness. ``--bn train`` (default)
uses batch statistics, per sub-batch.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from theory_sim.sharpness import Objective, top_eigenvalues


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, identity shortcut or a 1x1 conv on the pre-activated input."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


def wrn(depth: int = 16, widen: int = 4, n_classes: int = 10) -> nn.Module:
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)]
    c = widths[0]
    for g, stride in zip(range(3), (1, 2, 2)):
        for i in range(n):
            layers.append(PreActBlock(c, widths[g + 1], stride if i == 0 else 1))
            c = widths[g + 1]
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes)]
    return nn.Sequential(*layers)


def interleaved_times(fns: dict, rounds: int) -> dict:
    """Time every function once per round, in turn, after a warm-up round.

    The machine is shared: load from other processes changes between seconds. Interleaving puts every variant
    under similar load in each round, so per-round ratios are fairer than comparing separate best-of runs.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hvp-batch", type=int, default=64, help="images for the gradient/HVP timing")
    ap.add_argument("--batch", type=int, default=128, help="images for Lanczos")
    ap.add_argument("--sub-batch", type=int, default=64, help="Lanczos accumulates HVPs over sub-batches this big")
    ap.add_argument("--iters", type=int, default=10, help="Lanczos steps (no early stop); 0 skips Lanczos")
    ap.add_argument("--reps", type=int, default=5, help="timing rounds (interleaved)")
    ap.add_argument("--no-cache", action="store_true",
                    help="Lanczos without the cached gradient graph (less memory, ~1.5x slower per step)")
    ap.add_argument("--bn", choices=("train", "eval"), default="train")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = wrn(16, 4)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"WRN-16-4 (pre-activation): {n_params / 1e6:.2f}M parameters, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32, BN {args.bn} mode")
    train_mode = args.bn == "train"

    # 1. gradient vs HVP
    x = torch.randn(args.hvp_batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.hvp_batch,))
    obj = Objective.from_module(model, F.cross_entropy, (x, y), train_mode=train_mode)
    v = obj.unflatten(torch.randn(obj.dim))
    # a second objective on the same batch holds the cached first-order graph (Objective.cached_graph)
    obj_cached = Objective.from_module(model, F.cross_entropy, (x, y), train_mode=train_mode)
    t = time.perf_counter()
    with obj_cached.cached_graph():
        t_build = time.perf_counter() - t
        times = interleaved_times({"gradient": obj.grad,
                                   "HVP double_backward": lambda: obj.hvp(v, method="double_backward"),
                                   "HVP func": lambda: obj.hvp(v, method="func"),
                                   "HVP cached graph": lambda: obj_cached.hvp(v)}, args.reps)
    grad_times = times["gradient"]
    print(f"[{args.hvp_batch} images] {'':22s} best (s)  median ratio to gradient over {args.reps} rounds")
    for name, ts in times.items():
        ratios = sorted(t / g for t, g in zip(ts, grad_times))
        print(f"[{args.hvp_batch} images] {name:22s} {min(ts):8.3f}  {ratios[len(ratios) // 2]:.2f}x")
    print(f"[{args.hvp_batch} images] one-off build of the cached gradient graph: {t_build:.3f} s")

    # 2. Lanczos for lambda_1 on a larger batch, accumulated over sub-batches
    if args.iters == 0:
        return
    xs = torch.randn(args.batch, 3, 32, 32)
    ys = torch.randint(0, 10, (args.batch,))
    loader = DataLoader(TensorDataset(xs, ys), batch_size=args.sub_batch, shuffle=False)
    obj = Objective.from_module(model, F.cross_entropy, loader, train_mode=train_mode)
    t = time.perf_counter()
    res = top_eigenvalues(obj, 1, max_iter=args.iters, tol=0.0, cache_graph=not args.no_cache)
    wall = time.perf_counter() - t
    print(f"[{args.batch} images, sub-batches of {args.sub_batch}, cache_graph={not args.no_cache}] "
          f"Lanczos {res.n_hvp} steps: {wall:.1f} s "
          f"({wall / res.n_hvp:.2f} s/HVP), lambda_1 = {float(res.values[0]):.4f}, "
          f"residual ||Hv - lambda v|| = {float(res.residuals[0]):.2e}")


if __name__ == "__main__":
    main()
