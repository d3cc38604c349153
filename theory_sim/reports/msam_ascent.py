"""Does a more exact maximiser generalise worse ([T24]'s next check 2, docs/science.md §8)? studies/msam_ascent.toml:
K ascent steps x step length x c_tau, every rule for SAM's phase then SGD.

Opens with the sweep's claim lines (verify.json). Then, exploratory: every rule's paired test-error difference from
SAM (t-intervals over seeds), and, with the sweep's trajectories, the perturbed-loss gain L_I(W + eps) - L_I(W)
each rule reaches (trajectory column perturbed_loss_gain), its paired difference from SAM's, and its correlation
with the test error across the rules on the same data (jackknife-t over seeds) with its share of variance r^2.
The sentence on [T24]'s claim is computed from those numbers (``maximiser_sentence``): it states the correlation,
r^2 and how many multi-step rules reach a higher perturbed loss than SAM and still err less, and claims no more
than they support. The report behind ``studies/sam_questions_report.py msam_ascent``."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from theory_sim.intervals import Interval  # noqa: E402
from theory_sim.io import save_figure  # noqa: E402
from theory_sim.reports.study_report import (EXPLORATORY, NO_TRAJECTORIES, centred_correlation,  # noqa: E402
                                             claim_lines, effect, fmt, interval_text, paired_on, run_mean, sam_phase,
                                             where, with_run_values, write)
from theory_sim.sweeps.cells import scored_error  # noqa: E402
from theory_sim.sweeps.paired import paired_differences, pooled  # noqa: E402
from theory_sim.sweeps.store import load_spec, read_results, read_trajectories  # noqa: E402

WEAK_R2 = 0.25   # below this share of variance a correlation is called weak in the text


def variance_share(lo: float, hi: float) -> tuple[float, float]:
    """The interval of r^2 (the share of variance a correlation explains) from r's interval [lo, hi]."""
    if lo <= 0 <= hi:
        return 0.0, max(lo * lo, hi * hi)
    return min(lo * lo, hi * hi), max(lo * lo, hi * hi)


def higher_gain_lower_error(errors: pd.DataFrame, gains: pd.DataFrame, labels, clear: bool = True) -> list[str]:
    """The rules that reach a higher perturbed-loss gain than SAM and still err less: with ``clear``, their paired
    gain interval lies above 0 and their paired test-error interval below 0; without, the point estimates do."""
    lo, hi = ("ci_low", "ci_high") if clear else ("mean_diff", "mean_diff")
    out = []
    for lab in labels:
        e, g = pooled(errors, lab, "sam"), pooled(gains, lab, "sam")
        if e and g and g[lo] > 0 and e[hi] < 0:
            out.append(lab)
    return out


def maximiser_sentence(r: Interval, counter: list[str], others: int, by_point: int | None = None) -> str:
    """What the numbers say about "a more exact maximiser (a higher reached perturbed loss) generalises worse"."""
    r2 = r.estimate ** 2
    s_lo, s_hi = variance_share(r.low, r.high)
    text = (f"Across the rules on the same data (within each cell and seed), the reached perturbed-loss gain "
            f"correlates with the test error at r = {interval_text(r.estimate, r.low, r.high)} (jackknife over "
            f"{r.units} seeds), r^2 = {r2:.3f} [{s_lo:.3f}, {s_hi:.3f}]: the gain accounts for {100 * r2:.0f}% of the "
            f"test error's variance across rules. {len(counter)} of {others} multi-step rules reach a higher gain than SAM and still err "
            f"less than SAM (both paired intervals clear of 0" + (f": {', '.join(counter)}" if counter else "")
            + (f"; {by_point} of {others} by the point estimates alone" if by_point is not None else "") + "). ")
    side = where(r.low, r.high)
    if side == "above 0" and r2 >= WEAK_R2 and not counter and not by_point:
        return text + "So on this model a higher reached perturbed loss goes with a higher test error."
    if side == "above 0":
        return text + ("The correlation is positive but " + ("weak" if r2 < WEAK_R2 else "not uniform")
                       + (", and rules that reach more than SAM err less than SAM" if counter or by_point else "")
                       + ": the data do not support \"a more exact maximiser generalises worse\" as a statement "
                       "about the rules; at most a weak tendency among them.")
    if side == "below 0":
        return text + "The correlation is negative: a higher reached perturbed loss goes with a lower test error."
    return text + "The interval covers 0: no relation between the reached perturbed loss and the test error is shown."


