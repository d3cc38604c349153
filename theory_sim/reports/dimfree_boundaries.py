"""The benign boundary's asymptotics in d (docs/science.md §5.8): local slopes d log ||mu||* / d log d of SGD's and
SAM -> SGD's boundaries under the two protocols of §5.6, from a boundary search's tables
(``studies/dimfree_boundaries.toml``), with seed-bootstrap intervals from verify's machinery (``boundaries``,
``resampled_boundaries``, ``fit_slopes``, ``resampled_slopes``) and the theorems' domain marked.

The domain, with every unknown constant set to 1 (a convention, stated in the report): d >= n^2 log(n m / delta)
(delta = 0.1), an init scale sigma_0 P sigma_p sqrt(d) <= 0.1 and a per-step noise memorisation
eta (P - 1) sigma_p^2 d / (2 B m) <= 1 (docs/science.md §5.3, §5.6).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.study import Study, markdown_table
from theory_sim.sweeps.cells import seed_resamples
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.verify import boundaries, cell_arrays, fit_slopes, resampled_boundaries, resampled_slopes

WINDOW = 3          # consecutive d values per local slope: one decade at half-decade spacing
TAIL_FROM = 1e5     # the asymptotic slope: every d >= this (three decades up to 10^8)
DELTA = 0.1
INIT_MAX, STEP_MAX = 0.1, 1.0
PREDICTED = {"sgd": 0.25, "sam": 0.0}
N_BOOT = 400


def in_domain(df: pd.DataFrame) -> pd.Series:
    """Per run: inside the theorems' domain (module docstring)."""
    s0 = df.sigma_0 * df.P * df.sigma_p * np.sqrt(df.d)
    nu = df.eta * (df.P - 1) * df.sigma_p ** 2 * df.d / (2 * df.batch_size * df.m)
    return (df.d >= df.n ** 2 * np.log(df.n * df.m / DELTA)) & (s0 <= INIT_MAX) & (nu <= STEP_MAX)


