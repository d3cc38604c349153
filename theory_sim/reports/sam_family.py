"""Does Rand-SAM match SAM, and is a more exact (multi-step) ascent worse? studies/sam_family_phase.toml's report:
[T24] (arXiv 2411.01714) asks both for WideResNets; this reads the theory model's answer from the sweep.

Opens with the sweep's claim lines (verify.json). Then, exploratory: paired test-error differences of every rule
against SGD and SAM on the same seeds (theory_sim.sweeps.paired, t-intervals over seeds) over the cells with
d >= --large-d (default 3200). Each sentence (``sentences``) is computed from those intervals and says whether the
direction matches what [T24] reports for WRN-28-10 on CIFAR (docs/science.md §8: Rand-SAM comparable to SAM and
both better than SGD; more precise ascents generalise worse). The per-rule table adds the boundary slope in d (the
sweep's verify.json, jackknife-t), the located ||mu||* at the largest d and the mean test error at large d.

The report behind ``studies/sam_family_report.py`` (docs/science.md §8)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.reports.study_report import EXPLORATORY, claim_lines, effect, fmt, load_claims, where, write
from theory_sim.sweeps.cells import scored_error
from theory_sim.sweeps.paired import paired_differences, pooled
from theory_sim.sweeps.store import load_spec, read_results
from theory_sim.sweeps.verify_report import estimate_text

LARGE_D = 3200


def comparisons(results: pd.DataFrame, large_d: float = LARGE_D, spec=None) -> pd.DataFrame:
    """Pooled paired differences of every rule against sgd and sam over the cells with d >= large_d."""
    table = paired_differences(results[results.d >= large_d], baselines=("sgd", "sam"), spec=spec)
    return table[table.scope == "pooled"].reset_index(drop=True)


def _side(table, a, b) -> str:
    row = pooled(table, a, b)
    return where(row["ci_low"], row["ci_high"]) if row else "not compared"


def sentences(table: pd.DataFrame, large_d: float = LARGE_D) -> list[str]:
    """The report's sentences, every one from ``table`` (``comparisons``)."""
    at = f"at d >= {large_d:g}"
    out = []
    if pooled(table, "randsam", "sam"):
        vs_sam, vs_sgd = _side(table, "randsam", "sam"), _side(table, "randsam", "sgd")
        same = vs_sam == "covers 0" and vs_sgd == "below 0"
        out.append(f"- Rand-SAM minus SAM {at}: {effect(pooled(table, 'randsam', 'sam'))}, interval {vs_sam}; minus "
                   f"SGD: {effect(pooled(table, 'randsam', 'sgd'))}, interval {vs_sgd}. "
                   + ("The direction matches [T24]'s WRN-28-10 / CIFAR finding (Rand-SAM comparable to SAM, both "
                      "better than SGD)." if same else
                      "The theory model does not show [T24]'s WRN-28-10 / CIFAR pattern (Rand-SAM comparable to SAM, "
                      "both better than SGD): that needs the interval against SAM to cover 0 and the one against "
                      "SGD to lie below 0."))
    multi = [k for k in ("msam2", "msam5") if pooled(table, k, "sam")]
    if multi:
        above = [k for k in multi if _side(table, k, "sam") == "above 0"]
        out.append(f"- Multi-step SAM (each ascent step of size tau) minus SAM {at}: "
                   + "; ".join(f"K = {k[4:]} {effect(pooled(table, k, 'sam'))}, interval {_side(table, k, 'sam')}"
                               for k in multi)
                   + ". [T24] finds that more precise ascents generalise worse; here the interval lies above 0 (errs "
                   f"more than SAM) at {', '.join('K = ' + k[4:] for k in above) or 'no K'}. Every ascent step has "
                   "size tau; this sweep does not vary the step (studies/msam_step_size.toml does).")
    for lab, name in (("1-sam", "1-SAM (per-sample perturbations)"), ("usam", "USAM (eps = tau g)")):
        if pooled(table, lab, "sam"):
            out.append(f"- {name} minus SAM {at}: {effect(pooled(table, lab, 'sam'))}; minus SGD: "
                       f"{effect(pooled(table, lab, 'sgd'))}.")
    return out


def write_report(run: Path, gallery: Path, large_d: float = LARGE_D) -> str:
    """The report of the sweep in ``run`` as ``gallery``/sam_family_phase.md (the text printed)."""
    spec, results = load_spec(run), read_results(run)
    report = load_claims(run) or {"claims": [], "boundaries": []}
    slope = {c["variant"]: c for c in report["claims"] if c.get("dim") == "d" and c["scope"] == "all cells"
             and c["claim"] in ("sgd_boundary_slope", "sam_boundary_slope", "slope_outside_domain")}
    d_max = max((b["d"] for b in report["boundaries"]), default=np.nan)
    mu_star = {b["label"]: b for b in report["boundaries"] if b["d"] == d_max}
    large = results.assign(err=scored_error(results))[results.d >= large_d].groupby("label").err.mean()
    rows = []
    for lab in [o.label for o in spec.optimizers]:
        b = mu_star.get(lab, {})
        mu = b.get("mu_star") if b.get("status") == "ok" else {"never_benign": np.inf,
                                                                 "benign_everywhere": -np.inf}.get(b.get("status"))
        s = slope.get(lab)
        rows.append(f"| {lab} | {estimate_text(s) if s else 'n/a'} | {fmt(mu)} | "
                    f"{large.get(lab, float('nan')):.3f} |")
    table = comparisons(results, large_d, spec=spec)
    paired_rows = [f"| {r.label} | {r.baseline} | {r.mean_diff:+.4f} | [{r.ci_low:+.4f}, {r.ci_high:+.4f}] | "
                   f"{r.seeds} | {r.n_pairs} |" for r in table.itertuples()]
    lines = [f"# The SAM family on the two-layer CNN ({spec.name}, {results.seed.nunique()} seeds per cell, each rule "
             f"for 200 steps then SGD)", "", *claim_lines(run), "## Exploratory: the rules against SGD and SAM", "",
             EXPLORATORY, "", *sentences(table, large_d), "",
             f"| rule | boundary slope in d, all located cells [95% CI] | mu* at d = {fmt(d_max)} | mean test error, "
             f"d >= {large_d:g} |", "| --- | --- | --- | --- |", *rows, "",
             f"Paired test-error differences (rule - baseline, same seeds) over the cells with d >= {large_d:g}:", "",
             "| rule | baseline | mean difference | 95% CI | seeds | pairs |", "| --- | --- | --- | --- | --- | --- |",
             *paired_rows, "",
             f"From `{run}/results.parquet` and its verify.json by `python studies/sam_family_report.py {run}`. What "
             "[T24] reports: docs/science.md §8."]
    return write("sam_family_phase", lines, gallery)
