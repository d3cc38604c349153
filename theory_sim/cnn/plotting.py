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

# (column, panel title, whether a log axis may suit it: drawn log only when every value shown is positive)
PANELS = [
    ("train_loss", "training loss", True),
    ("test_error", "test error (Gaussian estimator)", False),
    ("gamma_max", r"signal: $\mathrm{max}_{j,r}\,\gamma_{j,r}$", False),
    ("gamma_mean", r"$\Gamma$: $\mathrm{mean}_{j,r}\,\gamma_{j,r}$", False),
    ("rhobar_mean", r"$\mathrm{Rho}$: $\mathrm{mean}_{j,r,i:y_i=j}\,\Sigma_k\,\bar\rho_{j,r,i,k}$", True),
    ("rhobar_max", r"noise memorisation: $\mathrm{max}\,\bar\rho$", True),
    ("rhobar_clean_mean", r"clean samples: $\mathrm{mean}_i\,\mathrm{max}_r\,\bar\rho_{y_i,r,i}$", False),
    ("rhobar_flipped_mean", r"flipped samples: $\mathrm{mean}_i\,\mathrm{max}_r\,\bar\rho_{y_i,r,i}$", False),
    ("rhounder_min", r"$\mathrm{min}\,\underline{\rho}$", False),
    ("noise_active_frac", r"noise-active fraction: $\langle w_{j,r},\xi_i\rangle>0$", False),
    ("update_noise_active_frac", r"... at the update point ($W+\epsilon$ for SAM)", False),
]

# mathtext names of the swept quantities, for figure text (an axis not listed is set upright with its own name)
SYMBOLS = {"d": "d", "mu_norm": r"\|\mu\|", "n": "n", "P": "P", "sigma_p": r"\sigma_p", "flip_p": "p",
           "c_tau": r"c_\tau", "tau": r"\tau", "eta": r"\eta", "m": "m", "sigma_0": r"\sigma_0"}


def symbol(key: str) -> str:
    """The mathtext (without $) of a swept quantity: mu_norm -> \\|\\mu\\|, sigma_p -> \\sigma_p."""
    return SYMBOLS.get(key, r"\mathrm{%s}" % key.replace("_", r"\_"))


def assignments(values: dict, sep: str = ", ") -> str:
    """Figure text for quantities and their values: {"d": 3200, "sigma_p": 1} -> "$d=3200$, $\\sigma_p=1$"."""
    return sep.join(f"${symbol(k)}={v:g}$" for k, v in values.items())


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
    """Mean over seeds (line) and min-max band of every summary, one colour per value of ``group``, with a key panel
    (colours, lines, what the bands are) in the grid's last slots, so that no slot is left empty.

    ``markers``: vertical lines, e.g. {"SAM -> SGD": 200}, named in the key (a label on the panels would run into
    their titles). A test error that was not logged (all NaN: a sweep's default ``trajectory_mc = 0``) gets no
    panel. A quantity that can span decades (the training loss, Rho) is drawn on a log axis when every value shown
    is positive, else on a linear one (Rho starts at 0). ``dpi``: default 110.
    """
    # the test error is optional along a trajectory (all NaN: not estimated); NaN elsewhere means a diverged run
    panels = [p for p in PANELS if p[0] in traj.columns and (p[0] != "test_error" or traj[p[0]].notna().any())]
    ncol = 3
    spare = -len(panels) % ncol  # slots after the last panel: the key fills them, or a short row of its own
    nrow = -(-len(panels) // ncol) + (spare == 0)
    heights = [1.0] * (nrow - 1) + ([0.35] if spare == 0 else [1.0])
    fig = plt.figure(figsize=(4.3 * ncol, 3.2 * sum(heights)))
    grid = fig.add_gridspec(nrow, ncol, height_ratios=heights)
    groups = list(traj.groupby(group, sort=True))
    handles = {}  # the key's entries, by label, from every panel
    for k, (col, label, may_log) in enumerate(panels):
        ax = fig.add_subplot(grid[k // ncol, k % ncol])
        lows = []
        for j, (name, df) in enumerate(groups):
            stats = df.groupby("step")[col].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], color=f"C{j}", label=str(name))
            ax.fill_between(stats.index, stats["min"], stats["max"], color=f"C{j}", alpha=0.2, linewidth=0)
            lows.append(stats["min"].to_numpy(dtype=float))
        if col == "test_error" and bayes_error is not None:
            ax.axhline(bayes_error, color="k", ls=":", lw=1, label=f"Bayes error $p={bayes_error:g}$")
        for text, x in (markers or {}).items():
            ax.axvline(x, color="grey", ls="--", lw=1, label=f"{text} (step {x:g})")
        low = np.concatenate(lows) if lows else np.array([])
        if may_log and np.isfinite(low).any() and (low[np.isfinite(low)] > 0).all():
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        for handle, text in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(text, handle)
    key = fig.add_subplot(grid[nrow - 1, ncol - spare if spare else 0:])
    key.axis("off")
    seeds = max((df.seed.nunique() for _, df in groups), default=0) if "seed" in traj.columns else 0
    over = f"the {seeds} seeds" if seeds > 1 else "the seeds"
    key.legend(list(handles.values()), list(handles.keys()), loc="center", frameon=False, fontsize=9,
               ncol=max(1, spare if spare else ncol), title=f"lines: mean over {over}\nshaded: min to max over them",
               title_fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110 if dpi is None else dpi)
    plt.close(fig)
