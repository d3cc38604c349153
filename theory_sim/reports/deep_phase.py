"""Does SAM's advantage survive depth ([C23]'s open question 2, docs/science.md §2.5)? studies/deep_phase.toml's
report, computed from the sweep's tables.

Opens with the sweep's claim lines (verify.json: the boundary claims cover depth 2, the [C23] network). Then,
exploratory, per depth: the boundary slope in d over every located cell (verify.json, jackknife-t over seeds), and
SAM - SGD paired over seeds over the cells with d >= 1600 (t-intervals, theory_sim.sweeps.paired) for the test
error, the fraction of flipped labels fitted at the end and, with the sweep's trajectories, the update-point
noise-active fraction during SAM's phase (steps 1..200). ``depth_sentence`` says at which depths SAM's test-error
interval lies below SGD's.

The report behind ``studies/deep_phase_report.py`` (docs/science.md §2.5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.reports.study_report import (EXPLORATORY, NO_TRAJECTORIES, claim_lines, effect, load_claims,
                                             paired_on, run_mean, where, with_run_values, write)
from theory_sim.sweeps.paired import paired_differences, pooled
from theory_sim.sweeps.store import load_spec, read_results, read_trajectories
from theory_sim.sweeps.verify_report import estimate_text

LARGE_D = 1600
PHASE = 200   # SAM's steps in studies/deep_phase.toml


def depth_sentence(errors: dict) -> str:
    """``errors``: depth -> the pooled SAM - SGD test-error row. Where each depth's interval lies."""
    side = {depth: where(row["ci_low"], row["ci_high"]) for depth, row in errors.items() if row}
    pick = lambda s: ", ".join(f"{d:g}" for d, v in side.items() if v == s) or "none"  # noqa: E731
    return (f"SAM - SGD test error at d >= {LARGE_D}: interval below 0 (SAM errs less) at depth {pick('below 0')}; "
            f"covering 0 at depth {pick('covers 0')}; above 0 at depth {pick('above 0')}.")


def depth2_ratio_note(claims: list[dict], seeds: int) -> list[str]:
    """Depth 2's pooled ratio-law constant (verify's trajectory claim: only depth 2 is in its domain) and where a
    difference from phase_diagram_c23's comes from (issue 24 item 10); nothing without the claim."""
    rows = [c for c in claims if c["claim"] == "ratio_law_constant" and c["scope"] == "in domain"
            and c["estimate"] is not None and np.isfinite(c["estimate"])]
    if not rows:
        return []
    c = rows[0]
    return ["## Ratio-law constant at depth 2 against phase_diagram_c23", "",
            f"Depth 2's pooled ratio-law constant is {estimate_text(c)} over {c['cells_in_domain']} in-domain cells "
            f"(the claim line above; {c.get('heterogeneity', '')}). Depth 2 is the c23 network run for run (Gamma "
            "and Rho equal to float32 round-off on the same seeds), so a difference from phase_diagram_c23's "
            f"constant comes from the seed set (seeds 0-{seeds - 1} here): `python studies/ratio_law_seeds.py` "
            "recomputes both networks on both seed sets and on 64 seeds (`figures/ratio_law_seeds.md`, "
            "docs/science.md §2.5).", ""]


def write_report(d: Path, out: Path = Path("figures/deep_phase.md")) -> str:
    """The report of the sweep in ``d`` as ``out`` (the text printed)."""
    spec, res, traj = load_spec(d), read_results(d), read_trajectories(d)
    key = spec.run_key
    cells = [k for k in key if k not in ("label", "seed")]
    report = load_claims(d) or {"claims": []}
    lines = [f"# deep_phase: SGD vs SAM (then SGD) over d and ||mu|| at depth 2, 3, 4 ({res.seed.nunique()} seeds)",
             "", f"Computed by `python studies/deep_phase_report.py {d}` from the sweep of `studies/deep_phase.toml` "
             "(d = 100..6400, 12 ||mu|| values, width 10).", "", *claim_lines(d),
             "## Exploratory: depth", "", EXPLORATORY, "",
             "Boundary slope in d over every located cell (no theorem covers depth 3 or 4; verify.json):", "",
             "| depth | optimizer | slope in d [95% CI] | cells in domain |", "| --- | --- | --- | --- |"]
    fits = [c for c in report["claims"] if c.get("dim") == "d" and c["scope"] == "all cells"]
    for c in sorted(fits, key=lambda c: (c["fixed"].get("depth", 0), c["variant"])):
        lines.append(f"| {c['fixed'].get('depth', '')} | {c['variant']} | {estimate_text(c)} | "
                     f"{c['cells_in_domain']}/{c['cells']} |")
    big = res[res.d >= LARGE_D]
    if traj is not None:
        big = with_run_values(big, key, noise=run_mean(traj, key, "update_noise_active_frac", 1, PHASE))
    quantities = [("test error", "test_error"), ("flipped labels fitted", "flipped_fit_frac")]
    if traj is not None:
        quantities.append((f"noise-active fraction at W + eps, steps 1..{PHASE}", "noise"))
    lines += ["", f"SAM - SGD, paired over seeds (cells with d >= {LARGE_D}):", "",
              "| depth | quantity | SAM - SGD [95% CI] |", "| --- | --- | --- |"]
    errors = {}
    for depth in sorted(res.depth.unique()):
        at = big[big.depth == depth]
        for name, col in quantities:
            table = (paired_differences(at, baselines=("sgd",), cell_columns=cells) if col == "test_error" else
                     paired_on(at, col, ("sgd",), cells))   # the test error scores a diverged run as chance
            row = pooled(table, "sam", "sgd")
            if col == "test_error":
                errors[float(depth)] = row
            lines.append(f"| {depth} | {name} | {effect(row)} |")
    lines += ["", f"- {depth_sentence(errors)}"]
    if traj is None:
        lines.append(f"- The update-point noise-active fraction during SAM's phase: {NO_TRAJECTORIES}.")
    lines += [""] + depth2_ratio_note(report["claims"], int(res.seed.nunique()))
    return write(Path(out).stem, lines, Path(out).parent)
