"""Re-run committed sweep presets and compare their tables with the committed ones: a speed change must leave every
number as it was. Prints, per column, the largest absolute difference (numeric columns) or whether
the values are equal (the others), and exits 1 if any column differs by more than ``--atol``.

    python benchmarks/check_presets.py [phase_diagram_quick kou2023 ...] [--workers 2] [--atol 0] [--chunks 0,50]

Each preset ``NAME`` is re-run from the spec stored with its committed table (``figures/results/NAME/results.json``;
when that differs from ``studies/NAME.toml`` the script says so: the committed table is then from an older spec)
and compared with ``figures/results/NAME/results.parquet``. The sweep runs through the real runner (process pool)
into a temporary directory, without figures; ``--chunks`` re-runs only those chunks (the runner's ``run_chunk``)
and compares their rows, for a quick check.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.sweeps.runner import run_chunk, run_sweep
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.store import prepare, shard_path

ROOT = Path(__file__).resolve().parent.parent


def compare(new: pd.DataFrame, old: pd.DataFrame, key: list[str]) -> dict[str, float | bool]:
    """Per column of ``old``: max |new - old| for numeric columns (NaN where both are NaN counts as equal, NaN on
    one side only as inf), or whether every value is equal."""
    if len(new) != len(old):
        raise SystemExit(f"error: {len(new)} rows against {len(old)} committed")
    new = new.sort_values(key).reset_index(drop=True)
    old = old.sort_values(key).reset_index(drop=True)
    out: dict[str, float | bool] = {}
    for col in old.columns:
        if col not in new:
            out[col] = False
            continue
        a, b = new[col].to_numpy(), old[col].to_numpy()
        if a.dtype.kind in "fiu" and b.dtype.kind in "fiu" and a.dtype.kind != "b":
            a, b = a.astype(float), b.astype(float)
            both_nan = np.isnan(a) & np.isnan(b)
            diff = np.where(both_nan, 0.0, np.abs(a - b))
            out[col] = float(np.nan_to_num(diff, nan=np.inf).max()) if len(diff) else 0.0
        else:
            out[col] = bool((a == b).all())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=["phase_diagram_quick", "kou2023"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--atol", type=float, default=0.0, help="largest difference accepted (default: none)")
    ap.add_argument("--chunks", default=None, help="comma-separated chunk ids: re-run only these (default: all)")
    ap.add_argument("--keep", type=Path, default=None, help="also write each re-run table to KEEP/NAME.parquet")
    args = ap.parse_args()
    failed = []
    for name in args.presets:
        committed = ROOT / "figures" / "results" / name
        spec = SweepSpec.from_dict(json.loads((committed / "results.json").read_text())["spec"], name=name)
        study = SweepSpec.from_toml(ROOT / "studies" / f"{name}.toml")
        if study.digest() != spec.digest():
            print(f"note: figures/results/{name} was computed from an older spec than studies/{name}.toml "
                  f"(digest {spec.digest()} vs {study.digest()}): re-running the committed table's own spec")
        old = pd.read_parquet(committed / "results.parquet")
        out = Path(tempfile.mkdtemp(prefix=f"check_{name}_"))
        try:
            t0 = time.perf_counter()
            if args.chunks is None:
                new = run_sweep(spec, out, executor="process" if args.workers > 1 else "inline",
                                workers=args.workers, progress=False)
            else:
                ids = [int(i) for i in args.chunks.split(",")]
                prepare(spec, out)
                for i in ids:
                    run_chunk(str(out), i, claim=False)
                new = pd.concat([pd.read_parquet(shard_path(out, i)) for i in ids], ignore_index=True)
                new = new.drop(columns=["chunk_seconds"])
                old = old[old["chunk"].isin(ids)]
            elapsed = time.perf_counter() - t0
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            new.to_parquet(args.keep / f"{name}.parquet")
        result = compare(new, old, list(spec.run_key))
        worst = [c for c, v in result.items() if (v is False) or (not isinstance(v, bool) and v > args.atol)]
        print(f"{name}: {len(new)} runs re-run in {elapsed:.1f} s against figures/results/{name}/results.parquet: "
              + ("every column identical" if not worst and all(v in (0.0, True) for v in result.values())
                 else f"{len(worst)} columns differ beyond atol={args.atol}"))
        for col, v in result.items():
            shown = ("equal" if v else "DIFFERENT") if isinstance(v, bool) else f"max |diff| {v:.3g}"
            print(f"  {col:<22}{shown}")
        if worst:
            failed.append(name)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
