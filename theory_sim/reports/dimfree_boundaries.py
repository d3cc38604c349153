"""The benign boundary's asymptotics in d (docs/science.md §5.9): local slopes d log ||mu||* / d log d of SGD's and
SAM -> SGD's boundaries under the two protocols of §5.7, from a boundary search's tables
(``studies/dimfree_boundaries.toml``), with seed-bootstrap intervals from verify's machinery (``boundaries``,
``resampled_boundaries``, ``fit_slopes``, ``resampled_slopes``) and the theorems' domain marked.

The domain, with every unknown constant set to 1 (a convention, stated in the report): d >= n^2 log(n m / delta)
(delta = 0.1), an init scale sigma_0 P sigma_p sqrt(d) <= 0.1, a per-step noise memorisation
eta (P - 1) sigma_p^2 d / (2 B m) <= 1 and a stable signal step eta ||mu*||^2 <= 1 at the boundary
(docs/science.md §5.3, §5.7).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.study import Study, markdown_table
from theory_sim.sweeps.cells import seed_resamples
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.search import slopes_with_intervals
from theory_sim.sweeps.verify import boundaries, cell_arrays, resampled_boundaries

WINDOW = 3          # consecutive d values per local slope: one decade at half-decade spacing
TAIL_FROM = 1e5     # the asymptotic slope: every d >= this (three decades up to 10^8)
DELTA = 0.1
INIT_MAX, STEP_MAX = 0.1, 1.0
PREDICTED = {"sgd": 0.25, "sam": 0.0}
N_BOOT = 400
# What the numbers above say, and the arithmetic that may explain them (hypotheses: not tested by this study)
READING = [
    "**Reading.** The fixed protocol is never inside the domain: its eta = 0.1 breaks eta ||mu*||^2 <= 1 already "
    "at d = 100 (||mu*|| > 3.2 at most d), its per-step memorisation d / 1000 exceeds 1 above d = 1000, and above "
    "d ~ 10^5 its boundaries become erratic or are never reached; SAM's flat boundary there (local slopes "
    "0.0-0.11 up to d ~ 3 x 10^4 at n = 20, 40) is a property of that protocol, not a test of [C23]. Under the "
    "regime protocol SGD's local slope sits at 0.22-0.25 (1/4 inside its intervals in many windows) from the domain's start up to "
    "d ~ 10^6, then rises towards 0.45 at 10^8, later for larger n: the slope does not settle at 1/4 as d grows "
    "at a fixed init scale. One candidate (arithmetic, untested): a fresh noise vector's pre-activation has a "
    "learned part ~ rho sqrt(n / d), which falls below the init's fixed part sigma_0 sigma_p sqrt(d) = s0 / P once "
    "d ~ n rho^2 P^2 / s0^2 (about 10^6 here), after which benign overfitting needs the signal gamma ~ n ||mu||^2 / d "
    "to beat a constant: slope 1/2. SAM -> SGD is not flat under the regime protocol: its boundary runs parallel to "
    "SGD's, below it, at n = 20 and 40 (slope ~ 1/2 at n = 10). A candidate: with eta ~ 1/d, its fixed 200 SAM "
    "steps learn a signal ~ eta ||mu||^2 x 200 ~ ||mu||^2 / d, so the SAM phase would have to last ~ d steps for "
    "[C23]'s d-free boundary; [C23]'s theorem lets the training time grow with 1/eta. So the asymptotic slopes are "
    "NOT what the theorems predict for either optimizer under either protocol as run here.",
]


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
    by_cell = results.assign(_in=in_domain(results)).groupby(["label", *dims])
    keys = list(bnd[["label", *dims]].itertuples(index=False, name=None))
    eta = by_cell.eta.max()
    bnd["in_domain"] = [bool(by_cell._in.all()[k]) and eta[k] * mu ** 2 <= 1 for k, mu in zip(keys, bnd.mu_star)]
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
    fits = slopes_with_intervals(sub, boot[bnd.index.get_indexer(idx)], dims)
    row = fits[fits.dim == "d"] if len(fits) else fits
    slope, lo, hi = (float(row[k].iloc[0]) if len(row) else float("nan") for k in ("slope", "ci_low", "ci_high"))
    return {"label": label, "optimizer": opt, "protocol": label.split("_")[-1], "n": int(n),
            "d_low": int(sub.d.min()), "d_high": int(sub.d.max()),
            "d_center": float(np.exp(np.log(sub.d.astype(float)).mean())), "slope": slope, "ci_low": float(lo),
            "ci_high": float(hi), "predicted": PREDICTED.get(opt), "in_domain": bool(sub.in_domain.all()),
            "located": int(np.isfinite(sub.mu_star).sum())}


def verdict(row) -> str:
    """consistent / contradicted / inconclusive: the interval contains the prediction / excludes it / is missing
    (fewer than 3 located boundaries, or too few valid resamples); "outside the domain" where some cell
    of the window is (the theorems say nothing there)."""
    if not row.in_domain:
        return "outside the domain"
    if not (np.isfinite(row.slope) and np.isfinite(row.ci_low)) or row.located < 3:
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
             "§5.7): *fixed* sigma_0 = 0.001, eta = 0.1; *regime* init scale 0.02 and per-step noise memorisation "
             "0.1 at every d (equal to fixed at d = 100). Domain (constants set to 1): d >= n^2 log(10 n m), init "
             f"scale <= {INIT_MAX}, per-step memorisation <= {STEP_MAX}, eta ||mu*||^2 <= 1. Verdict: consistent "
             "when the interval contains the prediction (SGD 1/4, SAM 0), contradicted when it excludes it, and no "
             "verdict outside the domain.", "",
             "## Findings", "", *findings(bnd, local, tail), "", *READING, "",
             f"## Asymptotic slopes (every d >= {TAIL_FROM:.0e})", "", markdown_table(tail[cols], "{:.3g}", False),
             "", "## Local slopes (windows of one decade)", "", markdown_table(local[cols], "{:.3g}", False), "",
             "## Boundaries", "",
             markdown_table(bnd[["label", "n", "d", "mu_star", "status", "relapse_mu", "in_domain"]], "{:.4g}",
                            False)]
    return "\n".join(lines)


def findings(bnd: pd.DataFrame, local: pd.DataFrame, tail: pd.DataFrame) -> list[str]:
    """One line per variant and n: where it is in the domain, its local slopes there, its tail slope and verdicts."""
    out = []
    for (label, n), g in local.groupby(["label", "n"]):
        cells = bnd[(bnd.label == label) & (bnd.n == n)]
        dom = cells[cells.in_domain]
        where = (f"in the domain for d = {int(dom.d.min())}..{int(dom.d.max())}" if len(dom)
                 else "never in the domain")
        censored = int((~np.isfinite(cells.mu_star)).sum())
        inside = g[g.in_domain & np.isfinite(g.slope)]
        verdicts = pd.Series([verdict(r) for r in g[g.in_domain].itertuples()], dtype=object).value_counts()
        slopes_text = (f"local slopes {inside.slope.min():.2f}..{inside.slope.max():.2f} there "
                       f"({', '.join(f'{v} {k}' for k, v in verdicts.items())})" if len(inside)
                       else "no local slope inside it")
        t = tail[(tail.label == label) & (tail.n == n)].iloc[0]
        out.append(f"- **{label}, n = {n}**: {where}; {censored} of {len(cells)} cells never benign up to "
                   f"||mu|| = 10^5; {slopes_text}; slope over d >= {TAIL_FROM:.0e}: {t.slope:.3f} "
                   f"[{t.ci_low:.3f}, {t.ci_high:.3f}] ({verdict(t)}, prediction {t.predicted:g}).")
    return out
