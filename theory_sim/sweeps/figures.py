"""``python -m theory_sim figures DIR``: every figure of a sweep, regenerated from DIR/results.parquet alone.

For each slice of the swept axes other than the two drawn (``--x``, default d; ``--y``, default ||mu||),
``phase_diagram[...].png`` (``phase_Y_vs_X[...].png`` for other axes):
  row 1: seed-averaged test error of every optimizer variant (shared colour scale 0..0.5) and, with two or more
         variants, the difference of the second and the first (e.g. SAM - SGD, diverging colours);
  row 2: the benign / intermediate / harmful map of every variant: benign if the mean test error is <= the benign
         threshold p + margin (0.5 - p), harmful if >= p + 0.1 (docs/science.md §5), stated on the figure.
Every panel is a pcolormesh with correct cell edges (geometric midpoints on log-spaced axes, which are drawn log);
the located boundaries ||mu||*(d) of every variant and their fitted power laws are overlaid (the first variant's in
black, the others' white outlined in black). Grey cells (every run diverged) are named in the title only when drawn.
The whole slice is drawn by ``phase_diagram``, layer by layer.
With more than three variants the panels wrap into rows of at most four (each variant's error above its map).
With n, P or sigma_p swept, ``boundary_scaling.png`` plots ||mu||* against them on log-log axes with the fitted and
the predicted slopes. ``--format pdf|svg|png`` and ``--dpi`` choose how every figure is written.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap, TwoSlopeNorm  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from theory_sim.cnn.plotting import assignments, plain_log_ticks, symbol  # noqa: E402
from theory_sim.io import save_figure  # noqa: E402
from theory_sim.sweeps.cells import HARMFUL_MARGIN, harmful_threshold  # noqa: E402
from theory_sim.sweeps.spec import log_spaced  # noqa: E402
from theory_sim.claims import CELL_PARAMETERS, CLAIMS, is_sam, is_sgd, predicted_slope, variant_parameters  # noqa: E402
from theory_sim.sweeps.verify import boundary_claims, fit_slopes, located_boundaries  # noqa: E402

LINESTYLES = ["-", "--", ":", "-."]
FORMATS = ("png", "pdf", "svg")
MAX_COLUMNS = 4  # phase-diagram panels per row: more variants wrap into further rows


def log_axis(axis) -> bool:
    """Whether a swept axis is drawn log: log_spaced's rule, and also two explicit positive values a factor >= 2
    apart (e.g. d = 400, 1600), whose linear cell edges would otherwise run into negative values."""
    if log_spaced(axis):
        return True
    v = np.sort(np.asarray(axis.values if axis is not None and axis.spacing == "list" else [], dtype=float))
    return len(v) == 2 and v[0] > 0 and v[1] >= 2 * v[0]


def titled_layout(fig, text: str, fontsize: float = 10) -> None:
    """A suptitle wrapped to the figure's width (a narrow figure would clip one long line at both ends), and a
    tight layout of the panels below it (tight_layout alone lets a multi-line suptitle overlap the top titles)."""
    chars = max(30, int(fig.get_figwidth() * 72 / (0.52 * fontsize)))
    lines = [wrapped for line in text.split("\n") for wrapped in textwrap.wrap(line, chars)]
    fig.suptitle("\n".join(lines), fontsize=fontsize)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.08 * len(lines) * fontsize / 10 / fig.get_figheight()))


def cell_edges(values: np.ndarray, log: bool) -> np.ndarray:
    """Edges around sorted cell centres: midpoints (geometric on a log axis), the ends mirrored outwards."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return np.array([v[0] / 1.2, v[0] * 1.2]) if log else np.array([v[0] - 0.5, v[0] + 0.5])
    x = np.log(v) if log else v
    mid = (x[1:] + x[:-1]) / 2
    edges = np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])
    return np.exp(edges) if log else edges