def write_report(run: Path, gallery: Path) -> str:
    spec, r, traj = load_spec(run), read_results(run), read_trajectories(run)
    key = spec.run_key
    cells = [k for k in key if k not in ("label", "seed")]
    labels = [o.label for o in spec.optimizers]
    others = [lab for lab in labels if lab != "sam"]
    K = {o.label: int(o.overrides.get("ascent_steps", 1)) if o.optimizer == "msam" else 1 for o in spec.optimizers}
    alpha = {o.label: float(o.overrides.get("ascent_step", 1.0)) for o in spec.optimizers}
    phase = sam_phase(spec)
    table = paired_differences(r, baselines=("sam",), spec=spec)
    c_taus = sorted(r.c_tau.unique())
    per_c = {c: paired_differences(r[r.c_tau == c], baselines=("sam",), spec=spec) for c in c_taus}
    if traj is not None:
        values = with_run_values(r, key, gain_init=run_mean(traj, key, "perturbed_loss_gain", 1, 1),
                                 gain=run_mean(traj, key, "perturbed_loss_gain", 1, phase))
    else:
        values = r.assign(gain_init=np.nan, gain=np.nan)
    values = values.assign(err=scored_error(values))
    gains = paired_on(values, "gain", ("sam",), cells) if traj is not None else None
    lines = [f"# Multi-step ascent: does a more exact maximiser generalise worse? ({spec.name}, "
             f"{r.seed.nunique()} seeds per cell)", "", *claim_lines(run),
             "## Exploratory: every rule against SAM", "", EXPLORATORY, "",
             "K ascent steps (the first SAM's, the K - 1 others of length ascent_step * tau) x c_tau in "
             + ", ".join(f"{c:g}" for c in c_taus) + f", every rule {phase} steps then SGD, d = "
             + ", ".join(f"{d:g}" for d in sorted(r.d.unique())) + ", ||mu|| = "
             + ", ".join(f"{m:.3g}" for m in sorted(r.mu_norm.unique())) + ". The perturbed-loss gain "
             "L_I(W + eps) - L_I(W) is each update's, on its batch at its update point: at initialisation (step 1) "
             f"and averaged over SAM's phase (steps 1..{phase}). Differences: variant - SAM, paired over seeds.", "",
             "| label | K | step / tau | test error | minus SAM, all cells [95% CI] | "
             + " | ".join(f"minus SAM, c_tau = {c:g}" for c in c_taus)
             + " | gain at init | gain over the phase | gain minus SAM's [95% CI] |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in c_taus) + " | --- | --- | --- |"]
    for lab in labels:
        v = values[values.label == lab]
        vs = "(reference)" if lab == "sam" else effect(pooled(table, lab, "sam"))
        by_c = " | ".join("" if lab == "sam" else effect(pooled(per_c[c], lab, "sam")) for c in c_taus)
        g = "" if lab == "sam" or gains is None else effect(pooled(gains, lab, "sam"))
        step = "-" if K[lab] == 1 else f"{alpha[lab]:.3g}"
        lines.append(f"| {lab} | {K[lab]} | {step} | {v.err.mean():.3f} | {vs} | {by_c} | "
                     f"{fmt(v.gain_init.mean(), 4)} | {fmt(v.gain.mean(), 4)} | {g} |")
    below = [lab for lab in others if (pooled(table, lab, "sam") or {}).get("ci_high", np.nan) < 0]
    above = [lab for lab in others if (pooled(table, lab, "sam") or {}).get("ci_low", np.nan) > 0]
    lines += ["", f"- Test error minus SAM's over all cells: interval below 0 for {', '.join(below) or 'none'}; "
              f"above 0 for {', '.join(above) or 'none'}; covering 0 for the rest."]
    if traj is None:
        lines.append(f"- The perturbed loss each rule reaches and its correlation with the test error: "
                     f"{NO_TRAJECTORIES}.")
    else:
        rho = centred_correlation(values, "gain", "err", [*cells, "seed"])
        rho_i = centred_correlation(values, "gain_init", "err", [*cells, "seed"])
        by_point = len(higher_gain_lower_error(table, gains, others, clear=False))
        clear = higher_gain_lower_error(table, gains, others)
        lines.append(f"- {maximiser_sentence(rho, clear, len(others), by_point)}")
        lines.append(f"- At initialisation (step 1) the same correlation is r = "
                     f"{interval_text(rho_i.estimate, rho_i.low, rho_i.high)}.")
        for fam, pick in (("step tau/K", lambda k: 1 / k), ("step tau/2", lambda k: 0.5), ("step tau", lambda k: 1.0)):
            labs = sorted((lab for lab in labels if K[lab] > 1 and np.isclose(alpha[lab], pick(K[lab]))), key=K.get)
            if len(labs) >= 2:
                a, b = labs[0], labs[-1]
                t = paired_differences(r[r.label.isin([a, b])], baselines=(a,), spec=spec)
                gt = paired_on(values[values.label.isin([a, b])], "gain", (a,), cells)
                lines.append(f"- {fam}: K = {K[b]} ({b}) minus K = {K[a]} ({a}): test error "
                             f"{effect(pooled(t, b, a))}, reached gain {effect(pooled(gt, b, a))}.")
        figure(values, traj, labels, gallery)
    lines += ["", f"From `{run}/results.parquet` (and `trajectories.parquet` when present) by "
              f"`python studies/sam_questions_report.py msam_ascent {run}`."]
    return write("msam_ascent", lines, gallery)


def figure(values: pd.DataFrame, traj: pd.DataFrame, labels, gallery: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lab in labels:
        v = values[values.label == lab]
        axes[0].scatter(v.gain, v.err, s=10, label=lab)
        m = traj[traj.label == lab].groupby("step").perturbed_loss_gain.mean()
        axes[1].plot(m.index, m, label=lab)
    axes[0].set(xlabel="perturbed-loss gain over SAM's phase (per run)", ylabel="test error", xscale="log")
    axes[1].set(xlabel="step", ylabel="perturbed-loss gain, mean over runs", xscale="log", yscale="log",
                title="L_I(W + eps) - L_I(W) on the update batch")
    axes[1].legend(fontsize=6, ncol=2)
    save_figure(fig, gallery / "msam_ascent_perturbed_loss.png")
