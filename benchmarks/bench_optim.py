"""Cost of a SAM step relative to an SGD step: WRN-16-4, one batch of CIFAR-sized images, CPU, one process.

A SAM step is two forward/backward passes, so 2.0 is the floor; the target is <= 2.1, i.e. the perturbation
bookkeeping (norm, w + eps, restore) must stay a few percent of a pass. SGD and SAM steps are timed interleaved, so
load from other processes on a shared machine hits both alike; medians over the repetitions.

    python benchmarks/bench_optim.py [--batch 64] [--reps 15] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from theory_sim.cifar.wrn import WideResNet
from theory_sim.sam.optim import SAM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine a 2nd thread mostly measures the neighbours)")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--width", type=int, default=4)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    net_sgd = WideResNet(args.depth, args.width)
    net_sam = WideResNet(args.depth, args.width)
    net_sam.load_state_dict(net_sgd.state_dict())
    sgd = torch.optim.SGD(net_sgd.parameters(), **kw)
    sam = SAM(net_sam.parameters(), torch.optim.SGD, rule="sam", rho=0.05, model=net_sam, **kw)
    loss_fn = nn.CrossEntropyLoss()

    def sgd_step():
        sgd.zero_grad(set_to_none=True)
        loss_fn(net_sgd(x), y).backward()
        sgd.step()

    def sam_closure():
        loss = loss_fn(net_sam(x), y)
        loss.backward()
        return loss

    def sam_step():
        sam.step(sam_closure)

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
        sgd_step()
        sam_step()
    t_sgd, t_sam = [], []
    for _ in range(args.reps):
        t_sgd.append(timed(sgd_step))
        t_sam.append(timed(sam_step))
    m_sgd, m_sam = statistics.median(t_sgd), statistics.median(t_sam)
    n_params = sum(p.numel() for p in net_sam.parameters())
    print(f"WRN-{args.depth}-{args.width} ({n_params / 1e6:.2f}M params), batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {args.reps} reps")
    print(f"SGD step  median {1e3 * m_sgd:8.1f} ms  (min {1e3 * min(t_sgd):.1f})")
    print(f"SAM step  median {1e3 * m_sam:8.1f} ms  (min {1e3 * min(t_sam):.1f})")
    print(f"ratio SAM/SGD  median {m_sam / m_sgd:.3f}  (min/min {min(t_sam) / min(t_sgd):.3f}; floor 2.0, "
          f"target <= 2.1)")


if __name__ == "__main__":
    main()
