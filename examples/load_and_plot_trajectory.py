"""Load a run's tables and plot one trajectory: the training loss, Gamma (signal) and Rho (noise memorisation) of one
seed over its logged steps (columns: docs/usage.md, "Outputs in DIR"; the quantities: docs/science.md §4).

    python -m theory_sim simulate --optimizer sam --d 400 --epochs 20 --seeds 2 --out runs/sam_d400
    python examples/load_and_plot_trajectory.py runs/sam_d400 --seed 1 --out runs/sam_d400/seed1.png

RUN is a `simulate` directory (trajectory.parquet, summary.parquet) or a sweep directory (trajectories.parquet,
results.parquet; the first run of the table unless --label / --d / --mu-norm pick another cell).
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from theory_sim.io import save_figure  # noqa: E402

RUN_KEY = ("label", "d", "mu_norm", "n", "P", "sigma_p", "seed", "chunk", "run")  # a sweep's and simulate's
PANELS = [("train_loss", "training loss"), ("gamma_mean", "Gamma (signal)"), ("rhobar_mean", "Rho (noise)")]


def load_run(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, trajectory) of a simulate run, or (results, trajectories) of a sweep."""
    if (run / "trajectory.parquet").exists():
        return pd.read_parquet(run / "summary.parquet"), pd.read_parquet(run / "trajectory.parquet")
    return pd.read_parquet(run / "results.parquet"), pd.read_parquet(run / "trajectories.parquet")


def one_trajectory(traj: pd.DataFrame, seed: int | None = None, **cell) -> pd.DataFrame:
    """The logged steps of one run: the given seed and cell values (grid values to 6 digits), else the first run's."""
    rows = traj
    for key, value in cell.items():
        if value is not None:
            rows = rows[rows[key] == value] if key == "label" else rows[np.isclose(rows[key], value, rtol=1e-5)]
    if seed is not None:
        rows = rows[rows.seed == seed]
    if rows.empty:
        given = {k: v for k, v in cell.items() if v is not None}
        raise SystemExit(f"no run with seed={seed} {given}; seeds in the table: {sorted(map(int, traj.seed.unique()))}")
    key = [k for k in RUN_KEY if k in rows]
    return rows[(rows[key] == rows.iloc[0][key]).all(axis=1)].sort_values("step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a simulate or sweep output directory")
    ap.add_argument("--seed", type=int, default=None, help="seed to plot (default: the first in the table)")
    ap.add_argument("--label", default=None, help="sweep: optimizer variant")
    ap.add_argument("--d", type=int, default=None, help="sweep: dimension of the cell")
    ap.add_argument("--mu-norm", type=float, default=None, help="sweep: ||mu|| of the cell (a grid value)")
    ap.add_argument("--out", type=Path, default=None, help="figure path (default: RUN/one_trajectory.png)")
    args = ap.parse_args()
    summary, traj = load_run(args.run)
    rows = one_trajectory(traj, args.seed, label=args.label, d=args.d, mu_norm=args.mu_norm)
    key = [k for k in RUN_KEY if k in summary and k in rows and k != "run"]
    final = summary[(summary[key] == rows.iloc[0][key]).all(axis=1)].iloc[0]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 3.4))
    for ax, (col, title) in zip(axes, PANELS):
        ax.plot(rows.step, rows[col], marker=".")
        ax.set_yscale("log" if col == "train_loss" else "linear")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{args.run.name}: {rows.optimizer.iloc[0]}, seed {rows.seed.iloc[0]}, d={final.d}, "
                 f"||mu||={final.mu_norm:g}; final test error {final.test_error:.3f}", fontsize=10)
    fig.tight_layout()
    out = args.out or args.run / "one_trajectory.png"
    save_figure(fig, out)
    print(f"figure: {out} ({len(rows)} logged steps)")


if __name__ == "__main__":
    main()