def _overlay(ax, bnd: pd.DataFrame, fits: pd.DataFrame, labels: list[str], sl: dict, x: str) -> None:
    """The located boundaries ||mu||*(x) of every variant in this slice, and (x = d) their fitted power laws: the
    first variant black, the others white outlined in black (a bare white line vanishes in the legend's pale box and
    on the maps' yellow)."""
    for k, label in enumerate(labels):
        b = bnd[(bnd.label == label)].sort_values(x)
        for key, val in sl.items():
            b = b[b[key] == val]
        ok = b[b.status == "ok"]
        colour = "k" if k == 0 else "w"
        outline = [] if k == 0 else [patheffects.withStroke(linewidth=2.4, foreground="k")]
        ls = LINESTYLES[k % len(LINESTYLES)]
        if len(ok):
            ax.plot(ok[x], ok.mu_star, ls, color=colour, marker="o", ms=3, mec="k", mew=0.6, lw=1.3,
                    path_effects=outline, label=f"{label}: boundary")
        f = fits[(fits.label == label) & (fits.dim == x)] if not fits.empty else fits
        for key, val in sl.items():
            if not f.empty and key in f:
                f = f[f[key] == val]
        if len(f) and np.isfinite(f.slope.iloc[0]) and (b[x] > 0).all():
            xs = np.geomspace(b[x].min(), b[x].max(), 50)
            ax.plot(xs, np.exp(f.intercept.iloc[0]) * xs ** f.slope.iloc[0], ls, color=colour, lw=0.8,
                    path_effects=[patheffects.withStroke(linewidth=1.6, foreground="k")] if k else [],
                    label=f"{label}: fit slope {f.slope.iloc[0]:.2f}")


def draw_figures(out: str | Path, cell: dict[str, float] | None = None, x: str = "d",
                 y: str = "mu_norm", fmt: str = "png", dpi: int | None = None) -> list[Path]:
    """Every figure of DIR from its tables: the phase diagrams over (x, y) (results.parquet; one file per slice of
    the other swept axes) and, when the sweep kept them, the trajectory figures (trajectories.parquet; ``cell`` picks
    the cell of the per-cell trajectory plot). ``fmt``: png, pdf or svg; ``dpi``: default 100 (110 for the
    per-cell trajectory figure)."""
    from theory_sim.config import ConfigError, check_dpi
    from theory_sim.sweeps.store import load_spec, read_results, read_trajectories
    from theory_sim.sweeps.trajectory_figures import draw_trajectory_figures, select_cell

    out = Path(out)
    spec = load_spec(out)
    swept = [a.name for a in spec.axes]
    for name, axis in (("x", x), ("y", y)):
        if axis not in swept:
            raise ConfigError(f"{name} must be one of the swept axes {swept}, got {axis!r}")
    if x == y:
        raise ConfigError(f"x and y must be two different axes, got {x!r} twice")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_dpi(dpi)
    df = read_results(out)
    traj = read_trajectories(out)
    if traj is not None:  # an off-grid --cell is refused before any figure is drawn
        cell = select_cell(traj, cell or {}, spec.cell_key)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    p = float(df.flip_p.mean())
    thr_benign, thr_harmful = spec.benign_threshold(p), harmful_threshold(p)
    labels = [o.label for o in spec.optimizers]
    dims = spec.cell_dims
    cells, bnd = located_boundaries(df, spec, thr_benign)
    fits = fit_slopes(bnd, dims)
    claims = boundary_claims(df, spec, thr_benign, bnd, cells) if y == "mu_norm" else []
    theorem_of = {lab: theorem_claim(v) for lab, v in variant_parameters(df).items()}
    log_x, log_y = log_axis(spec.axis(x)), log_axis(spec.axis(y))
    err = df.test_error.where(~df.diverged.astype(bool), np.nan)
    rest = [k for k in (*dims, "mu_norm") if k not in (x, y)]
    mean = df.assign(err=err).groupby(["label", *rest, x, y]).err.mean().reset_index()
    paths = []
    slices = mean[rest].drop_duplicates().sort_values(rest).to_dict(orient="records")
    varied = [k for k in rest if mean[k].nunique() > 1]
    for sl in slices:
        m = mean
        for key, val in sl.items():
            m = m[m[key] == val]
        xs, ys = np.sort(m[x].unique()), np.sort(m[y].unique())
        dx, dy = cell_edges(xs, log_x), cell_edges(ys, log_y)
        grids = {lab: m[m.label == lab].pivot(index=y, columns=x, values="err")
                 .reindex(index=ys, columns=xs).to_numpy() for lab in labels}
        cell_slice = {k: v for k, v in sl.items() if k in dims}
        rows = df
        for key, val in sl.items():
            rows = rows[rows[key] == val]
        outside = {lab: ~domain_grid(rows[rows.label == lab], theorem_of[lab], x, y, xs, ys) for lab in labels}
        laws = [c for c in claims if c.get("dim") == x and all(c["fixed"].get(k) in (v, "any")
                                                               for k, v in cell_slice.items() if k in c["fixed"])]
        fig = phase_diagram(grids, labels, (x, y), (dx, dy), (log_x, log_y), (thr_benign, thr_harmful),
                            (bnd, fits, cell_slice, laws) if y == "mu_norm" else None, outside)
        tag = assignments({k: v for k, v in sl.items() if k in varied or k in ("n", "P", "sigma_p")})
        titled_layout(fig, f"{spec.name}: {tag}, $p={p:g}$, {df.seed.nunique()} seeds/cell.\nBenign: mean test "
                           f"error $\\leq{thr_benign:.3f}$ $(p+{spec.benign_margin:g}(0.5-p))$; harmful: "
                           f"$\\geq{thr_harmful:.3f}$ $(p+{HARMFUL_MARGIN:g})${diverged_note(grids)}"
                           f"{domain_note(outside)}")
        stem = "phase_diagram" if (x, y) == ("d", "mu_norm") else f"phase_{y}_vs_{x}"
        # one file per slice: n, P, sigma_p always named (the file names of earlier sweeps), other axes when varied
        tags = [k for k in rest if k in ("n", "P", "sigma_p") or k in varied]
        suffix = "" if len(slices) == 1 else "".join(f"_{_short(k)}{sl[k]:g}" for k in tags)
        path = figdir / f"{stem}{suffix}.{fmt}"
        save_figure(fig, path, dpi=dpi or 100)
        plt.close(fig)
        paths.append(path)
    swept_dims = [dim for dim in dims[1:] if bnd[dim].nunique() >= 2]
    if swept_dims:
        paths.append(_scaling_figure(bnd, fits, swept_dims, labels, spec, figdir, dims, fmt, dpi))
    if traj is not None:
        paths += draw_trajectory_figures(traj, df, spec, figdir, cell, fmt, dpi)
    return paths


