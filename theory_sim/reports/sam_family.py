"""The verdict of studies/sam_family_phase.toml: does Rand-SAM match SAM, and is a more exact (multi-step) ascent
worse? [T24] (arXiv 2411.01714) asks both for WideResNets; this reads the theory model's answer from the sweep.

Every verdict sentence is computed from the results table: a paired test-error difference of two rules on the same
seeds, with its 95% seed-bootstrap interval (theory_sim.sweeps.paired; "better" / "worse" when the interval
excludes 0, else "indistinguishable"), over the cells with d >= --large-d (default 3200). Each sentence then says
whether that agrees with what [T24] reports for WRN-28-10 on CIFAR (docs/science.md §8: Rand-SAM comparable to
SAM and both better than SGD; more precise ascents generalise worse); where the theory model disagrees, it says so.

The table gives, per rule (each X for the first 200 steps, then SGD): the boundary's log-log slope in d with its
seed-bootstrap interval (verify.json), the located boundary ||mu||* at the largest d, the mean test error over the
large-d cells, the Gamma/Rho amplification over SGD during the rule's phase and the update-point noise-active
fraction (the trajectory claims, with intervals). Writes figures/sam_family_phase.md.

The report behind ``studies/sam_family_report.py`` (docs/science.md §8)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.io import atomic_write_bytes
from theory_sim.sweeps.cells import scored_error
from theory_sim.sweeps.paired import describe, paired_differences, pooled
from theory_sim.sweeps.store import load_spec, read_results
from theory_sim.sweeps.verify import stored_summary

LARGE_D = 3200
NO_TRAJECTORIES = (" The mechanism (Gamma/Rho amplification, noise-active fraction) needs the sweep's trajectory "
                   "claims, which this verify.json lacks (no trajectories.parquet: re-run the sweep).")


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    return ("inf" if x > 0 else "-inf") if np.isinf(x) else f"{x:.3g}"


def _interval(c: dict | None) -> str:
    if not c:
        return "n/a"
    return f"{_fmt(c.get('measured'))} [{_fmt(c.get('ci_low'))}, {_fmt(c.get('ci_high'))}]"


def _relation(verdict: str | None, other: str) -> str:
    return {"better": f"better than {other}", "worse": f"worse than {other}",
            "indistinguishable": f"indistinguishable from {other}"}.get(verdict, f"not compared with {other}")


def comparisons(results: pd.DataFrame, large_d: float = LARGE_D, n_boot: int = 2000, spec=None) -> pd.DataFrame:
    """Pooled paired differences of every rule against sgd and sam over the cells with d >= large_d."""
    big = results[results.d >= large_d]
    table = paired_differences(big, baselines=("sgd", "sam"), n_boot=n_boot, spec=spec)
    return table[table.scope == "pooled"].reset_index(drop=True)


def verdicts(table: pd.DataFrame, claims: list[dict] | None = None, large_d: float = LARGE_D) -> list[str]:
    """The verdict sentences, every one from ``table`` (``comparisons``) and the trajectory ``claims``."""
    claims = claims or []
    amp = {c["variant"].split(" vs ")[0]: c for c in claims
           if c["claim"] == "sam_amplification" and c["dimension"] == "median over cells"}
    noise = {c["variant"]: c for c in claims if c["claim"] == "update_noise_active_frac"}
    row = lambda a, b: pooled(table, a, b)  # noqa: E731
    verdict = lambda a, b: (row(a, b) or {}).get("verdict")  # noqa: E731
    where = f"at d >= {large_d:g}"
    out = []
    if row("randsam", "sam"):
        agrees = verdict("randsam", "sam") == "indistinguishable" and verdict("randsam", "sgd") == "better"
        a = amp.get("randsam") or {}
        level = ("below SGD's (1)" if a.get("ci_high", np.nan) < 1 else "above SGD's (1)" if a.get("ci_low", np.nan) > 1
                 else "not distinguishable from SGD's (1)" if a else "not measured")
        out.append(
            f"- Rand-SAM vs SAM {where}: {describe(row('randsam', 'sam'))}; vs SGD: {describe(row('randsam', 'sgd'))}. "
            + ("This agrees with [T24], which reports Rand-SAM comparable to SAM and both better than SGD on "
               "WRN-28-10 / CIFAR." if agrees else
               "The theory model disagrees with [T24]'s real-network finding (Rand-SAM comparable to SAM, both "
               f"better than SGD on WRN-28-10 / CIFAR): here Rand-SAM is {_relation(verdict('randsam', 'sam'), 'SAM')}"
               f" and {_relation(verdict('randsam', 'sgd'), 'SGD')}.")
            + (f" Mechanism (trajectory claims, during the rule's phase): Rand-SAM's Gamma/Rho amplification over SGD "
               f"is {_interval(a)}, {level} (SAM {_interval(amp.get('sam'))}); update-point noise-active fraction "
               f"{_interval(noise.get('randsam'))} vs SGD's {_interval(noise.get('sgd'))} and SAM's "
               f"{_interval(noise.get('sam'))}." if a or noise else NO_TRAJECTORIES))
    if row("msam5", "sam") or row("msam2", "sam"):
        k5, k2 = verdict("msam5", "sam"), verdict("msam2", "sam")
        out.append(
            f"- Multi-step SAM (each ascent step of size tau) vs SAM {where}: K = 2 {describe(row('msam2', 'sam'))}, "
            f"K = 5 {describe(row('msam5', 'sam'))}. [T24] finds that more precise approximations of the SAM "
            f"objective degrade generalization; here that "
            + {("worse", "worse"): "holds at K = 2 and K = 5",
               ("worse", "better"): "holds at K = 5 but not at K = 2, which is better than SAM",
               ("worse", "indistinguishable"): "holds at K = 5; K = 2 is indistinguishable from SAM"}
            .get((k5, k2), f"does not hold as stated (K = 5 is {k5}, K = 2 {k2} against SAM)")
            + ". Every ascent step has size tau; this sweep does not vary the step.")
    if row("1-sam", "sam"):
        mech = (f"; amplification {_interval(amp.get('1-sam'))}, noise-active fraction "
                f"{_interval(noise.get('1-sam'))}" if amp.get("1-sam") or noise.get("1-sam") else "")
        out.append(f"- 1-SAM (per-sample perturbations) vs SAM {where}: {describe(row('1-sam', 'sam'))}; vs SGD: "
                   f"{describe(row('1-sam', 'sgd'))}{mech}.")
    if row("usam", "sam"):
        out.append(f"- USAM (eps = tau g) vs SAM {where}: {describe(row('usam', 'sam'))}; vs SGD: "
                   f"{describe(row('usam', 'sgd'))}.")
    return out


def write_report(run: Path, gallery: Path, large_d: float = LARGE_D) -> None:
    """The verdicts of the sweep in ``run`` as ``gallery``/sam_family_phase.md (the text printed)."""
    spec, results = load_spec(run), read_results(run)
    report = json.loads((run / "verify.json").read_text())
    slope = {c["label"]: c for c in report["slopes"] if c["dim"] == "d"}
    claims = report["trajectory_claims"]
    amp = {c["variant"].split(" vs ")[0]: c for c in claims
           if c["claim"] == "sam_amplification" and c["dimension"] == "median over cells"}
    noise = {c["variant"]: c for c in claims if c["claim"] == "update_noise_active_frac"}
    d_max = max(b["d"] for b in report["boundaries"])
    mu_star = {b["label"]: b for b in report["boundaries"] if b["d"] == d_max}
    large = results.assign(err=scored_error(results))[results.d >= large_d].groupby("label").err.mean()
    rows = []
    for lab in [o.label for o in spec.optimizers]:
        s, b = slope.get(lab, {}), mu_star.get(lab, {})
        mu = b.get("mu_star") if b.get("status") == "ok" else {"never_benign": np.inf,
                                                                 "benign_everywhere": -np.inf}.get(b.get("status"))
        rows.append(f"| {lab} | {_fmt(s.get('slope'))} [{_fmt(s.get('ci_low'))}, {_fmt(s.get('ci_high'))}] | "
                    f"{_fmt(mu)} | {large.get(lab, float('nan')):.3f} | {_interval(amp.get(lab))} | "
                    f"{_interval(noise.get(lab))} |")
    table = comparisons(results, large_d, spec=spec)
    paired_rows = [f"| {r.label} | {r.baseline} | {r.mean_diff:+.4f} | [{r.ci_low:+.4f}, {r.ci_high:+.4f}] | "
                   f"{r.n_pairs} | {r.verdict} |" for r in table.itertuples()]
    lines = [f"# The SAM family on the two-layer CNN ({spec.name}, {results.seed.nunique()} seeds per cell, each rule "
             f"for 200 steps then SGD)", "",
             *verdicts(table, claims, large_d),
             f"- Checks of this preset (verify): {stored_summary(run)}", "",
             "| rule | boundary slope in d [95% CI] | mu* at d = " + str(d_max) + f" | mean test error, d >= "
             f"{large_d:g} | Gamma/Rho amplification over SGD (median over cells) [95% CI] | update-point "
             "noise-active fraction [95% CI] |",
             "| --- | --- | --- | --- | --- | --- |", *rows, "",
             f"Paired test-error differences (rule - baseline, same seeds) over the cells with d >= {large_d:g}, "
             "95% intervals from 2000 resamples of the seeds (theory_sim.sweeps.paired):", "",
             "| rule | baseline | mean difference | 95% CI | pairs | verdict |",
             "| --- | --- | --- | --- | --- | --- |",
             *paired_rows, "",
             "From the sweep's verify.json (boundaries, slopes, trajectory claims; its paired differences over all "
             "cells) and results.parquet. What [T24] reports: docs/science.md §8."]
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(gallery / "sam_family_phase.md", text.encode())
    print(text)

