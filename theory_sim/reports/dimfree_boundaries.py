"""The benign boundary's asymptotics in d (docs/science.md §5.9): local slopes d log ||mu||* / d log d of SGD's and
SAM -> SGD's boundaries under the two protocols of §5.7, from a boundary search's tables
(``studies/dimfree_boundaries.toml``), judged by the claims of theory_sim.claims (docs/science.md §5.6):

- the claim: ``sgd_boundary_slope`` for plain SGD, ``sam_boundary_slope`` for [C23]'s SAM (``is_sam``: one
  normalised ascent step; SAM for ``sam_steps`` steps then SGD is the claim's "SAM throughout or then SGD");
- the domain per cell: that claim's ``in_domain`` (its predicates with their thresholds). ``stable_step``
  (eta ||mu*||^2 <= 1, the signal step's stability at the boundary) is an exploratory column beside it, not part of
  the domain: no claim's theorem states it, and the regime protocol's step eta ~ 1/d meets it at every d here;
- intervals: the seed jackknife (verify's ``resampled_boundaries`` on ``leave_one_out`` draws, the search's
  ``slopes_with_intervals``: jackknife-t), verdicts by ``theory_sim.claims.verdict`` against prediction +-
  ``slope_tolerance`` with h the search's ``log_width`` (its log-resolution of ||mu||*), as lines of ``claim_row``.

A window or tail with a cell outside the domain gets no verdict: its slope is listed as verify's exploratory
``slope_outside_domain``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.claims import CLAIMS, cell_parameters, claim_row, is_sam, is_sgd, slope_tolerance, variant_parameters
from theory_sim.intervals import NAN_INTERVAL, leave_one_out
from theory_sim.study import Study, markdown_table
from theory_sim.sweeps.search import slope_interval, slopes_with_intervals
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.verify import boundaries, cell_arrays, resampled_boundaries
from theory_sim.sweeps.verify_report import claim_table

WINDOW = 3          # consecutive d values per local slope: one decade at half-decade spacing
TAIL_FROM = 1e5     # the asymptotic slope: every d >= this (three decades up to 10^8)
STABLE_STEP_MAX = 1.0   # eta ||mu*||^2: the exploratory stable_step column (module docstring)
# What the numbers above say, and the arithmetic that may explain them (hypotheses: not tested by this study)
READING = [
    "**Reading.** The fixed protocol enters the claims' domain only at d ~ 10^3..10^4 for n = 10, 20 (above, its "
    "init scale and per-step memorisation d / 1000 grow past the thresholds; never at n = 40), where no window or "
    "tail has enough in-domain cells except one SGD window (consistent); its eta = 0.1 also fails the exploratory "
    "stable_step (eta ||mu*||^2 <= 1) at every d, and above d ~ 10^5 its boundaries become erratic or are never "
    "reached; SAM's flat boundary there (local slopes 0.0-0.11 up to d ~ 3 x 10^4 at n = 20, 40) is a property of "
    "that protocol, not a test of [C23]. Under the regime protocol SGD's local slope sits at 0.22-0.25 (consistent "
    "with 1/4 in 4-5 windows per n) from the domain's start up to "
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


def claim_of(variant: dict):
    """The boundary-slope claim covering a variant (None: no theorem covers it)."""
    return (CLAIMS["sgd_boundary_slope"] if is_sgd(variant) else CLAIMS["sam_boundary_slope"] if is_sam(variant)
            else None)


def slopes(results: pd.DataFrame, spec: SweepSpec, h: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(boundaries per cell with the claim's domain flag, local slopes per window, tail slopes): claim_row lines
    with their jackknife intervals and verdicts; ``h`` is the search's log-resolution of ||mu||* (log_width)."""
    dims = spec.cell_dims
    threshold = spec.benign_threshold(float(results.flip_p.iloc[0]))
    cells = cell_arrays(results, dims)
    bnd = boundaries(cells, threshold, dims=dims)
    loo = resampled_boundaries(cells, threshold, leave_one_out(int(results.seed.nunique())))
    params = cell_parameters(results, dims).set_index(["label", *dims])
    params = params.loc[list(bnd[["label", *dims]].itertuples(index=False, name=None))].reset_index()
    claims = {lab: claim_of(v) for lab, v in variant_parameters(results).items()}
    bnd["in_domain"] = False
    for lab, claim in claims.items():
        if claim is not None:
            mask = (bnd.label == lab).to_numpy()
            bnd.loc[mask, "in_domain"] = claim.in_domain(params[mask])
    bnd["stable_step"] = params.eta.to_numpy() * bnd.mu_star.to_numpy() ** 2 <= STABLE_STEP_MAX
    local, tail = [], []
    for (label, n), g in bnd.groupby(["label", "n"]):
        g = g.sort_values("d")
        for lo in range(len(g) - WINDOW + 1):
            local.append(_slope_row(bnd, loo, g.index[lo:lo + WINDOW], dims, label, n, claims[label], h))
        far = g[g.d >= TAIL_FROM]
        tail.append(_slope_row(bnd, loo, far.index[far.in_domain], dims, label, n, claims[label], h,
                               scope="in domain"))
        tail.append(_slope_row(bnd, loo, far.index, dims, label, n, claims[label], h, scope="all cells"))
    return bnd, pd.DataFrame(local), pd.DataFrame(tail)