def theorem_claim(variant: dict):
    """The theorem whose domain a variant's panels shade: SAM's for [C23]'s SAM, SGD's for every other variant (no
    theorem covers Rand-SAM, multi-step SAM, ...: SGD's assumptions on d, the init and the step still apply)."""
    return CLAIMS["sam_boundary_slope"] if is_sam(variant) else CLAIMS["sgd_boundary_slope"]


def domain_grid(rows: pd.DataFrame, claim, x: str, y: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(len(ys), len(xs)) bool: the cells of one variant's panel inside ``claim``'s domain (theory_sim.claims)."""
    cols = [c for c in CELL_PARAMETERS if c in rows.columns and c not in (x, y)]
    params = rows.groupby([y, x], sort=True)[cols].first().reset_index()
    inside = pd.Series(claim.in_domain(params), index=pd.MultiIndex.from_frame(params[[y, x]]))
    return inside.reindex(pd.MultiIndex.from_product([ys, xs])).fillna(False).to_numpy(bool).reshape(len(ys), len(xs))


def domain_note(outside: dict) -> str:
    """The title's note on hatched cells, those outside a theorem's domain: only when there are some."""
    return ("; hatched: outside the theorem's domain (docs/science.md §5.6)"
            if any(o.any() for o in outside.values()) else "")


def diverged_note(grids: dict) -> str:
    """The title's note on grey cells, those where every run diverged (their mean is NaN): only when there are some."""
    return "; grey: every run diverged" if any(np.isnan(g).any() for g in grids.values()) else ""


def phase_diagram(grids: dict, labels: list[str], names: tuple, edges: tuple, logs: tuple, thresholds: tuple,
                  boundary: tuple | None = None, outside: dict | None = None):
    """One slice's phase diagram (the figure, untitled), drawn layer by layer. ``grids``: each variant's seed-mean
    test error (y, x), NaN where every run diverged; ``names``, ``edges``, ``logs``: the (x, y) axes, their cell edges
    and whether each is drawn log; ``thresholds``: (benign, harmful); ``boundary``: (boundaries, fits, slice, claim
    lines) to overlay, or None (y is not ||mu||); ``outside``: per variant, (y, x) cells outside its theorem's domain,
    hatched over the maps."""
    (x, y), (dx, dy), (log_x, log_y) = names, edges, logs
    # layer 1: the maps (error heatmaps, benign / between / harmful, the difference of the first two variants)
    fig, tops, bottoms = _phase_panels(grids, labels, dx, dy, *thresholds)
    # layer 2: the cells outside each variant's theorem's domain (the difference panel: outside either's)
    if outside:
        for k, lab in enumerate(labels):
            _hatch(tops[k], outside[lab], dx, dy)
            _hatch(bottoms[k], outside[lab], dx, dy)
        if len(labels) >= 2:
            _hatch(tops[-1], outside[labels[0]] | outside[labels[1]], dx, dy)
    # layer 3: the located boundaries; all variants' together in the last panel, with their fitted laws and bands
    if boundary is not None and len(labels) >= 2:
        _boundaries_panel(bottoms[-1], boundary[0], labels, boundary[2], x, dx, dy, boundary[3:][0] if
                          len(boundary) > 3 else ())
    own = len(labels) > 3  # with many variants each panel shows its own boundary only (the last panel shows all)
    for k, ax in enumerate([*tops, *bottoms]):
        column = k % len(tops)
        if boundary is not None and (ax is not bottoms[-1] or len(labels) < 2):
            shown = labels[:2] if column == len(labels) else [labels[column]]
            _overlay(ax, boundary[0], boundary[1], shown if own else labels, boundary[2], x)
        ax.set_xscale("log" if log_x else "linear")
        ax.set_yscale("log" if log_y else "linear")
        ax.set_xlim(dx[0], dx[-1])
        ax.set_ylim(dy[0], dy[-1])
        for axis, log in ((ax.xaxis, log_x), (ax.yaxis, log_y)):
            if log:
                plain_log_ticks(axis)
        ax.set_xlabel({"d": "dimension $d$"}.get(x, f"${symbol(x)}$"))
        ax.set_ylabel({"mu_norm": r"signal strength $\|\mu\|$"}.get(y, f"${symbol(y)}$"))
    for ax in tops if own else tops[:1]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    return fig


def _short(key: str) -> str:
    """File-name tag of an axis (the historical n / P / s for sigma_p; other axes by name)."""
    return {"sigma_p": "s"}.get(key, key)


def _phase_panels(grids, labels, dx, dy, thr_benign, thr_harmful):
    """Per variant, its mean test error above its benign / between / harmful map; after them the second minus the
    first (above the panel for the located boundaries). Pairs of rows of at most MAX_COLUMNS columns. Returns the
    figure and the upper and lower panel of every column, in order."""
    items = len(labels) + (1 if len(labels) >= 2 else 0)
    ncol = min(items, MAX_COLUMNS)
    blocks = -(-items // ncol)
    fig, axes = plt.subplots(2 * blocks, ncol, figsize=(max(4.6 * ncol, 7.5), 7.6 * blocks), squeeze=False)
    tops = [axes[2 * (i // ncol), i % ncol] for i in range(items)]
    bottoms = [axes[2 * (i // ncol) + 1, i % ncol] for i in range(items)]
    for i in range(items, blocks * ncol):  # the empty end of the last pair of rows
        axes[2 * (i // ncol), i % ncol].axis("off")
        axes[2 * (i // ncol) + 1, i % ncol].axis("off")
    for k, lab in enumerate(labels):
        ax = tops[k]
        mesh = ax.pcolormesh(dx, dy, grids[lab], cmap="viridis", vmin=0.0, vmax=0.5, shading="flat")
        ax.set_title(f"{lab}: mean test error", fontsize=10)
        fig.colorbar(mesh, ax=ax, fraction=0.046)
        ax = bottoms[k]
        cat = np.where(np.isnan(grids[lab]), np.nan,
                       np.where(grids[lab] <= thr_benign, 0, np.where(grids[lab] >= thr_harmful, 2, 1)))
        cmap = ListedColormap(["#4daf4a", "#ffd92f", "#e41a1c"]).with_extremes(bad="#bbbbbb")
        mesh = ax.pcolormesh(dx, dy, cat, cmap=cmap, norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3), shading="flat")
        cb = fig.colorbar(mesh, ax=ax, fraction=0.046, ticks=[0, 1, 2])
        cb.ax.set_yticklabels(["benign", "between", "harmful"], fontsize=8)
        ax.set_title(f"{lab}: benign / harmful", fontsize=10)
    if len(labels) >= 2:
        diff = grids[labels[1]] - grids[labels[0]]
        vmax = max(1e-3, float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1e-3)
        ax = tops[-1]
        mesh = ax.pcolormesh(dx, dy, diff, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -vmax, vmax), shading="flat")
        fig.colorbar(mesh, ax=ax, fraction=0.046)
        ax.set_title(f"{labels[1]} - {labels[0]}: test error", fontsize=10)
        bottoms[-1].axis("off")
    return fig, tops, bottoms


HATCH = dict(hatch="////", fill=False, edgecolor=(0.0, 0.0, 0.0, 0.35), linewidth=0.0)


def _hatch(ax, outside: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> None:
    """Hatch the cells outside a theorem's domain: a whole column at once where the domain does not depend on y."""
    for j in range(outside.shape[1]):
        if outside[:, j].all():
            ax.add_patch(Rectangle((dx[j], dy[0]), dx[j + 1] - dx[j], dy[-1] - dy[0], **HATCH))
            continue
        for i in np.nonzero(outside[:, j])[0]:
            ax.add_patch(Rectangle((dx[j], dy[i]), dx[j + 1] - dx[j], dy[i + 1] - dy[i], **HATCH))


def _law_line(ax, law_row: dict, color: str) -> None:
    """A fitted boundary law mu* = exp(a) x^s over the range it was fitted on, with the band of the slope's 95%
    interval pivoting at the fit's centre (docs/science.md §5.6)."""
    law = law_row["law"]
    t = np.linspace(law["log_x_min"], law["log_x_max"], 50)
    centre = law["intercept"] + law_row["estimate"] * law["log_x_mean"]
    ax.plot(np.exp(t), np.exp(law["intercept"] + law_row["estimate"] * t), "-", color=color, lw=1.2)
    if np.isfinite(law_row["ci_low"]):
        ends = [centre + s * (t - law["log_x_mean"]) for s in (law_row["ci_low"], law_row["ci_high"])]
        ax.fill_between(np.exp(t), np.exp(np.minimum(*ends)), np.exp(np.maximum(*ends)), color=color, alpha=0.2,
                        lw=0)


def _boundaries_panel(ax, bnd, labels, sl, x, dx, dy, laws=()) -> None:
    """All variants' located boundaries ||mu||*(x) together, each with its fitted law and the band of its slope's
    interval: the claim's fit over the in-domain cells where it has one, else the exploratory fit over every cell."""
    ax.axis("on")
    for k, lab in enumerate(labels):
        b = bnd[bnd.label == lab]
        for key, val in sl.items():
            b = b[b[key] == val]
        b = b[b.status == "ok"].sort_values(x)
        fit = [c for c in laws if c["variant"] == lab and c.get("law") and np.isfinite(c["estimate"])]
        fit = sorted(fit, key=lambda c: c["scope"] != "in domain")[:1]
        text = ""
        if fit:
            c = fit[0]
            _law_line(ax, c, f"C{k}")
            where = "in domain" if c["scope"] == "in domain" else "all cells"
            text = f": slope {c['estimate']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] ({where})"
        ax.plot(b[x], b.mu_star, linestyle="none", marker="o", ms=3, color=f"C{k}", label=lab + text)
    ax.set_xlim(dx[0], dx[-1])
    ax.set_ylim(dy[0], dy[-1])
    ax.set_title(f"located boundaries $\\|\\mu\\|^*({symbol(x)})$, fits with 95% bands", fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    ax.legend([*handles, Patch(**HATCH)], [*names, "hatched: outside the theorem's domain (docs/science.md §5.6)"],
              fontsize=7)
    ax.grid(alpha=0.3)


def _scaling_figure(bnd, fits, swept, labels, spec, figdir: Path, dims, fmt: str = "png",
                    dpi: int | None = None) -> Path:
    """||mu||* against each swept dimension, one line per combination of the other dimensions (log-log); the fitted
    and predicted slopes above each panel, the legend below it (both clear of the data)."""
    others_of = {dim: [x for x in dims if x != dim and bnd[x].nunique() > 1] for dim in swept}
    lines = max(len(bnd[others].drop_duplicates()) if others else 1 for others in others_of.values())
    legend_rows = -(-len(labels) * lines // 3)
    fig, axes = plt.subplots(1, len(swept), figsize=(5.6 * len(swept), 4.6 + 0.13 * legend_rows), squeeze=False)
    optimizer_of = {o.label: o.optimizer for o in spec.optimizers}
    for ax, dim in zip(axes[0], swept):
        others = others_of[dim]
        notes = []
        for k, lab in enumerate(labels):
            b = bnd[(bnd.label == lab) & (bnd.status == "ok")]
            groups = list(b.groupby(others)) if others else [((), b)]
            for j, (key, g) in enumerate(groups):
                key = key if isinstance(key, tuple) else (key,)
                g = g.sort_values(dim)
                tag = assignments(dict(zip(others, key)))
                ax.plot(g[dim], g.mu_star, LINESTYLES[k % 4], marker="o", ms=3,
                        color=plt.cm.viridis(j / max(1, len(groups) - 1)), label=f"{lab} {tag}")
            names = [dim] + (["P-1"] if dim == "P" else [])
            for name in names:
                f = fits[(fits.label == lab) & (fits.dim == name)] if not fits.empty else fits
                pred = predicted_slope(optimizer_of[lab], name)
                if len(f):  # no line with 3 located boundaries: no slope to give
                    slope = f"{np.nanmedian(f.slope):.2f}" if np.isfinite(f.slope).any() else "n/a"
                    notes.append(f"{lab}: slope in ${symbol(dim)}{'-1' if name == 'P-1' else ''}$ "
                                 f"{slope} (median over lines)" + (f", theory {pred:g}" if pred is not None else ""))
        ax.set_title("\n".join(notes), fontsize=8, loc="left")
        if not any(len(line.get_xdata()) for line in ax.get_lines()):   # no located boundary: say so
            ax.set_xlim(bnd[dim].min(), bnd[dim].max() * 1.01)
            ax.set_ylim(1.0, 10.0)
            ax.text(0.5, 0.5, "no located boundary", transform=ax.transAxes, ha="center", va="center")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax.xaxis)
        plain_log_ticks(ax.yaxis)
        ax.set_xlabel(f"${symbol(dim)}$")
        ax.set_ylabel(r"boundary $\|\mu\|^*$")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:  # no located boundary at all: nothing to name
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    titled_layout(fig, f"{spec.name}: the benign/harmful boundary against the swept dimensions (log-log)")
    path = figdir / f"boundary_scaling.{fmt}"
    save_figure(fig, path, dpi=dpi or 100)
    plt.close(fig)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="sweep directory with results.parquet")
    p.add_argument("--x", default="d", help="horizontal axis of the phase diagrams: any swept axis (default d)")
    p.add_argument("--y", default="mu_norm", help="vertical axis (default mu_norm; the located boundaries ||mu||* "
                                                  "are overlaid when it is mu_norm)")
    p.add_argument("--cell", default=None,
                   help="cell of the per-cell trajectory figure, e.g. d=3200,mu_norm=2 (grid values, to 6 significant "
                        "digits; an off-grid value lists the valid ones; default: the largest d and the median ||mu||)")
    p.add_argument("--gallery", type=Path, default=None,
                   help="also copy the figures (and verify.md) there as <sweep name>*.png, e.g. figures/")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="png", help="file format of every figure")
    p.add_argument("--dpi", type=int, default=None,
                   help="resolution (for png; pdf/svg embed rasters at it); default 100, 110 for the trajectory figure")


def run(args: argparse.Namespace) -> int:
    import shutil

    from theory_sim.config import ConfigError, check_dpi
    from theory_sim.sweeps.store import load_spec
    from theory_sim.sweeps.trajectory_figures import parse_cell

    cell = parse_cell(args.cell)
    check_dpi(args.dpi)   # (draw_figures checks it too, for the Python API)
    if args.gallery is not None:
        check_gallery(args.gallery)
    if not (args.dir / "results.parquet").exists():
        raise ConfigError(f"DIR must hold results.parquet (run or finish the sweep first): {args.dir}")
    name = load_spec(args.dir).name
    for path in draw_figures(args.dir, cell, args.x, args.y, args.fmt, args.dpi):
        print(f"figure: {path}")
        if args.gallery is not None:
            args.gallery.mkdir(parents=True, exist_ok=True)
            target = path.name.replace("phase_diagram", name).replace("boundary_scaling", f"{name}_boundary")
            target = gallery_path(args.gallery, target if target != path.name else f"{name}_{path.name}")
            shutil.copy(path, target)
            print(f"  -> {target}")
    if args.gallery is not None and (args.dir / "verify.md").exists():
        shutil.copy(args.dir / "verify.md", gallery_path(args.gallery, f"{name}_verify.md"))
    return 0


def check_gallery(gallery: Path) -> None:
    """``--gallery``: a directory (new or existing), checked before any figure is drawn."""
    from theory_sim.config import ConfigError

    if gallery.exists() and not gallery.is_dir():
        raise ConfigError(f"gallery must be a directory (new or existing), but {gallery} is an existing file")


def gallery_path(gallery: Path, name: str) -> Path:
    """``gallery / name``, refused unless it stays inside ``gallery`` (the name comes from the spec's name)."""
    from theory_sim.config import ConfigError

    target = gallery / name
    if Path(name).name != name or target.resolve().parent != gallery.resolve():
        raise ConfigError(f"gallery file names must stay inside {gallery}, got {name!r}")
    return target
