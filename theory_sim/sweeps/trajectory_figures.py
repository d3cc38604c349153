"""Figures of the trajectory claims (docs/science.md §6), drawn from DIR/trajectories.parquet and results.parquet
alone (``python -m theory_sim figures DIR``; ``--cell d=3200,mu_norm=2`` picks the cell of the trajectory plot):

  ratio_law.png          measured Gamma/Rho at the end of epoch 1 against the law's prediction, one point per cell,
                         log-log with the identity line (hollow: cells past the early phase, left out of the fits)
  sam_amplification.png  SAM's Gamma/Rho over SGD's during SAM's phase against d, one line per ||mu|| (and slice),
                         and both update-point noise-active fractions
  collapse.png           SGD's seed-mean test error against x = n ||mu||^4 / (d (P-1)^4 sigma_p^4), beside the same
                         errors against ||mu|| alone
  trajectories_<cell>.png  every summary over the logged steps of one cell, one colour per optimizer variant (no
                         test-error panel when the sweep logged none: trajectory_mc = 0, its default)
Every figure is written as ``fmt`` (png, pdf, svg) at ``dpi``.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from theory_sim.cnn.plotting import assignments, plain_log_ticks, plot_trajectory  # noqa: E402
from theory_sim.config import ConfigError  # noqa: E402
from theory_sim.io import save_figure  # noqa: E402
from theory_sim.sweeps.cells import AXES, CELL  # noqa: E402
from theory_sim.sweeps.trajectory_claims import isotonic_decreasing  # noqa: E402


def parse_cell(text: str | None) -> dict[str, float]:
    """'d=3200,mu_norm=2' -> {'d': 3200.0, 'mu_norm': 2.0} (keys: any sweep axis: d, mu_norm, n, P, sigma_p,
    c_tau, ...)."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in AXES:
            raise ConfigError(f"cell must be KEY=VALUE pairs with KEY a sweep axis ({', '.join(AXES)}), e.g. "
                              f"d=3200,mu_norm=2; got {text!r}")
        try:
            out[key] = float(value)
        except ValueError:
            raise ConfigError(f"cell value of {key} must be a number, got {value!r}") from None
    return out


def select_cell(traj: pd.DataFrame, wanted: dict[str, float], keys=CELL) -> dict[str, float]:
    """The grid cell ``wanted`` names: each given value must be on the grid to the 6 significant digits the figure
    names print (mu_norm=1.53586 is the grid's 1.5358649...); a value off the grid is refused with the valid ones.
    Unspecified dimensions: the largest d, the median ||mu||, the first value of the others."""
    unknown = set(wanted) - set(keys)
    if unknown:
        raise ConfigError(f"cell keys {sorted(unknown)} are not axes of this sweep (its cells: {', '.join(keys)})")
    cell, off_grid = {}, []
    for key in keys:
        values = np.sort(traj[key].unique().astype(float))
        if key in wanted:
            hits = values[np.isclose(values, wanted[key], rtol=1e-5, atol=0)]
            if not len(hits):
                off_grid.append(f"{key}={wanted[key]:g} is not on the grid (valid: "
                                f"{', '.join(f'{v:g}' for v in values)})")
                continue
            pick = hits[0]
        else:
            pick = {"d": values[-1], "mu_norm": values[len(values) // 2]}.get(key, values[0])
        cell[key] = float(pick)
    if off_grid:
        raise ConfigError("cell " + "; ".join(off_grid))
    return cell


def _save(fig, path: Path, dpi: int | None = None) -> Path:
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi or 100)
    plt.close(fig)
    return path


def ratio_law_figure(table: pd.DataFrame, name: str, figdir: Path, fmt: str = "png", dpi: int | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for k, (lab, g) in enumerate(table.groupby("label")):
        for early, marker_face in ((True, f"C{k}"), (False, "none")):
            h = g[g.early == early]
            ax.scatter(h.predicted, h.measured, s=18, facecolors=marker_face, edgecolors=f"C{k}",
                       label=f"{lab}: {'early phase (fitted)' if early else 'past the early phase'}")
    lim = np.array([np.nanmin(table[["predicted", "measured"]].to_numpy()),
                    np.nanmax(table[["predicted", "measured"]].to_numpy())])
    ax.plot(lim, lim, "k-", lw=0.8, label="identity")
    ax.fill_between(lim, 0.8 * lim, 1.25 * lim, color="grey", alpha=0.15,
                    label=r"shaded: $[0.8, 1.25]\times$ prediction")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"predicted $(1-2p)\,n\|\mu\|^2 / ((P-1)\,\sigma_p^2\, d)$")
    ax.set_ylabel(r"measured $\Gamma/\mathrm{Rho}$ at the end of epoch 1")
    ax.set_title(f"{name}: the early-phase ratio law, one point per cell", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, figdir / f"ratio_law.{fmt}", dpi)


def amplification_figure(table: pd.DataFrame, name: str, figdir: Path, fmt: str = "png",
                         dpi: int | None = None) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    others = [k for k in table.columns if k in AXES and k not in ("d", "mu_norm") and table[k].nunique() > 1]
    mus = np.sort(table.mu_norm.unique())
    # one line style per slice of the other axes, in sorted order (a hash would vary from run to run)
    slices = sorted(set(table[others].itertuples(index=False, name=None))) if others else [()]
    for key, g in table.groupby(["label", *others]):
        key = key if isinstance(key, tuple) else (key,)
        style = ["-", "--", ":", "-."][slices.index(tuple(key[1:])) % 4]
        for mu, h in g.groupby("mu_norm"):
            h = h.sort_values("d")
            colour = plt.cm.viridis(np.searchsorted(mus, mu) / max(1, len(mus) - 1))
            axes[0].plot(h.d, h.amplification, style, marker="o", ms=3, color=colour, lw=1)
        mean = g.groupby("d")[["noise_active_sam", "noise_active_sgd"]].mean()
        tag = assignments(dict(zip(others, key[1:])))
        axes[1].plot(mean.index, mean.noise_active_sam, style, marker="o", color="C1", label=f"SAM {tag}".strip())
        axes[1].plot(mean.index, mean.noise_active_sgd, style, marker="s", color="C0", label=f"SGD {tag}".strip())
    axes[0].axhline(2.0, color="k", ls=":", lw=1)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=matplotlib.colors.LogNorm(mus.min(), mus.max()))
    fig.colorbar(sm, ax=axes[0], label=r"$\|\mu\|$")
    axes[0].set_yscale("log")
    axes[0].set_ylabel(r"SAM's $\Gamma/\mathrm{Rho}$ over SGD's (SAM's phase)")
    axes[0].set_title("SAM amplification (dotted: the claim's 2x)", fontsize=10)
    axes[1].set_ylabel(r"update-point noise-active fraction (mean over $\|\mu\|$)")
    axes[1].set_title(r"noise terms switched off at $W+\epsilon$", fontsize=10)
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("$d$")
        ax.grid(alpha=0.3, which="both")
    plain_log_ticks(axes[0].yaxis)  # an amplification of 2-20: plain numbers, not 2 x 10^0
    fig.suptitle(f"{name}: SAM vs SGD during SAM's phase", fontsize=10)
    return _save(fig, figdir / f"sam_amplification.{fmt}", dpi)