def _slope_row(bnd, loo, idx, dims, label, n, claim, h, scope=None) -> dict:
    """One claim_row: the slope in d over the cells ``idx``. scope None (a window): in domain when every cell is."""
    sub = bnd.loc[idx]
    inside = bool(len(sub)) and bool(sub.in_domain.all())
    scope = scope or ("in domain" if inside else "all cells")
    fits = slopes_with_intervals(sub, loo[bnd.index.get_indexer(idx)], dims) if len(sub) else pd.DataFrame()
    row = fits[fits.dim == "d"] if len(fits) else fits
    interval = slope_interval(row.iloc[0]) if len(row) else NAN_INTERVAL
    info = dict(dim="d", fixed={"n": int(n)}, n=int(n), protocol=label.split("_")[-1],
                d_low=int(sub.d.min()) if len(sub) else None, d_high=int(sub.d.max()) if len(sub) else None,
                d_center=float(np.exp(np.log(sub.d.astype(float)).mean())) if len(sub) else float("nan"),
                cells_in_domain=int(sub.in_domain.sum()), cells=int(len(sub)),
                located=int(np.isfinite(sub.mu_star).sum()), stable_step=bool(sub.stable_step.all()))
    if claim is None or scope == "all cells":   # no theorem covers it, or a cell lies outside the domain
        return claim_row(CLAIMS["slope_outside_domain"], label, interval, None, scope, predicted=None,
                         tolerance=None, **info)
    predicted = claim.extra["slopes"]["d"]
    tol = slope_tolerance(claim, h, sub.d.to_numpy()) if len(sub) else float("nan")
    return claim_row(claim, label, interval, (predicted - tol, predicted + tol), scope,
                     applicable=bool(row.size) and np.isfinite(interval.estimate), predicted=predicted,
                     tolerance=tol, **info)