def slopes(results: pd.DataFrame, spec: SweepSpec, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(boundaries per cell with its domain flag, local slopes per window, tail slopes) with 95% intervals."""
    dims = spec.cell_dims
    threshold = spec.benign_threshold(float(results.flip_p.iloc[0]))
    cells = cell_arrays(results, dims)
    bnd = boundaries(cells, threshold, dims=dims)
    boot = resampled_boundaries(cells, threshold, seed_resamples(int(results.seed.nunique()), N_BOOT, seed))
    flags = results.assign(_in=in_domain(results)).groupby(["label", *dims])._in.all()
    bnd["in_domain"] = [bool(flags[k]) for k in bnd[["label", *dims]].itertuples(index=False, name=None)]
    optimizer = {o.label: o.optimizer for o in spec.optimizers}
    local, tail = [], []
    for (label, n), g in bnd.groupby(["label", "n"]):
        g = g.sort_values("d")
        for lo in range(len(g) - WINDOW + 1):
            idx = g.index[lo:lo + WINDOW]
            local.append(_slope_row(bnd, boot, idx, dims, label, n, optimizer[label]))
        idx = g.index[g.d >= TAIL_FROM]
        tail.append(_slope_row(bnd, boot, idx, dims, label, n, optimizer[label]))
    return bnd, pd.DataFrame(local), pd.DataFrame(tail)


def _slope_row(bnd, boot, idx, dims, label, n, opt) -> dict:
    sub = bnd.loc[idx]
    fits = fit_slopes(sub.reset_index(drop=True), dims)
    row = fits[fits.dim == "d"] if len(fits) else fits
    slope = float(row.slope.iloc[0]) if len(row) else float("nan")
    lo = hi = float("nan")
    if len(row):
        s = resampled_slopes(sub.reset_index(drop=True), boot[bnd.index.get_indexer(idx)], dims)[row.index[0]]
        s = s[np.isfinite(s)]
        if len(s) >= 10:
            lo, hi = np.percentile(s, [2.5, 97.5])
    return {"label": label, "optimizer": opt, "protocol": label.split("_")[-1], "n": int(n),
            "d_low": int(sub.d.min()), "d_high": int(sub.d.max()),
            "d_center": float(np.exp(np.log(sub.d.astype(float)).mean())), "slope": slope, "ci_low": float(lo),
            "ci_high": float(hi), "predicted": PREDICTED.get(opt), "in_domain": bool(sub.in_domain.all()),
            "located": int(np.isfinite(sub.mu_star).sum())}


def verdict(row) -> str:
    """consistent / contradicted / inconclusive: the interval contains the prediction / excludes it / is missing."""
    if not np.isfinite(row.ci_low):
        return "inconclusive"
    return "consistent" if row.ci_low <= row.predicted <= row.ci_high else "contradicted"


def figure(bnd: pd.DataFrame, local: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    colors = {10: "tab:blue", 20: "tab:orange", 40: "tab:green"}
    for r, protocol in enumerate(("fixed", "regime")):
        ax_b, ax_s = axes[r]
        for (label, n), g in bnd[bnd.label.str.endswith(protocol)].groupby(["label", "n"]):
            style = "-o" if label.startswith("sgd") else "--s"
            ax_b.plot(g.d, g.mu_star, style, color=colors.get(n), ms=3, label=f"{label.split('_')[0]} n={n}")
        for (label, n), g in local[local.protocol == protocol].groupby(["label", "n"]):
            style = "-o" if label.startswith("sgd") else "--s"
            ax_s.errorbar(g.d_center, g.slope, yerr=[g.slope - g.ci_low, g.ci_high - g.slope], fmt=style,
                          color=colors.get(n), ms=3, capsize=2, label=f"{label.split('_')[0]} n={n}")
        for ax in (ax_b, ax_s):
            ax.set_xscale("log")
            dom = bnd[bnd.label.str.endswith(protocol) & bnd.in_domain]
            for n, g in dom.groupby("n"):   # the theorems' domain, per n, as a bar under the curves
                ax.axvspan(g.d.min(), g.d.max(), ymin=0.0, ymax=0.02 * (1 + [10, 20, 40].index(n)),
                           color=colors.get(n), alpha=0.3)
        ax_b.set_yscale("log")
        ax_b.set_ylabel("||mu||*")
        ax_b.set_title(f"{protocol} protocol: boundary (bars: theorems' domain per n)")
        ax_s.axhline(0.25, color="k", lw=0.8, ls=":")
        ax_s.axhline(0.0, color="k", lw=0.8, ls="-.")
        ax_s.set_ylabel("local slope d log||mu||* / d log d")
        ax_s.set_title(f"{protocol} protocol: local slope (one decade), 95% CI; SGD 1/4, SAM 0")
        ax_b.legend(fontsize=7, ncol=2)
        ax_s.legend(fontsize=7, ncol=2)
    for ax in axes[1]:
        ax.set_xlabel("d")
    fig.tight_layout()
    return fig


def write_report(run_dir: Path, gallery: Path | None = None) -> str:
    """The study's figure, tables and markdown from a search directory (``python -m theory_sim search``)."""
    meta = json.loads((Path(run_dir) / "results.json").read_text())
    spec = SweepSpec.from_dict(meta["spec"], expand=False)
    results = pd.read_parquet(Path(run_dir) / "results.parquet")
    bnd, local, tail = slopes(results, spec)
    for t in (local, tail):
        t["verdict"] = [verdict(r) for r in t.itertuples()]
    study = Study(Path(__file__).parent.parent.parent / "studies" / "dimfree_boundaries.toml",
                  out=gallery, threads=None)
    study.save_figure(figure(bnd, local))
    for name, table in (("results", results), ("boundaries", bnd), ("local_slopes", local), ("tail_slopes", tail)):
        study.save_table(table, name, {"spec": meta["spec"], "search": meta.get("search")})
    text = markdown(bnd, local, tail, results, meta)
    study.write_markdown(text)
    return text


def markdown(bnd, local, tail, results, meta) -> str:
    cols = ["label", "n", "d_low", "d_high", "slope", "ci_low", "ci_high", "predicted", "in_domain", "verdict"]
    lines = ["# Phase boundaries at any dimension: SGD and SAM -> SGD from d = 10^2 to 10^8", "",
             f"{len(results)} runs (dimension-free, {results.seed.nunique()} seeds at most per point), located by "
             "boundary search (`python -m theory_sim search studies/dimfree_boundaries.toml`); slopes and 95% seed-"
             "bootstrap intervals from verify's `fit_slopes` / `resampled_boundaries`. Protocols (docs/science.md "
             "§5.6): *fixed* sigma_0 = 0.001, eta = 0.1; *regime* init scale 0.02 and per-step noise memorisation "
             "0.1 at every d (equal to fixed at d = 100). Domain (constants set to 1): d >= n^2 log(10 n m), init "
             f"scale <= {INIT_MAX}, per-step memorisation <= {STEP_MAX}. Verdict: consistent when the interval "
             "contains the prediction (SGD 1/4, SAM 0), contradicted when it excludes it.", "",
             f"## Asymptotic slopes (every d >= {TAIL_FROM:.0e})", "", markdown_table(tail[cols], "{:.3g}", False),
             "", "## Local slopes (windows of one decade)", "", markdown_table(local[cols], "{:.3g}", False), "",
             "## Boundaries", "",
             markdown_table(bnd[["label", "n", "d", "mu_star", "status", "relapse_mu", "in_domain"]], "{:.4g}",
                            False)]
    return "\n".join(lines)
