"""Do SGD's and SAM -> SGD's phase boundaries, Gamma/Rho or SAM's amplification change under cosine / step /
warm-up + cosine schedules at fixed total steps ([C23]'s open question 3, docs/science.md §3.5)?
studies/lr_schedules.toml's report.

Opens with the sweep's claim lines (verify.json: the boundary claims cover the constant-eta SGD and SAM; no theorem
covers a schedule). Then, exploratory: every label's boundary slope in d and its difference from the same rule's
constant-eta slope (jackknife-t over seeds, the leave-one-out boundaries of verify), paired test-error differences
against the constant schedule and SAM -> SGD against SGD under each schedule (t-intervals over seeds), and, with
the sweep's trajectories, log(Gamma/Rho) at SAM's switch and at the end. The report behind
``studies/sam_questions_report.py lr_schedules``."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from theory_sim.intervals import jackknife_interval, leave_one_out  # noqa: E402
from theory_sim.io import save_figure  # noqa: E402
from theory_sim.reports.study_report import (EXPLORATORY, NO_TRAJECTORIES, claim_lines, effect,  # noqa: E402
                                             interval_text, paired_on, run_last, sam_phase, where,
                                             with_run_values, write)
from theory_sim.sweeps.paired import paired_differences, pooled  # noqa: E402
from theory_sim.sweeps.store import load_spec, read_results, read_trajectories  # noqa: E402

SCHEDULES = {"": "constant", "_cosine": "cosine", "_step": "step", "_warmup_cosine": "linear_warmup_cosine"}


def slope_table(r: pd.DataFrame, spec, labels: list[str], against: dict[str, str]):
    """Boundary slope in d of every label (verify's boundaries and fits) with its jackknife-t interval over seeds,
    and each label's slope minus its reference's (``against``: label -> reference label) with the same jackknife
    (the replicates leave the same seed out of both). Every leave-one-out fit at once (verify's
    ``resampled_boundaries`` / ``resampled_slopes``)."""
    from theory_sim.sweeps.verify import boundaries, cell_arrays, fit_slopes, resampled_boundaries, resampled_slopes

    dims = spec.cell_dims
    cells = cell_arrays(r, dims)
    threshold = spec.benign_threshold(float(r.flip_p.mean()))
    bnd = boundaries(cells, threshold, None, dims)
    fits = fit_slopes(bnd, dims).reset_index(drop=True)
    S = int(r.seed.nunique())
    reps = resampled_slopes(bnd, resampled_boundaries(cells, threshold, leave_one_out(S)), dims)   # (fits, S)
    in_d = fits.index[fits.dim == "d"]
    row_of = dict(zip(fits.label[in_d], in_d))
    point = {lab: float(fits.slope[row_of[lab]]) if lab in row_of else np.nan for lab in labels}
    loo = {lab: reps[row_of[lab]] if lab in row_of else np.full(S, np.nan) for lab in labels}
    rows = []
    for lab in labels:
        iv = jackknife_interval(point[lab], loo[lab])
        ref = against.get(lab)
        delta = jackknife_interval(point[lab] - point[ref], loo[lab] - loo[ref]) if ref else None
        rows.append(dict(label=lab, slope=iv.estimate, ci_low=iv.low, ci_high=iv.high, reference=ref,
                         delta=np.nan if delta is None else delta.estimate,
                         delta_low=np.nan if delta is None else delta.low,
                         delta_high=np.nan if delta is None else delta.high))
    return pd.DataFrame(rows), bnd


def slope_sentence(row) -> str:
    """A schedule's slope against the constant schedule's, as an effect size and where its interval lies."""
    return (f"slope in d {interval_text(row.slope, row.ci_low, row.ci_high)}; minus the constant schedule's "
            f"{interval_text(row.delta, row.delta_low, row.delta_high)}, interval "
            + where(row.delta_low, row.delta_high, "below 0 (flatter)", "above 0 (steeper)", "covers 0"))


def write_report(run: Path, gallery: Path) -> str:
    spec, r, traj = load_spec(run), read_results(run), read_trajectories(run)
    key = spec.run_key
    labels = [o.label for o in spec.optimizers]
    against = {f"{rule}{s}": rule for rule in ("sgd", "sam") for s in SCHEDULES if s}
    slopes, _ = slope_table(r, spec, labels, against)
    # test error: each schedule against the same rule's constant-eta run, and SAM against SGD under each schedule
    table = paired_differences(r, baselines=labels, spec=spec)
    phase_end = sam_phase(spec)
    lines = [f"# Learning-rate schedules ({spec.name}, {r.seed.nunique()} seeds per cell)", "", *claim_lines(run),
             "## Exploratory: the schedules against constant eta", "", EXPLORATORY, "",
             f"SGD and SAM ({phase_end} steps) -> SGD over d and ||mu||, every run {int(r.steps.max())} steps at "
             f"peak eta = {r.eta.max():g}, under constant, cosine, step (x0.1 at half the steps) and 5% linear "
             "warm-up + cosine schedules (docs/science.md §3.5). Boundary slopes: jackknife-t over seeds.", "",
             "| label | boundary slope in d [95% CI] | minus constant's [95% CI] | test error minus same rule, "
             "constant [95% CI] |", "| --- | --- | --- | --- |"]
    for row in slopes.itertuples():
        ref = row.reference if isinstance(row.reference, str) else None   # pandas stores a missing one as NaN
        te = effect(pooled(table, row.label, ref)) if ref else "(reference)"
        dd = interval_text(row.delta, row.delta_low, row.delta_high) if ref else ""
        lines.append(f"| {row.label} | {interval_text(row.slope, row.ci_low, row.ci_high)} | {dd} | {te} |")
    lines += [""]
    for row in slopes.itertuples():
        if isinstance(row.reference, str):
            lines.append(f"- {row.label}: {slope_sentence(row)}.")
    for suffix, name in SCHEDULES.items():
        row = pooled(table, f"sam{suffix}", f"sgd{suffix}")
        lines.append(f"- SAM -> SGD minus SGD, both {name}: test error {effect(row)}"
                     + (f", interval {where(row['ci_low'], row['ci_high'])}." if row else "."))
    lines += ["", "## Exploratory: log(Gamma/Rho) against constant eta", ""]
    if traj is None:
        lines.append(f"Gamma/Rho at SAM's switch and at the end: {NO_TRAJECTORIES}.")
    else:
        ratio = (traj.gamma_mean / traj.rhobar_mean).replace([np.inf, -np.inf], np.nan)
        traj = traj.assign(log_ratio=np.log(ratio))
        values = with_run_values(r, key, ratio_phase=run_last(traj, key, "log_ratio", phase_end),
                                 ratio_end=run_last(traj, key, "log_ratio", int(traj.step.max())))
        cells = [k for k in key if k not in ("label", "seed")]
        phase = paired_on(values, "ratio_phase", labels, cells)
        final = paired_on(values, "ratio_end", labels, cells)
        for lab, ref in against.items():
            lines.append(f"- {lab} minus {ref}: log(Gamma/Rho) at step {phase_end} (SGD: its last logged step "
                         f"before) {effect(pooled(phase, lab, ref))}, at the end {effect(pooled(final, lab, ref))}.")
        figure(traj, phase_end, gallery)
    lines += ["", f"From `{run}/results.parquet` (and `trajectories.parquet` when present) and `verify.json` by "
              f"`python studies/sam_questions_report.py lr_schedules {run}`."]
    return write("lr_schedules", lines, gallery)


def figure(traj: pd.DataFrame, phase_end: int, gallery: Path) -> None:
    """eta(t) and log(Gamma/Rho) along training at one cell, every label."""
    cell = traj[(traj.d == 3200) & np.isclose(traj.mu_norm, 2.0)] if (traj.d == 3200).any() else traj
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lab, g in cell.groupby("label", sort=False):
        m = g.groupby("step")[["lr", "log_ratio"]].mean()
        style = "-" if lab.startswith("sam") else "--"
        axes[0].plot(m.index, m.lr, style, label=lab)
        axes[1].plot(m.index, m.log_ratio, style, label=lab)
    axes[0].set(xlabel="step", ylabel="eta(t)", title="schedules")
    axes[1].set(xlabel="step", ylabel="log(Gamma / Rho), seed mean", xscale="log", title="d = 3200, ||mu|| = 2")
    axes[1].axvline(phase_end, color="gray", lw=0.8)
    axes[1].legend(fontsize=7, ncol=2)
    save_figure(fig, gallery / "lr_schedules_trajectories.png")
