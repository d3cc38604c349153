"""Re-run committed sweep presets and compare their tables with the committed ones, or with the same runs computed
by the code of another git revision on this machine: a speed change must leave every number as it was. Prints,
per column, the largest absolute difference (numeric columns) or whether the values are equal (the others), and
exits 1 if any column differs by more than ``--atol``.

    python benchmarks/check_presets.py [phase_diagram_quick kou2023 ...] [--workers 2] [--atol 0] [--chunks 0,50]
                                       [--against REV]

Each preset ``NAME`` is re-run from the spec stored with its committed table (``figures/results/NAME/results.json``;
when that differs from ``studies/NAME.toml`` the script says so: the committed table is then from an older spec)
and compared with ``figures/results/NAME/results.parquet``, or with ``--against REV`` with the same spec re-run by
REV's code (checked out into a temporary git worktree): the comparison that isolates a code change, since BLAS
kernels, and so the last bits of a float, may differ between machines. The sweep runs through the real runner
(process pool) into a temporary directory, without figures, in a subprocess whose ``PYTHONPATH`` is the code's
root; ``--chunks`` re-runs only those chunks (the runner's ``run_chunk``) and compares their rows, for a quick check.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.sweeps.spec import SweepSpec

ROOT = Path(__file__).resolve().parent.parent

# run with PYTHONPATH = the code's root: re-runs the spec (argv 1: its dict as JSON) into argv 2 and writes the
# results table (all chunks, or the comma-separated chunks of argv 3) to argv 4; argv 5: workers
RERUN = textwrap.dedent("""
    import json, sys
    import pandas as pd
    from theory_sim.sweeps.runner import run_chunk, run_sweep
    from theory_sim.sweeps.spec import SweepSpec
    from theory_sim.sweeps.store import prepare, shard_path
    spec = SweepSpec.from_dict(json.loads(sys.argv[1]))
    out, chunks, table, workers = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    if chunks == "all":
        df = run_sweep(spec, out, executor="process" if workers > 1 else "inline", workers=workers, progress=False)
    else:
        ids = [int(i) for i in chunks.split(",")]
        prepare(spec, out)
        for i in ids:
            run_chunk(out, i, claim=False)
        df = pd.concat([pd.read_parquet(shard_path(out, i)) for i in ids], ignore_index=True)
    df.drop(columns=["chunk_seconds"], errors="ignore").to_parquet(table)
""")


def rerun(code: Path, spec: SweepSpec, chunks: str | None, workers: int) -> pd.DataFrame:
    """The results table of ``spec`` (or of its ``chunks``) as the code under ``code`` computes it."""
    tmp = Path(tempfile.mkdtemp(prefix="check_presets_"))
    try:
        env = {**os.environ, "PYTHONPATH": str(code)}
        subprocess.run([sys.executable, "-c", RERUN, json.dumps(spec.to_dict()), str(tmp / "sweep"), chunks or "all",
                        str(tmp / "table.parquet"), str(workers)], env=env, cwd=code, check=True)
        return pd.read_parquet(tmp / "table.parquet")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def checkout(rev: str):
    """REV's code in a temporary detached git worktree (removed afterwards)."""
    tree = Path(tempfile.mkdtemp(prefix="check_presets_rev_")) / "src"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(tree), rev], check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


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
    ap.add_argument("--against", metavar="REV", default=None,
                    help="compare with the same runs computed by git revision REV's code (default: the committed "
                         "tables)")
    ap.add_argument("--keep", type=Path, default=None, help="also write each re-run table to KEEP/NAME.parquet")
    args = ap.parse_args()
    not_sweeps = [n for n in args.presets if not (ROOT / "figures" / "results" / n / "results.json").exists()]
    if not_sweeps:   # before any work: a study's folder without a sweep table (e.g. digits_sam_family)
        sweeps = sorted(p.parent.name for p in (ROOT / "figures" / "results").glob("*/results.json"))
        ap.error(f"presets must be committed sweeps (figures/results/NAME/results.json): {', '.join(not_sweeps)} "
                 f"is not; the sweeps are {', '.join(sweeps)}")
    failed = []
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(checkout(args.against)) if args.against else None
        for name in args.presets:
            committed = ROOT / "figures" / "results" / name
            spec = SweepSpec.from_dict(json.loads((committed / "results.json").read_text())["spec"], name=name)
            study = SweepSpec.from_toml(ROOT / "studies" / f"{name}.toml")
            if study.digest() != spec.digest():
                print(f"note: figures/results/{name} was computed from an older spec than studies/{name}.toml "
                      f"(digest {spec.digest()} vs {study.digest()}): re-running the committed table's own spec")
            chunks = args.chunks
            if chunks is not None:   # the ids this preset has (a small preset may hold fewer chunks)
                chunks = ",".join(i for i in chunks.split(",") if int(i) < len(spec.chunks())) or "0"
            t0 = time.perf_counter()
            new = rerun(ROOT, spec, chunks, args.workers)
            elapsed = time.perf_counter() - t0
            if reference is None:
                old, against = pd.read_parquet(committed / "results.parquet"), f"figures/results/{name}/results.parquet"
                if chunks is not None:
                    old = old[old["chunk"].isin([int(i) for i in chunks.split(",")])]
            else:
                old, against = rerun(reference, spec, chunks, args.workers), f"the code of {args.against}"
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                new.to_parquet(args.keep / f"{name}.parquet")
            result = compare(new, old, list(spec.run_key))
            worst = [c for c, v in result.items() if (v is False) or (not isinstance(v, bool) and v > args.atol)]
            print(f"{name}: {len(new)} runs re-run in {elapsed:.1f} s against {against}: "
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
