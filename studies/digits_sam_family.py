"""Study digits_sam_family: [T24]'s SAM-family claims on real images at CPU scale (scikit-learn's digits), next to
the theory model; the setting and the claims as stated: docs/science.md §9.5; the verdicts and the report:
theory_sim.reports.digits_sam_family.

    python studies/digits_sam_family.py --out runs/digits_sam_family        (trains; ~8 min of CPU, see the report)
    python studies/digits_sam_family.py --out runs/digits_sam_family --report-only   (tables -> report)
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from theory_sim.cifar.config import CifarConfig
from theory_sim.io import save_table
from theory_sim.reports.digits_sam_family import NAME, figure, report

OPTIMIZERS = {"sgd": dict(optimizer="sgd"), "sam": dict(optimizer="sam"), "randsam": dict(optimizer="randsam"),
              "msam2": dict(optimizer="msam", ascent_steps=2), "msam5": dict(optimizer="msam", ascent_steps=5),
              "asam": dict(optimizer="asam")}
NOISE = (0.0, 0.2, 0.4)
SEEDS = 5
BASE = dict(dataset="digits", depth=10, width=1, epochs=4, batch_size=64, lr=0.1, sharpness_samples=64)
WRN_BASE = 8


def run(out: Path, labels) -> pd.DataFrame:
    """Train the given optimizers (each one vmapped computation of 15 runs), each saved as OUT/<label>.parquet as
    soon as it is done (several processes may share the optimizers); return every optimizer's table found."""
    from theory_sim.cifar.vmap import train_stacked

    torch.set_num_threads(1)
    for label in labels:
        kw = OPTIMIZERS[label]
        t0 = time.perf_counter()
        cfgs = [CifarConfig(**BASE, **kw, label_noise=p, seed=s) for p in NOISE for s in range(SEEDS)]
        df = train_stacked(cfgs, log=lambda *_: None, base=WRN_BASE).assign(label=label)
        print(f"{label}: {len(cfgs)} runs in {time.perf_counter() - t0:.0f} s, test acc by noise "
              f"{df.groupby('label_noise').test_acc.mean().round(4).to_dict()}", flush=True)
        save_table(df, out / f"{label}.parquet")
    return collect(out)


def collect(out: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(out / f"{label}.parquet") for label in OPTIMIZERS if (out / f"{label}.parquet").exists()]
    table = pd.concat(frames, ignore_index=True)
    save_table(table, out / "summary.parquet")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs") / NAME)
    ap.add_argument("--gallery", type=Path, default=Path("figures"))
    ap.add_argument("--report-only", action="store_true", help="read OUT/<optimizer>.parquet, write the report")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="which to train (comma-separated)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = collect(args.out) if args.report_only else run(args.out, args.optimizers.split(","))
    results = args.gallery / "results" / NAME
    results.mkdir(parents=True, exist_ok=True)
    for f in ("summary.parquet", "summary.json"):
        if (args.out / f).exists():
            shutil.copy(args.out / f, results / f)
    figure(table, args.gallery / f"{NAME}.png")
    print(report(table, args.out, args.gallery))


if __name__ == "__main__":
    main()