def collapse_figure(table: pd.DataFrame, name: str, figdir: Path, fmt: str = "png", dpi: int | None = None) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    ds = np.sort(table.d.unique())
    for ax, col, xlabel in ((axes[0], "x", r"$x = n\|\mu\|^4 / (d\,(P-1)^4\,\sigma_p^4)$"),
                            (axes[1], "mu_norm", r"$\|\mu\|$ alone")):
        xs = table[col].to_numpy(dtype=float)
        sc = ax.scatter(xs, table.test_error, c=np.log(table.d), cmap="plasma", s=14,
                        vmin=np.log(ds.min()), vmax=np.log(ds.max()) + 1e-9)
        ok = np.isfinite(xs) & (xs > 0)
        order = np.argsort(xs[ok])
        fit = isotonic_decreasing(xs[ok], table.test_error.to_numpy()[ok])
        rms = float(np.sqrt(np.mean((table.test_error.to_numpy()[ok] - fit) ** 2)))
        ax.plot(xs[ok][order], fit[order], "k-", lw=1, label=f"best decreasing fit (residual RMS {rms:.3f})")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    plain_log_ticks(axes[1].xaxis)  # ||mu|| spans 1-2 decades: matplotlib's minor labels would overlap
    cb = fig.colorbar(sc, ax=axes[1])
    cb.set_label(r"$\log d$")
    axes[0].set_ylabel("SGD: seed-mean test error")
    fig.suptitle(f"{name}: does SGD's test error collapse onto one variable?", fontsize=10)
    return _save(fig, figdir / f"collapse.{fmt}", dpi)


def cell_figure(traj: pd.DataFrame, cell: dict[str, float], name: str, figdir: Path, bayes: float | None,
                fmt: str = "png", dpi: int | None = None) -> Path:
    sel = traj
    for key, value in cell.items():
        sel = sel[np.isclose(sel[key].astype(float), value)]
    tag = "_".join(f"{k}{v:g}" for k, v in cell.items())
    path = figdir / f"trajectories_{tag}.{fmt}"
    plot_trajectory(sel, path, group="label", bayes_error=bayes, dpi=dpi,
                    title=f"{name}: {assignments(cell)}")
    return path


def draw_trajectory_figures(traj: pd.DataFrame, results: pd.DataFrame, spec, figdir: Path,
                            cell: dict[str, float] | None = None, fmt: str = "png",
                            dpi: int | None = None) -> list[Path]:
    from theory_sim.sweeps.trajectory_claims import trajectory_claims

    tables = trajectory_claims(traj, results, spec)["tables"]
    paths = []
    if not tables["ratio_law"].empty:
        paths.append(ratio_law_figure(tables["ratio_law"], spec.name, figdir, fmt, dpi))
    if not tables["amplification"].empty:
        paths.append(amplification_figure(tables["amplification"], spec.name, figdir, fmt, dpi))
    coll = tables["collapse"]
    if not coll.empty and any(coll[k].nunique() > 1 for k in CELL if k != "mu_norm"):
        paths.append(collapse_figure(coll, spec.name, figdir, fmt, dpi))
    keys = spec.cell_key
    paths.append(cell_figure(traj, select_cell(traj, cell or {}, keys), spec.name, figdir,
                             float(results.flip_p.mean()), fmt, dpi))
    return paths

