"""Figures of coefficient trajectories (matplotlib, Agg backend: works without a display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from theory_sim.io import save_figure  # noqa: E402

PANELS = [
    ("train_loss", "training loss", True),
    ("test_error", "test error (Gaussian estimator)", False),
    ("gamma_max", r"signal: $\max_{j,r}\,\gamma_{j,r}$", False),
    ("gamma_mean", r"$\Gamma$: mean$_{j,r}\,\gamma_{j,r}$", False),
    ("rhobar_mean", r"Rho: mean$_{j,r,i:y_i=j}\,\sum_k \bar\rho_{j,r,i,k}$", True),
    ("rhobar_max", r"noise memorisation: $\max\,\bar\rho$", True),
    ("rhobar_clean_mean", r"clean samples: mean$_i \max_r \bar\rho_{y_i,r,i}$", False),
    ("rhobar_flipped_mean", r"flipped samples: mean$_i \max_r \bar\rho_{y_i,r,i}$", False),
    ("rhounder_min", r"$\min\,\underline{\rho}$", False),
    ("noise_active_frac", r"noise-active fraction: $\langle w_{j,r},\xi_i\rangle>0$", False),
    ("update_noise_active_frac", r"... at the update point ($W+\epsilon$ for SAM)", False),
]


def plain_log_ticks(axis) -> None:
    """Ticks of a log axis spanning at most two decades (call it once the limits are set) labelled as plain numbers
    (0.5, 1, 2, 5 or 20, 30, 40) and nothing in between: matplotlib labels the minor ticks of such an axis
    ("3 x 10^-1", "4 x 10^-1", ...), and they overlap. Wider axes keep matplotlib's powers of ten."""
    lo, hi = sorted(axis.get_view_interval())
    if not lo > 0 or np.log10(hi / lo) > 2:
        return
    subs = (1.0, 2.0, 5.0) if np.log10(hi / lo) > 1 else (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_trajectory(traj: pd.DataFrame, path: str | Path, *, group: str = "optimizer", title: str = "",
                    bayes_error: float | None = None, markers: dict[str, float] | None = None,
                    dpi: int | None = None) -> None:
    """Mean over seeds (line) and min-max band of every summary, one colour per value of ``group``.

    ``markers``: vertical lines, e.g. {"SAM -> SGD": 200}. A test error that was not logged (all NaN: a sweep's
    default ``trajectory_mc = 0``) gets no panel. ``dpi``: default 110.
    """
    # the test error is optional along a trajectory (all NaN: not estimated); NaN elsewhere means a diverged run
    panels = [p for p in PANELS if p[0] in traj.columns and (p[0] != "test_error" or traj[p[0]].notna().any())]
    ncol = 3
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 3.2 * nrow), squeeze=False)
    for ax, (col, label, logy) in zip(axes.flat, panels):
        for k, (name, df) in enumerate(traj.groupby(group, sort=True)):
            stats = df.groupby("step")[col].agg(["mean", "min", "max"])
            colour = f"C{k}"
            ax.plot(stats.index, stats["mean"], color=colour, label=str(name))
            ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.2, linewidth=0)
        if col == "test_error" and bayes_error is not None:
            ax.axhline(bayes_error, color="k", ls=":", lw=1, label=f"Bayes error p={bayes_error:g}")
        for text, x in (markers or {}).items():
            ax.axvline(x, color="grey", ls="--", lw=1)
            ax.text(x, ax.get_ylim()[1], f" {text}", va="top", ha="left", fontsize=7, color="grey")
        if logy:
            ax.set_yscale("symlog", linthresh=1e-3) if col != "train_loss" else ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[min(1, len(panels) - 1)].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110 if dpi is None else dpi)
    plt.close(fig)
