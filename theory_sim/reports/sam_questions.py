"""Verdicts of the issue-15 SAM-family studies, computed from their sweep tables (every number printed comes from
the table, every comparison is a paired difference over seeds with its bootstrap interval,
``theory_sim.sweeps.paired``):

- ``msam_step_size`` (studies/msam_step_size.toml): is "K = 5 is worse than SAM" a step-size statement? K = 5 with
  ascent steps of tau and of tau / 5 against SAM, at the cells where step tau loses.
- ``lr_schedules`` (studies/lr_schedules.toml): do SGD's and SAM -> SGD's phase boundaries, Gamma/Rho or SAM's
  amplification change under cosine / step / warm-up + cosine schedules at fixed total steps ([C23] open question 3)?
- ``msam_ascent`` (studies/msam_ascent.toml): [T24] next check 2, is "a more exact maximiser generalises worse" true
  here? Test error vs K and the step length, and its correlation with the perturbed loss each rule reaches.
- ``randsam_radius`` (studies/randsam_radius.toml): does any Rand-SAM radius help, and why not (noise-active fraction
  at the update point, the loss increase of eps)?

The reports behind ``studies/sam_questions_report.py`` (docs/science.md §8, §3.5): ``STUDIES[name](run, gallery)``
writes ``gallery``/name.md (and name_*.png)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from theory_sim.io import atomic_write_bytes, save_figure  # noqa: E402
from theory_sim.sweeps.cells import scored_error  # noqa: E402
from theory_sim.sweeps.paired import describe, paired_differences, pooled  # noqa: E402
from theory_sim.sweeps.store import load_spec, read_results, read_trajectories  # noqa: E402
from theory_sim.sweeps.verify import prediction_holds  # noqa: E402

N_BOOT = 2000


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def counts(table: pd.DataFrame, label: str, baseline: str) -> str:
    """How the per-cell verdicts of one comparison split: 'better in 7, worse in 0, indistinguishable in 3 of 10'."""
    c = table[(table.scope == "cell") & (table.label == label) & (table.baseline == baseline)].verdict
    return (f"better in {int((c == 'better').sum())}, worse in {int((c == 'worse').sum())}, indistinguishable in "
            f"{int((c == 'indistinguishable').sum())} of {len(c)} cells")


def verdict_line(table: pd.DataFrame, label: str, baseline: str) -> str:
    row = pooled(table, label, baseline)
    return f"{label} vs {baseline}: {describe(row)}; per cell {counts(table, label, baseline)}"


def bootstrap_corr(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int = N_BOOT, seed: int = 0):
    """Pearson correlation of x and y with a cluster-bootstrap 95% interval over ``groups`` (seeds)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, groups = x[ok], y[ok], groups[ok]
    r = float(np.corrcoef(x, y)[0, 1])
    uniq = np.unique(groups)
    idx = {g: np.flatnonzero(groups == g) for g in uniq}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        take = np.concatenate([idx[g] for g in rng.choice(uniq, len(uniq))])
        boot.append(np.corrcoef(x[take], y[take])[0, 1])
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return r, float(lo), float(hi), int(ok.sum())


def interval_word(lo: float, hi: float, positive: str, negative: str, none: str) -> str:
    return positive if lo > 0 else (negative if hi < 0 else none)


def write(name: str, lines: list[str], gallery: Path) -> None:
    path = gallery / f"{name}.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    print(path.read_text())


