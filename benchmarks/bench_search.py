"""Boundary search against the dense grid on the [K23] protocol (docs/science.md §5.8): the boundary slope in d and
its 95% interval from ``studies/kou2023_search.toml`` (bisection in log ||mu||) against those of the dense grid
``studies/kou2023.toml`` (100,000 runs; its committed table ``figures/results/kou2023`` is re-verified, not re-run).
Targets: an interval no wider than the dense grid's, from at most a tenth of its runs.

    python benchmarks/bench_search.py [--out DIR] [--workers 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import json

import pandas as pd

from theory_sim.sweeps.search import load, run_search, table_slopes
from theory_sim.sweeps.spec import SweepSpec

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="the search's directory (default: a temporary one)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_search_")) / "kou2023_search"
    spec, search = load(ROOT / "studies" / "kou2023_search.toml")
    t0 = time.perf_counter()
    res = run_search(spec, search, out, executor="process", workers=args.workers)
    seconds = time.perf_counter() - t0
    committed = ROOT / "figures" / "results" / "kou2023"
    grid = SweepSpec.from_dict(json.loads((committed / "results.json").read_text())["spec"], expand=False)
    dense = table_slopes(pd.read_parquet(committed / "results.parquet"), grid).set_index("dim").loc["d"]
    found, runs = res["slopes"].set_index("dim").loc["d"], len(res["results"])
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    print(f"dense grid: slope {dense['slope']:.3f} [{dense['ci_low']:.3f}, {dense['ci_high']:.3f}] (width "
          f"{width(dense):.3f}) from 100000 runs")
    print(f"search:     slope {found['slope']:.3f} [{found['ci_low']:.3f}, {found['ci_high']:.3f}] (width "
          f"{width(found):.3f}) from {runs} runs in {res['rounds']} rounds, {seconds:.0f} s")
    print(f"runs {runs / 100000:.3f} of the grid's (target <= 0.1): {'OK' if runs <= 10000 else 'MISSED'}; interval "
          f"width {width(found) / width(dense):.2f} of the grid's (target <= 1): "
          f"{'OK' if width(found) <= width(dense) else 'MISSED'}")


if __name__ == "__main__":
    main()