def figure(bnd: pd.DataFrame, local: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    colors = {10: "tab:blue", 20: "tab:orange", 40: "tab:green"}
    for r, protocol in enumerate(("fixed", "regime")):
        ax_b, ax_s = axes[r]
        for (label, n), g in bnd[bnd.label.str.endswith(protocol)].groupby(["label", "n"]):
            style = "-o" if label.startswith("sgd") else "--s"
            ax_b.plot(g.d, g.mu_star, style, color=colors.get(n), ms=3, label=f"{label.split('_')[0]} n={n}")
        for (label, n), g in local[local.protocol == protocol].groupby(["variant", "n"]):
            style = "-o" if label.startswith("sgd") else "--s"
            ax_s.errorbar(g.d_center, g.estimate, yerr=[g.estimate - g.ci_low, g.ci_high - g.estimate], fmt=style,
                          color=colors.get(n), ms=3, capsize=2, label=f"{label.split('_')[0]} n={n}")
        for ax in (ax_b, ax_s):
            ax.set_xscale("log")
            dom = bnd[bnd.label.str.endswith(protocol) & bnd.in_domain]
            for n, g in dom.groupby("n"):   # the claim's domain, per n, as a bar under the curves
                ax.axvspan(g.d.min(), g.d.max(), ymin=0.0, ymax=0.02 * (1 + [10, 20, 40].index(n)),
                           color=colors.get(n), alpha=0.3)
        ax_b.set_yscale("log")
        ax_b.set_ylabel("||mu||*")
        ax_b.set_title(f"{protocol} protocol: boundary (bars: the claims' domain per n)")
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
    """The study's figure, tables and markdown from a search directory (``python -m theory_sim search``) or the
    committed tables (figures/results/dimfree_boundaries: results.parquet with its results.json)."""
    meta = json.loads((Path(run_dir) / "results.json").read_text())
    spec = SweepSpec.from_dict(meta["spec"], expand=False)
    results = pd.read_parquet(Path(run_dir) / "results.parquet")
    bnd, local, tail = slopes(results, spec, float(meta["search"]["log_width"]))
    study = Study(Path(__file__).parent.parent.parent / "studies" / "dimfree_boundaries.toml",
                  out=gallery, threads=None)
    study.save_figure(figure(bnd, local))
    for name, table in (("results", results), ("boundaries", bnd), ("local_slopes", local), ("tail_slopes", tail)):
        study.save_table(table, name, {"spec": meta["spec"], "search": meta.get("search")})
    text = markdown(bnd, local, tail, results, meta)
    study.write_markdown(text)
    return text


def _counts(rows: pd.DataFrame) -> str:
    return ", ".join(f"{v} {k}" for k, v in rows.verdict.value_counts().items())


def markdown(bnd, local, tail, results, meta) -> str:
    cols = ["variant", "n", "scope", "d_low", "d_high", "estimate", "ci_low", "ci_high", "predicted", "tolerance",
            "cells_in_domain", "cells", "stable_step", "verdict"]
    claimed = tail[tail.scope == "in domain"].to_dict("records")
    lines = ["# Phase boundaries at any dimension: SGD and SAM -> SGD from d = 10^2 to 10^8", "",
             f"**Claims** (theory_sim.claims, docs/science.md §5.6: the slope in d over every in-domain cell with "
             f"d >= {TAIL_FROM:.0e}, per variant and n): {_counts(tail[tail.scope == 'in domain'])}; local slopes "
             f"(windows of one decade wholly in the domain): {_counts(local[local.scope == 'in domain'])}.", "",
             *claim_table(claimed), "", *plainly(tail), "",
             f"{len(results)} runs (dimension-free, {results.seed.nunique()} seeds at most per point), located by "
             "boundary search (`python -m theory_sim search studies/dimfree_boundaries.toml`, log-resolution "
             f"h = {meta['search']['log_width']:g} in log ||mu||*). Protocols (docs/science.md §5.7): *fixed* "
             "sigma_0 = 0.001, eta = 0.1; *regime* init scale 0.02 and per-step noise memorisation 0.1 at every d "
             "(equal to fixed at d = 100). Claims, domains (the claim's `in_domain`), intervals (seed jackknife-t "
             "over leave-one-seed-out boundaries) and the verdict rule are verify's (docs/science.md §5.6); the "
             "region is the prediction (SGD +1/4, SAM 0) +- `slope_tolerance` with h above. SAM -> SGD (200 SAM "
             "steps, then SGD) is [C23]'s plain SAM, covered by sam_boundary_slope. A window with a cell outside "
             "the domain is exploratory (no verdict). `stable_step` (eta ||mu*||^2 <= 1 at every cell) is an "
             "exploratory column, not part of any claim's domain.", "",
             "## Findings", "", *findings(bnd, local, tail), "", *READING, "",
             f"## Asymptotic slopes (every d >= {TAIL_FROM:.0e}; in domain: the claim, all cells: exploratory)", "",
             markdown_table(tail[cols], "{:.3g}", False),
             "", "## Local slopes (windows of one decade)", "", markdown_table(local[cols], "{:.3g}", False), "",
             "## Boundaries", "",
             markdown_table(bnd[["label", "n", "d", "mu_star", "status", "relapse_mu", "in_domain", "stable_step"]],
                            "{:.4g}", False)]
    return "\n".join(lines)


def plainly(tail: pd.DataFrame) -> list[str]:
    """The sentence issue 25 asks for: where the asymptotic slopes are not the theorems'."""
    rows = tail[tail.scope == "in domain"]
    bad = rows[rows.verdict == "contradicted"]
    ok = rows[rows.verdict == "consistent"]
    text = "; ".join(f"{r.variant} n = {r.n}: {r.estimate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] against "
                     f"{r.predicted:g} +- {r.tolerance:.3f}" for r in bad.itertuples())
    out = [f"**The asymptotic slopes are not what the theorems predict** where the claims are contradicted: {text}."
           if len(bad) else "No asymptotic slope contradicts its theorem."]
    if len(ok):
        out[0] += " Consistent: " + ", ".join(f"{r.variant} n = {r.n}" for r in ok.itertuples()) + "."
    return out


def findings(bnd: pd.DataFrame, local: pd.DataFrame, tail: pd.DataFrame) -> list[str]:
    """One line per variant and n: where it is in the domain, its local slopes there, its tail slope and verdicts."""
    out = []
    for (label, n), g in local.groupby(["variant", "n"]):
        cells = bnd[(bnd.label == label) & (bnd.n == n)]
        dom = cells[cells.in_domain]
        where = (f"in the domain for d = {int(dom.d.min())}..{int(dom.d.max())}" if len(dom)
                 else "never in the domain")
        censored = int((~np.isfinite(cells.mu_star)).sum())
        inside = g[(g.scope == "in domain") & np.isfinite(g.estimate)]
        slopes_text = (f"local slopes {inside.estimate.min():.2f}..{inside.estimate.max():.2f} there "
                       f"({_counts(g[g.scope == 'in domain'])})" if len(inside) else "no local slope inside it")
        t = tail[(tail.variant == label) & (tail.n == n)].set_index("scope")
        claim, every = t.loc["in domain"], t.loc["all cells"]
        out.append(f"- **{label}, n = {n}**: {where}; {censored} of {len(cells)} cells never benign up to "
                   f"||mu|| = 10^5; {slopes_text}; slope over the in-domain d >= {TAIL_FROM:.0e}: "
                   f"{claim.estimate:.3f} [{claim.ci_low:.3f}, {claim.ci_high:.3f}] ({claim.verdict}); over every "
                   f"d >= {TAIL_FROM:.0e}: {every.estimate:.3f} [{every.ci_low:.3f}, {every.ci_high:.3f}].")
    return out