# --------------------------------------------------------------------------------------------------------------------
def msam_step_size(run: Path, gallery: Path) -> None:
    spec, r = load_spec(run), read_results(run)
    table = paired_differences(r, baselines=("sam",), spec=spec, n_boot=N_BOOT)
    r = r.assign(err=scored_error(r))
    means = r.pivot_table(index=["d", "mu_norm"], columns="label", values="err", aggfunc="mean")
    cells = table[table.scope == "cell"].set_index(["label", "d", "mu_norm"])
    lines = [f"# Multi-step SAM's step length ({spec.name}, {r.seed.nunique()} seeds per cell)", "",
             "K = 5 ascent steps after SAM's first one of length tau, each of length ascent_step * tau, against "
             "SAM, every rule for 200 steps then SGD (settings of sam_family_phase). Paired differences of test "
             "error over seeds (negative: errs less than SAM), 95% cluster-bootstrap intervals "
             "(theory_sim.sweeps.paired).", "",
             "| d | mu | SAM | K=5, step tau | K=5, step tau/5 | step tau - SAM [95% CI] | step tau/5 - SAM [95% CI] |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (d, mu), row in means.iterrows():
        a, b = cells.loc[("msam5", d, mu)], cells.loc[("msam5_step_tau5", d, mu)]
        lines.append(f"| {d:g} | {mu:.3g} | {row['sam']:.3f} | {row['msam5']:.3f} | {row['msam5_step_tau5']:.3f} | "
                     f"{a.mean_diff:+.3f} [{a.ci_low:+.3f}, {a.ci_high:+.3f}] | "
                     f"{b.mean_diff:+.3f} [{b.ci_low:+.3f}, {b.ci_high:+.3f}] |")
    big, small = pooled(table, "msam5", "sam"), pooled(table, "msam5_step_tau5", "sam")
    claim = ("holds" if small["verdict"] == "better" and big["verdict"] == "worse" else "does not hold")
    lines += ["", f"- With step tau (as in sam_family_phase): {verdict_line(table, 'msam5', 'sam')}.",
              f"- With step tau/5: {verdict_line(table, 'msam5_step_tau5', 'sam')}.",
              f"- \"K = 5 is worse than SAM\" is a step-size statement: the claim that step tau/5 makes K = 5 beat SAM "
              f"where step tau loses {claim} on the pooled paired interval.", "",
              f"From `{run}/results.parquet` by `python studies/sam_questions_report.py msam_step_size {run}`."]
    write("msam_step_size", lines, gallery)


# --------------------------------------------------------------------------------------------------------------------
def paired_on(values: pd.DataFrame, column: str, baselines, cells, seed: int = 0) -> pd.DataFrame:
    """paired_differences on another per-run quantity than the test error (a trajectory summary): the same paired
    cluster bootstrap over seeds, with ``column`` in the place of test_error (runs where it is not finite are
    dropped before, so the scoring of missing errors as 0.5 never applies)."""
    v = values[np.isfinite(values[column])]
    return paired_differences(v.assign(test_error=v[column], diverged=False), baselines=baselines,
                              cell_columns=cells, n_boot=N_BOOT, seed=seed)


def sam_phase(spec) -> int:
    """The SAM-family rules' sam_steps (one value for the study: its variants or its base set it)."""
    base = dict(spec.base).get("sam_steps")
    steps = {o.overrides.get("sam_steps", base) for o in spec.optimizers if o.optimizer != "sgd"}
    if len(steps) != 1 or None in steps:
        raise SystemExit(f"error: {spec.name}: the SAM-family variants need one finite sam_steps, got {steps}")
    return int(steps.pop())


def run_summary(traj: pd.DataFrame, results: pd.DataFrame, key, column: str, lo: int, hi: float) -> pd.Series:
    """Per run: the mean of a trajectory column over its logged steps lo <= step <= hi."""
    t = traj[(traj.step >= lo) & (traj.step <= hi)]
    return t.groupby(list(key))[column].mean()


def run_last(traj: pd.DataFrame, key, column: str, hi: float) -> pd.Series:
    """Per run: a trajectory column at its last logged step <= hi (SGD runs are not logged at SAM's switch)."""
    t = traj[traj.step <= hi].sort_values("step")
    return t.groupby(list(key))[column].last()


def with_run_values(results: pd.DataFrame, key, **series) -> pd.DataFrame:
    out = results.set_index(list(key))
    for name, s in series.items():
        out[name] = s.reindex(out.index)
    return out.reset_index()


def slope_table(r: pd.DataFrame, spec, labels: list[str], against: dict[str, str], n_boot: int = 200, seed: int = 0):
    """Boundary slope in d of every label (verify's boundaries and fits) with a bootstrap over seeds, and the
    paired bootstrap of each label's slope minus its reference's (``against``: label -> reference label), the same
    seed resamples for every label (verify resamples seeds jointly). Every resample at once (verify's
    ``resampled_boundaries`` / ``resampled_slopes``: the same numbers as fitting resample by resample)."""
    from theory_sim.sweeps.cells import seed_resamples
    from theory_sim.sweeps.verify import boundaries, cell_arrays, fit_slopes, resampled_boundaries, resampled_slopes

    dims = spec.cell_dims
    cells = cell_arrays(r, dims)
    threshold = spec.benign_threshold(float(r.flip_p.mean()))
    bnd = boundaries(cells, threshold, None, dims)
    fits = fit_slopes(bnd, dims).reset_index(drop=True)
    draws = seed_resamples(int(r.seed.nunique()), n_boot, seed)
    per_fit = resampled_slopes(bnd, resampled_boundaries(cells, threshold, draws), dims)   # (fits, n_boot)
    in_d = fits.index[fits.dim == "d"]
    row_of = dict(zip(fits.label[in_d], in_d))
    point = {lab: float(fits.slope[row_of[lab]]) if lab in row_of else np.nan for lab in labels}
    boot = pd.DataFrame({lab: per_fit[row_of[lab]] if lab in row_of else np.full(n_boot, np.nan) for lab in labels})
    rows = []
    for lab in labels:
        lo, hi = np.nanpercentile(boot[lab], [2.5, 97.5])
        ref = against.get(lab)
        dlo = dhi = diff = np.nan
        if ref is not None:
            d = boot[lab] - boot[ref]
            diff = point[lab] - point[ref]
            dlo, dhi = np.nanpercentile(d, [2.5, 97.5])
        rows.append(dict(label=lab, slope=point[lab], ci_low=lo, ci_high=hi, reference=ref, delta=diff,
                         delta_low=dlo, delta_high=dhi))
    return pd.DataFrame(rows), bnd


SCHEDULES = {"": "constant", "_cosine": "cosine", "_step": "step", "_warmup_cosine": "linear_warmup_cosine"}


def lr_schedules(run: Path, gallery: Path) -> None:
    spec, r, traj = load_spec(run), read_results(run), read_trajectories(run)
    key = spec.run_key
    labels = [o.label for o in spec.optimizers]
    against = {f"{rule}{s}": rule for rule in ("sgd", "sam") for s in SCHEDULES if s}
    slopes, bnd = slope_table(r, spec, labels, against)
    # test error: each schedule against the same rule's constant-eta run, and SAM against SGD under each schedule
    table = paired_differences(r, baselines=labels, spec=spec, n_boot=N_BOOT)
    phase_end = sam_phase(spec)
    ratio = (traj.gamma_mean / traj.rhobar_mean).replace([np.inf, -np.inf], np.nan)
    traj = traj.assign(log_ratio=np.log(ratio))
    end = int(traj.step.max())
    values = with_run_values(r, key, ratio_phase=run_last(traj, key, "log_ratio", phase_end),
                             ratio_end=run_last(traj, key, "log_ratio", end))
    cells = [k for k in key if k not in ("label", "seed")]
    phase = paired_on(values, "ratio_phase", labels, cells)
    final = paired_on(values, "ratio_end", labels, cells)
    claims = pd.DataFrame()
    vpath = run / "verify.json"
    if vpath.exists():
        import json

        claims = pd.DataFrame(json.loads(vpath.read_text())["trajectory_claims"])
    lines = [f"# Learning-rate schedules ({spec.name}, {r.seed.nunique()} seeds per cell)", "",
             f"SGD and SAM ({phase_end} steps) -> SGD over d and ||mu||, every run {int(r.steps.max())} steps at "
             f"peak eta = {r.eta.max():g}, under "
             "constant, cosine, step (x0.1 at half the steps) and 5% linear warm-up + cosine schedules "
             "(docs/science.md §3.5). Intervals: 95% bootstrap over seeds (slopes, their paired differences from "
             "the constant schedule, and paired test-error differences, theory_sim.sweeps.paired).", "",
             "| label | boundary slope in d [95% CI] | minus constant's [95% CI] | test error vs same rule, constant "
             f"[95% CI] | log(Gamma/Rho) at step {phase_end} vs constant | at the end vs constant |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in slopes.itertuples():
        ref = row.reference if isinstance(row.reference, str) else None   # pandas stores a missing one as NaN
        te = err_text(pooled(table, row.label, ref)) if ref else "(reference)"
        ph = diff_text(pooled(phase, row.label, ref)) if ref else ""
        en = diff_text(pooled(final, row.label, ref)) if ref else ""
        dd = f"{row.delta:+.3f} [{row.delta_low:+.3f}, {row.delta_high:+.3f}]" if ref else ""
        lines.append(f"| {row.label} | {row.slope:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}] | {dd} | {te} | {ph} | "
                     f"{en} |")
    lines += ["", "Verdicts (computed from the tables above):"]
    for rule, predicted in (("sgd", 0.25), ("sam", 0.0)):
        for suffix, name in SCHEDULES.items():
            row = slopes.set_index("label").loc[f"{rule}{suffix}"]
            holds = prediction_holds(rule, predicted, row.ci_low, row.ci_high)   # verify's rule (SAM: +-0.125)
            rule_text = "in the interval" if rule == "sgd" else "the whole interval within +-0.125 of it"
            text = (f"- {rule.upper()} under {name}: boundary slope {row.slope:.3f} [{row.ci_low:.3f}, "
                    f"{row.ci_high:.3f}]; the theory's {predicted:g} ({rule_text}) "
                    f"{'holds' if holds else 'fails'}")
            if suffix:
                changed = interval_word(row.delta_low, row.delta_high, "steeper than", "flatter than",
                                        "not distinguishable from")
                text += (f"; the slope is {changed} the constant schedule's (difference {row.delta:+.3f} "
                         f"[{row.delta_low:+.3f}, {row.delta_high:+.3f}])")
            lines.append(text + ".")
    for suffix, name in SCHEDULES.items():
        lines.append(f"- SAM -> SGD against SGD, both {name}: {describe(pooled(table, f'sam{suffix}', f'sgd{suffix}'))}"
                     f"; per cell {counts(table, f'sam{suffix}', f'sgd{suffix}')}.")
    for suffix, name in SCHEDULES.items():
        if not suffix:
            continue
        for rule in ("sgd", "sam"):
            lab = f"{rule}{suffix}"
            p_row, e_row = pooled(phase, lab, rule), pooled(final, lab, rule)
            lines.append(f"- {lab}: log(Gamma/Rho) at step {phase_end} (SGD: its last logged step before) differs "
                         f"from constant eta by {diff_text(p_row)}, at the end by {diff_text(e_row)}.")
    if not claims.empty:
        amp = claims[(claims.claim == "sam_amplification") & (claims.dimension == "median over cells")]
        lines.append("")
        lines.append("SAM's amplification of Gamma/Rho over SGD during its phase (verify's trajectory claim, median "
                     "over cells, 95% CI), same schedule for both:")
        for suffix, name in SCHEDULES.items():
            row = amp[amp.variant == f"sam{suffix} vs sgd{suffix}"]
            if not row.empty:
                row = row.iloc[0]
                lines.append(f"- {name}: {fmt(row.measured)} [{fmt(row.ci_low)}, {fmt(row.ci_high)}]")
        base = amp[amp.variant == "sam vs sgd"]
        if not base.empty:
            b = base.iloc[0]
            for suffix, name in list(SCHEDULES.items())[1:]:
                row = amp[amp.variant == f"sam{suffix} vs sgd{suffix}"]
                if row.empty:
                    continue
                row = row.iloc[0]
                overlap = not (row.ci_low > b.ci_high or row.ci_high < b.ci_low)
                lines.append(f"- {name} vs constant: the amplification intervals "
                             f"{'overlap (no change shown)' if overlap else 'are disjoint (changed)'}.")
    lines += ["", f"From `{run}/results.parquet`, `trajectories.parquet` and `verify.json` by "
              f"`python studies/sam_questions_report.py lr_schedules {run}`."]
    write("lr_schedules", lines, gallery)
    # figure: eta(t) and log(Gamma/Rho) along training at one cell, every label
    cell = traj[(traj.d == 3200) & np.isclose(traj.mu_norm, 2.0)] if (traj.d == 3200).any() else traj
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lab, g in cell.groupby("label", sort=False):
        m = g.groupby("step")[["lr", "log_ratio"]].mean()
        style = "-" if lab.startswith("sam") else "--"
        axes[0].plot(m.index, m.lr, style, label=lab)
        axes[1].plot(m.index, m.log_ratio, style, label=lab)
    axes[0].set(xlabel="step", ylabel="eta(t)", title="schedules")
    axes[1].set(xlabel="step", ylabel="log(Gamma / Rho), seed mean", xscale="log",
                title="d = 3200, ||mu|| = 2")
    axes[1].axvline(phase_end, color="gray", lw=0.8)
    axes[1].legend(fontsize=7, ncol=2)
    save_figure(fig, gallery / "lr_schedules_trajectories.png")


def diff_text(row) -> str:
    """A paired difference of a quantity other than the test error: 'higher' / 'lower' in place of worse / better."""
    words = {"(better,": "(lower,", "(worse,": "(higher,"}
    text = describe(row).replace(" test error", "")
    for a, b in words.items():
        text = text.replace(a, b)
    return text


def err_text(row) -> str:
    """A paired test-error difference without the unit (the table's header says it)."""
    return describe(row).replace(" test error", "")


def centred_corr(values: pd.DataFrame, x: str, y: str, within: list[str]):
    """Correlation of x and y after removing each (cell, seed) group's mean: across rules on the same data and
    initialisation; cluster bootstrap over seeds."""
    v = values[np.isfinite(values[x]) & np.isfinite(values[y])]
    g = v.groupby(within)
    return bootstrap_corr((v[x] - g[x].transform("mean")).to_numpy(), (v[y] - g[y].transform("mean")).to_numpy(),
                          v.seed.to_numpy())


def variance_share(lo: float, hi: float) -> tuple[float, float]:
    """The interval of r^2 (the share of variance a correlation explains) from r's interval [lo, hi]."""
    if lo <= 0 <= hi:
        return 0.0, max(lo * lo, hi * hi)
    return min(lo * lo, hi * hi), max(lo * lo, hi * hi)


def exact_maximiser_verdict(r: float, lo: float, hi: float, fails: list[str], n_rules: int) -> list[str]:
    """What the numbers support of [T24]'s "a more exact maximiser generalises worse": the within-cell correlation of
    the reached perturbed-loss gain with test error (its interval and share of variance), and the rules that reach
    a higher gain than SAM and still err less (``fails``, of ``n_rules`` multi-step rules): each one contradicts the
    claim as a rule about maximisers, whatever the correlation."""
    s_lo, s_hi = variance_share(lo, hi)
    share = f"r^2 = {r * r:.1%} of the within-cell variance of test error [{s_lo:.1%}, {s_hi:.1%}]"
    if hi < 0:
        word = "false on this model: a higher reached perturbed loss goes with a lower test error"
    elif lo <= 0:
        word = "not shown on this model: the correlation's interval contains 0"
    elif fails:
        word = ("not supported as stated on this model: a higher reached perturbed loss goes with a higher test "
                "error only on average across the rules, and does not make a rule generalise worse than SAM")
    else:
        word = "supported on this model: a higher reached perturbed loss goes with a higher test error"
    return [f"- \"A more exact maximiser (a higher reached perturbed loss) generalises worse\" is {word}. The "
            f"within-cell correlation r = {r:+.3f} [{lo:+.3f}, {hi:+.3f}] explains {share}; {len(fails)} of "
            f"{n_rules} multi-step rules reach a higher perturbed-loss gain than SAM (paired interval above 0) and "
            f"still err less than SAM ({', '.join(fails) or 'none'})."]


def msam_ascent(run: Path, gallery: Path) -> None:
    spec, r, traj = load_spec(run), read_results(run), read_trajectories(run)
    key = spec.run_key
    cells = [k for k in key if k not in ("label", "seed")]
    labels = [o.label for o in spec.optimizers]
    K = {o.label: int(o.overrides.get("ascent_steps", 1)) if o.optimizer == "msam" else 1 for o in spec.optimizers}
    alpha = {o.label: float(o.overrides.get("ascent_step", 1.0)) for o in spec.optimizers}
    phase = sam_phase(spec)
    values = with_run_values(r, key, gain_init=run_summary(traj, r, key, "perturbed_loss_gain", 1, 1),
                             gain=run_summary(traj, r, key, "perturbed_loss_gain", 1, phase),
                             ploss=run_summary(traj, r, key, "perturbed_loss", 1, phase))
    values = values.assign(err=scored_error(values))
    table = paired_differences(r, baselines=("sam",), spec=spec, n_boot=N_BOOT)
    gains = paired_on(values, "gain", ("sam",), cells)
    c_taus = sorted(r.c_tau.unique())
    per_c = {c: paired_differences(r[r.c_tau == c], baselines=("sam",), spec=spec, n_boot=N_BOOT) for c in c_taus}
    lines = [f"# Multi-step ascent: does a more exact maximiser generalise worse? ({spec.name}, "
             f"{r.seed.nunique()} seeds per cell)", "",
             "[T24]'s next check 2 on the theory model: K ascent steps (the first SAM's, the K - 1 others of length "
             "ascent_step * tau) x c_tau in " + ", ".join(f"{c:g}" for c in c_taus) + f", every rule {phase} steps "
             "then SGD, d = " + ", ".join(f"{d:g}" for d in sorted(r.d.unique())) + ", ||mu|| = "
             + ", ".join(f"{m:.3g}" for m in sorted(r.mu_norm.unique())) + ". The perturbed-loss gain "
             "L_I(W + eps) - L_I(W) is each update's, on its batch at its update point (trajectory column "
             f"perturbed_loss_gain): at initialisation (step 1) and averaged over SAM's phase (steps 1..{phase}). "
             "Differences are paired over seeds (variant - SAM), 95% cluster-bootstrap intervals.", "",
             "| label | K | step / tau | test error | vs SAM, all cells [95% CI] | "
             + " | ".join(f"vs SAM, c_tau = {c:g}" for c in c_taus)
             + " | gain at init | gain over the phase | gain vs SAM's [95% CI] |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in c_taus) + " | --- | --- | --- |"]
    for lab in labels:
        v = values[values.label == lab]
        vs = "(reference)" if lab == "sam" else err_text(pooled(table, lab, "sam"))
        by_c = " | ".join("" if lab == "sam" else err_text(pooled(per_c[c], lab, "sam")) for c in c_taus)
        g = "" if lab == "sam" else diff_text(pooled(gains, lab, "sam"))
        step = "-" if K[lab] == 1 else f"{alpha[lab]:.3g}"
        lines.append(f"| {lab} | {K[lab]} | {step} | {v.err.mean():.3f} | {vs} | {by_c} | {v.gain_init.mean():.4g} | "
                     f"{v.gain.mean():.4g} | {g} |")
    within = [*cells, "seed"]
    rho, lo, hi, n = centred_corr(values, "gain", "err", within)
    rho_i, lo_i, hi_i, _ = centred_corr(values, "gain_init", "err", within)
    raw, rlo, rhi, _ = bootstrap_corr(values.gain.to_numpy(), values.err.to_numpy(), values.seed.to_numpy())
    more_k = []
    for fam, pick in (("step tau/K", lambda k: 1 / k), ("step tau/2", lambda k: 0.5), ("step tau", lambda k: 1.0)):
        labs = sorted((lab for lab in labels if K[lab] > 1 and np.isclose(alpha[lab], pick(K[lab]))), key=K.get)
        if len(labs) >= 2:
            lo_lab, hi_lab = labs[0], labs[-1]
            t = paired_differences(r[r.label.isin([lo_lab, hi_lab])], baselines=(lo_lab,), spec=spec, n_boot=N_BOOT)
            gt = paired_on(values[values.label.isin([lo_lab, hi_lab])], "gain", (lo_lab,), cells)
            more_k.append((fam, lo_lab, hi_lab, pooled(t, hi_lab, lo_lab), pooled(gt, hi_lab, lo_lab)))
    lines += ["", "Verdicts (computed from the table):",
              f"- Across the rules on the same data (within each cell and seed), the perturbed-loss gain a rule "
              f"reaches over SAM's phase correlates with its test error at r = {rho:+.3f} [{lo:+.3f}, {hi:+.3f}] "
              f"({n} runs); at initialisation r = {rho_i:+.3f} [{lo_i:+.3f}, {hi_i:+.3f}]; unpaired over all runs "
              f"r = {raw:+.3f} [{rlo:+.3f}, {rhi:+.3f}]."]
    for fam, a, b, row, grow in more_k:
        lines.append(f"- {fam}: K = {K[b]} ({b}) against K = {K[a]} ({a}): test error {err_text(row)}, "
                     f"reached gain {diff_text(grow)}.")
    # where the claim fails: rules that reach a higher perturbed loss than SAM and still err less
    # (paired verdict "worse" on the gain = its interval lies above 0: a higher reached perturbed loss)
    fails = [lab for lab in labels if lab != "sam" and pooled(gains, lab, "sam")["verdict"] == "worse"
             and pooled(table, lab, "sam")["verdict"] == "better"]
    lines += exact_maximiser_verdict(rho, lo, hi, fails, len(labels) - 1)
    better = [lab for lab in labels if lab != "sam" and pooled(table, lab, "sam")["verdict"] == "better"]
    worse = [lab for lab in labels if lab != "sam" and pooled(table, lab, "sam")["verdict"] == "worse"]
    lines.append(f"- Against SAM over all cells: better {', '.join(better) or 'none'}; worse "
                 f"{', '.join(worse) or 'none'}; the rest indistinguishable.")
    lines += ["", f"From `{run}/results.parquet` and `trajectories.parquet` by "
              f"`python studies/sam_questions_report.py msam_ascent {run}`."]
    write("msam_ascent", lines, gallery)
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


def randsam_radius(run: Path, gallery: Path) -> None:
    spec, r, traj = load_spec(run), read_results(run), read_trajectories(run)
    key = spec.run_key
    cells = [k for k in key if k not in ("label", "seed")]
    labels = [o.label for o in spec.optimizers]
    rand = [lab for lab in labels if lab.startswith("randsam")]
    c_of = {o.label: float(o.overrides.get("c_tau", 1.0)) for o in spec.optimizers}
    phase = sam_phase(spec)
    values = with_run_values(r, key, noise=run_summary(traj, r, key, "update_noise_active_frac", 1, phase),
                             gain=run_summary(traj, r, key, "perturbed_loss_gain", 1, phase))
    values = values.assign(err=scored_error(values))
    table = paired_differences(r, baselines=("sgd", "sam"), spec=spec, n_boot=N_BOOT)
    noise = paired_on(values, "noise", ("sgd",), cells)
    gain = paired_on(values, "gain", ("sam",), cells)
    ds = sorted(r.d.unique())
    per_d = {d: paired_differences(r[r.d == d], baselines=("sgd", "sam"), spec=spec, n_boot=N_BOOT) for d in ds}
    m = float(r.m.iloc[0])
    lines = [f"# Rand-SAM's radius ({spec.name}, {r.seed.nunique()} seeds per cell)", "",
             "Rand-SAM (eps = tau z/||z||, z ~ N(0, I) fresh every step) with c_tau from 1 up to about sqrt(2 m d) "
             "(" + ", ".join(f"{np.sqrt(2 * m * d):.0f} at d = {d:g}" for d in ds) + f"), every rule {phase} steps "
             "then SGD, against SGD and SAM (c_tau = 1). Paired differences over seeds, 95% cluster-bootstrap "
             "intervals; noise-active fraction at the update point (update_noise_active_frac) and the loss "
             f"increase of eps (perturbed_loss_gain) averaged over SAM's phase (steps 1..{phase}).", "",
             "| label | c_tau | test error | vs SGD [95% CI] | vs SAM [95% CI] | "
             + " | ".join(f"vs SGD, d = {d:g}" for d in ds)
             + " | noise-active at the update point | minus SGD's [95% CI] | loss increase of eps | "
               "minus SAM's [95% CI] |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in ds) + " | --- | --- | --- | --- |"]
    for lab in labels:
        v = values[values.label == lab]
        vs_sgd = "(reference)" if lab == "sgd" else err_text(pooled(table, lab, "sgd"))
        vs_sam = "(reference)" if lab == "sam" else err_text(pooled(table, lab, "sam"))
        by_d = " | ".join("" if lab == "sgd" else err_text(pooled(per_d[d], lab, "sgd")) for d in ds)
        nz = "" if lab == "sgd" else diff_text(pooled(noise, lab, "sgd"))
        gn = "" if lab in ("sam", "sgd") else diff_text(pooled(gain, lab, "sam"))
        c = "-" if lab == "sgd" else f"{c_of[lab]:g}"
        lines.append(f"| {lab} | {c} | {v.err.mean():.3f} | {vs_sgd} | {vs_sam} | {by_d} | {v.noise.mean():.3f} | "
                     f"{nz} | {fmt(v.gain.mean(), 3)} | {gn} |")
    helps = [lab for lab in rand if pooled(table, lab, "sgd")["verdict"] == "better"]
    hurts = [lab for lab in rand if pooled(table, lab, "sgd")["verdict"] == "worse"]
    cell_better = {lab: counts(table, lab, "sgd") for lab in rand}
    best = min(rand, key=lambda lab: pooled(table, lab, "sam")["mean_diff"])
    vs_sam = pooled(table, best, "sam")
    lines += ["", "Verdicts (computed from the table):",
              f"- A random direction helps over SGD (pooled paired interval below 0) at radius: "
              f"{', '.join(f'c_tau = {c_of[lab]:g}' for lab in helps) or 'none'}; it hurts at "
              f"{', '.join(f'c_tau = {c_of[lab]:g}' for lab in hurts) or 'none'}."]
    for lab in rand:
        lines.append(f"- {lab} vs SGD: {describe(pooled(table, lab, 'sgd'))}; per cell {cell_better[lab]}.")
    sam_noise = pooled(noise, "sam", "sgd")
    lines.append(f"- Why: SAM lowers the noise-active fraction at its update point by {diff_text(sam_noise)} "
                 f"against SGD; the Rand-SAM radii change it by "
                 + "; ".join(f"c_tau = {c_of[lab]:g}: {diff_text(pooled(noise, lab, 'sgd'))}" for lab in rand) + ".")
    lines.append("- The loss increase of eps against SAM's: "
                 + "; ".join(f"c_tau = {c_of[lab]:g}: {diff_text(pooled(gain, lab, 'sam'))}" for lab in rand) + ".")
    vs_sgd = pooled(table, best, "sgd")
    sam_sgd = pooled(table, "sam", "sgd")
    # [T24]'s finding has two parts: Rand-SAM about as good as SAM, and both better than SGD
    agree = vs_sam["verdict"] != "worse" and vs_sgd["verdict"] == "better"
    lines.append(f"- [T24] reports Rand-SAM comparable to SAM, both better than SGD, on WRN-28-10 / CIFAR "
                 f"(docs/science.md §8). Here SAM against SGD: {describe(sam_sgd)}; the best Rand-SAM radius "
                 f"({best}) against SAM: {describe(vs_sam)}, against SGD: {describe(vs_sgd)}. So the theory model "
                 + ("agrees with [T24]'s real-network finding." if agree else
                    "disagrees with [T24]'s real-network finding: no radius makes the random direction as good as "
                    "SAM and better than SGD."))
    lines += ["", f"From `{run}/results.parquet` and `trajectories.parquet` by "
              f"`python studies/sam_questions_report.py randsam_radius {run}`."]
    write("randsam_radius", lines, gallery)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for d in ds:
        rows = [(c_of[lab], pooled(per_d[d], lab, "sgd")) for lab in rand]
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


STUDIES = {"msam_step_size": msam_step_size, "lr_schedules": lr_schedules, "msam_ascent": msam_ascent,
           "randsam_radius": randsam_radius}

