"""Is "K = 5 is worse than SAM" a step-size statement? studies/msam_step_size.toml: K = 5 ascent steps of length tau
and of tau / 5 against SAM, at the cells where step tau loses ([T24]'s multi-step claim, docs/science.md §8).

Opens with the sweep's claim lines (verify.json); then the paired test-error differences against SAM over seeds
(theory_sim.sweeps.paired, t-intervals), per cell and pooled. The sentence on the step length is computed from the
pooled intervals. The report behind ``studies/sam_questions_report.py msam_step_size``."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from theory_sim.reports.study_report import EXPLORATORY, claim_lines, effect, where, write
from theory_sim.sweeps.cells import scored_error
from theory_sim.sweeps.paired import paired_differences, pooled
from theory_sim.sweeps.store import load_spec, read_results

LONG, SHORT = "msam5", "msam5_step_tau5"


def step_sentence(table: pd.DataFrame) -> str:
    """Where the pooled intervals of K = 5 (step tau and tau/5) against SAM lie, and what that says."""
    big, small = pooled(table, LONG, "sam"), pooled(table, SHORT, "sam")
    a, b = where(big["ci_low"], big["ci_high"]), where(small["ci_low"], small["ci_high"])
    text = f"K = 5 minus SAM, pooled: step tau {effect(big)}, interval {a}; step tau/5 {effect(small)}, interval {b}."
    if a == "above 0" and b == "below 0":
        return text + " Shortening the ascent step turns K = 5 from erring more than SAM to erring less: the " \
                      "K = 5 loss here is a step-size effect."
    if a == "above 0" and b != "below 0":
        return text + " With step tau/5, K = 5 no longer errs more than SAM, but it does not err less either."
    return text + " Step tau does not make K = 5 err more than SAM here, so there is no loss for the step to explain."


def write_report(run: Path, gallery: Path) -> str:
    spec, r = load_spec(run), read_results(run)
    table = paired_differences(r, baselines=("sam",), spec=spec)
    r = r.assign(err=scored_error(r))
    means = r.pivot_table(index=["d", "mu_norm"], columns="label", values="err", aggfunc="mean")
    cells = table[table.scope == "cell"].set_index(["label", "d", "mu_norm"])
    lines = [f"# Multi-step SAM's step length ({spec.name}, {r.seed.nunique()} seeds per cell)", "",
             *claim_lines(run), "## Exploratory: K = 5 against SAM", "", EXPLORATORY, "",
             "K = 5 ascent steps after SAM's first one of length tau, each of length ascent_step * tau, against "
             "SAM, every rule for 200 steps then SGD (settings of sam_family_phase). Paired test-error differences "
             "(negative: errs less than SAM).", "",
             "| d | mu | SAM | K=5, step tau | K=5, step tau/5 | step tau - SAM [95% CI] | step tau/5 - SAM [95% CI] |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (d, mu), row in means.iterrows():
        a, b = cells.loc[(LONG, d, mu)], cells.loc[(SHORT, d, mu)]
        lines.append(f"| {d:g} | {mu:.3g} | {row['sam']:.3f} | {row[LONG]:.3f} | {row[SHORT]:.3f} | "
                     f"{a.mean_diff:+.3f} [{a.ci_low:+.3f}, {a.ci_high:+.3f}] | "
                     f"{b.mean_diff:+.3f} [{b.ci_low:+.3f}, {b.ci_high:+.3f}] |")
    lines += ["", f"- {step_sentence(table)}", "",
              f"From `{run}/results.parquet` by `python studies/sam_questions_report.py msam_step_size {run}`."]
    return write("msam_step_size", lines, gallery)
