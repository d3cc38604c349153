"""Does any Rand-SAM radius help, and why not? studies/randsam_radius.toml: Rand-SAM (eps = tau z/||z||, z ~ N(0, I)
fresh every step) with c_tau from 1 up to about sqrt(2 m d), against SGD and SAM ([T24], docs/science.md §8).

Opens with the sweep's claim lines (verify.json). Then, exploratory: every radius's paired test-error difference
from SGD and SAM (t-intervals over seeds), per d and pooled, and, with the sweep's trajectories, the update-point
noise-active fraction and the loss increase of eps over SAM's phase, paired the same way. The sentence comparing
with [T24]'s real-network finding is computed from the pooled intervals (``t24_sentence``). The report behind
``studies/sam_questions_report.py randsam_radius``."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from theory_sim.io import save_figure  # noqa: E402
from theory_sim.reports.study_report import (EXPLORATORY, NO_TRAJECTORIES, claim_lines, effect, fmt,  # noqa: E402
                                             paired_on, run_mean, sam_phase, where, with_run_values, write)
from theory_sim.sweeps.cells import scored_error  # noqa: E402
from theory_sim.sweeps.paired import paired_differences, pooled  # noqa: E402
from theory_sim.sweeps.store import load_spec, read_results, read_trajectories  # noqa: E402


def _side(row) -> str:
    return where(row["ci_low"], row["ci_high"]) if row else "no interval"


def t24_sentence(table: pd.DataFrame, rand: list[str], c_of: dict) -> str:
    """Is any radius as good as SAM and better than SGD ([T24]'s finding on WRN-28-10 / CIFAR)? From the pooled
    paired intervals: a radius 'matches' when its interval against SAM does not lie above 0 and its interval against
    SGD lies below 0."""
    best = min(rand, key=lambda lab: pooled(table, lab, "sam")["mean_diff"])
    sam_sgd, vs_sam, vs_sgd = pooled(table, "sam", "sgd"), pooled(table, best, "sam"), pooled(table, best, "sgd")
    matches = [lab for lab in rand if _side(pooled(table, lab, "sam")) != "above 0"
               and _side(pooled(table, lab, "sgd")) == "below 0"]
    text = (f"[T24] reports Rand-SAM comparable to SAM and both better than SGD on WRN-28-10 / CIFAR "
            f"(docs/science.md §8). Here SAM minus SGD: {effect(sam_sgd)}; the radius closest to SAM "
            f"(c_tau = {c_of[best]:g}) minus SAM: {effect(vs_sam)}, minus SGD: {effect(vs_sgd)}. ")
    if matches:
        return text + ("The theory model shows the same pattern at c_tau = "
                       + ", ".join(f"{c_of[lab]:g}" for lab in matches) + " (interval against SAM not above 0, "
                       "against SGD below 0).")
    return text + ("No radius shows [T24]'s pattern here: at every c_tau the interval against SAM lies above 0 or "
                   "the interval against SGD does not lie below 0.")


def write_report(run: Path, gallery: Path) -> str:
    spec, r, traj = load_spec(run), read_results(run), read_trajectories(run)
    key = spec.run_key
    cells = [k for k in key if k not in ("label", "seed")]
    labels = [o.label for o in spec.optimizers]
    rand = [lab for lab in labels if lab.startswith("randsam")]
    c_of = {o.label: float(o.overrides.get("c_tau", 1.0)) for o in spec.optimizers}
    phase = sam_phase(spec)
    if traj is not None:
        values = with_run_values(r, key, noise=run_mean(traj, key, "update_noise_active_frac", 1, phase),
                                 gain=run_mean(traj, key, "perturbed_loss_gain", 1, phase))
    else:
        values = r.assign(noise=np.nan, gain=np.nan)
    values = values.assign(err=scored_error(values))
    table = paired_differences(r, baselines=("sgd", "sam"), spec=spec)
    ds = sorted(r.d.unique())
    per_d = {d: paired_differences(r[r.d == d], baselines=("sgd", "sam"), spec=spec) for d in ds}
    noise = paired_on(values, "noise", ("sgd",), cells) if traj is not None else None
    gain = paired_on(values, "gain", ("sam",), cells) if traj is not None else None
    m = float(r.m.iloc[0])
    lines = [f"# Rand-SAM's radius ({spec.name}, {r.seed.nunique()} seeds per cell)", "", *claim_lines(run),
             "## Exploratory: every radius against SGD and SAM", "", EXPLORATORY, "",
             "Rand-SAM with c_tau from 1 up to about sqrt(2 m d) ("
             + ", ".join(f"{np.sqrt(2 * m * d):.0f} at d = {d:g}" for d in ds) + f"), every rule {phase} steps "
             "then SGD, against SGD and SAM (c_tau = 1). Test-error differences: variant - baseline, paired over "
             "seeds.", "",
             "| label | c_tau | test error | minus SGD [95% CI] | minus SAM [95% CI] | "
             + " | ".join(f"minus SGD, d = {d:g}" for d in ds) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in ds) + " |"]
    for lab in labels:
        v = values[values.label == lab]
        vs_sgd = "(reference)" if lab == "sgd" else effect(pooled(table, lab, "sgd"))
        vs_sam = "(reference)" if lab == "sam" else effect(pooled(table, lab, "sam"))
        by_d = " | ".join("" if lab == "sgd" else effect(pooled(per_d[d], lab, "sgd")) for d in ds)
        c = "-" if lab == "sgd" else f"{c_of[lab]:g}"
        lines.append(f"| {lab} | {c} | {v.err.mean():.3f} | {vs_sgd} | {vs_sam} | {by_d} |")
    sides = {lab: _side(pooled(table, lab, "sgd")) for lab in rand}
    lines += ["", "- Rand-SAM minus SGD, pooled: interval below 0 at "
              + (", ".join(f"c_tau = {c_of[lab]:g}" for lab in rand if sides[lab] == "below 0") or "no radius")
              + "; above 0 at "
              + (", ".join(f"c_tau = {c_of[lab]:g}" for lab in rand if sides[lab] == "above 0") or "no radius")
              + "; covering 0 at the rest.",
              f"- {t24_sentence(table, rand, c_of)}"]
    if traj is None:
        lines.append(f"- Why (the update-point noise-active fraction, the loss increase of eps): {NO_TRAJECTORIES}.")
    else:
        lines.append(f"- Update-point noise-active fraction over SAM's phase, minus SGD's: SAM "
                     f"{effect(pooled(noise, 'sam', 'sgd'))}; "
                     + "; ".join(f"c_tau = {c_of[lab]:g}: {effect(pooled(noise, lab, 'sgd'))}" for lab in rand) + ".")
        lines.append("- Loss increase of eps over SAM's phase, minus SAM's: "
                     + "; ".join(f"c_tau = {c_of[lab]:g}: {effect(pooled(gain, lab, 'sam'))}" for lab in rand)
                     + f" (SAM's own: {fmt(values[values.label == 'sam'].gain.mean())}).")
        figure(values, per_d, rand, c_of, gallery)
    lines += ["", f"From `{run}/results.parquet` (and `trajectories.parquet` when present) by "
              f"`python studies/sam_questions_report.py randsam_radius {run}`."]
    return write("randsam_radius", lines, gallery)


def figure(values: pd.DataFrame, per_d: dict, rand: list[str], c_of: dict, gallery: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for d, table in per_d.items():
        rows = [(c_of[lab], pooled(table, lab, "sgd")) for lab in rand]
        x = np.array([c for c, _ in rows])
        axes[0].errorbar(x, [p["mean_diff"] for _, p in rows],
                         yerr=[[p["mean_diff"] - p["ci_low"] for _, p in rows],
                               [p["ci_high"] - p["mean_diff"] for _, p in rows]], marker="o", capsize=3,
                         label=f"d = {d:g}")
        v = values[(values.d == d) & values.label.isin(rand)].groupby("label")[["noise", "gain"]].mean()
        axes[1].plot([c_of[lab] for lab in v.index], v.noise, "o-", label=f"d = {d:g}")
        axes[2].plot([c_of[lab] for lab in v.index], v.gain, "o-", label=f"d = {d:g}")
        for ax, col in ((axes[1], "noise"), (axes[2], "gain")):
            ref = values[(values.d == d) & (values.label == ("sgd" if col == "noise" else "sam"))][col].mean()
            ax.axhline(ref, ls=":", color=ax.lines[-1].get_color())
    axes[0].axhline(0, color="gray", lw=0.8)
    axes[0].set(xscale="log", xlabel="Rand-SAM c_tau", ylabel="test error - SGD's (paired, 95% CI)")
    axes[1].set(xscale="log", xlabel="Rand-SAM c_tau", ylabel="noise-active fraction at the update point",
                title="dotted: SGD")
    axes[2].set(xscale="log", yscale="log", xlabel="Rand-SAM c_tau", ylabel="L_I(W + eps) - L_I(W)",
                title="dotted: SAM")
    axes[0].legend()
    save_figure(fig, gallery / "randsam_radius_mechanism.png")
