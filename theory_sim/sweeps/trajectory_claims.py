"""The lemma-level claims of docs/science.md §6, checked on the coefficient trajectories of a whole sweep.

Input: ``trajectories.parquet`` (one row per logged step and run: Gamma = ``gamma_mean``, Rho = ``rhobar_mean``, the
invariant columns, ...) and ``results.parquet`` (final test errors, the run's settings). Every interval is a 95%
bootstrap over seeds: the seeds are resampled jointly across cells (every cell uses the same seeds), so the
intervals carry the cells' correlation. The claims:

- ratio law (SGD): Gamma / Rho ~= (1 - 2p) n ||mu||^2 / ((P - 1) sigma_p^2 d) early in training. Window: the end
  of epoch 1 (step n / B), the first step at which every sample has been used once, in the cells still in the early
  phase — seed-mean Gamma <= 0.25 there, so a clean sample's signal margin has moved its |l'| by at most about 12%
  from 1/2 (a larger signal margin lowers the clean samples' |l'| but not the flipped ones', the (1 - 2p) of the law
  drifts; docs/science.md §6.1). Joint log-log regression of the measured ratio on every swept dimension;
  exponents +2 (||mu||), -1 (d), +1 (n), -2 (sigma_p), -1 (P - 1) hold when the interval comes within 0.1 of them
  (the law is first order in |l'| - 1/2); the constant measured / predicted holds per cell within [0.8, 1.25].
- SAM amplification: SAM's Gamma / Rho over SGD's at the same cell and logged step during SAM's phase (geometric
  mean over the steps), and both update-point noise-active fractions. Holds when it is >= 2 in every cell where SGD
  is harmful (seed-mean test error >= p + 0.1). Its slope in d is measured, not predicted.
- collapse: SGD's seed-mean test error against x = n ||mu||^4 / (d (P-1)^4 sigma_p^4) (and with P^4). Quality: the
  residual RMS around the best decreasing (isotonic) fit in x, divided by the same with ||mu|| alone; holds when
  the whole interval is below 0.7 (x removes at least 30% of the spread ||mu|| leaves). Needs a swept dimension
  besides ||mu||.
- invariants: rhobar never decreases and stays >= 0, rhounder never increases and stays <= 0, on every logged step
  of every run (the trainer counts entries that moved the wrong way between logged steps; here also the summaries'
  signs and monotonicity). Beyond round-off, the count must be 0.
- late phase (SGD, runs that fit every training label): after fitting, the growth exponent k of rhobar_max: the
  log-log slope of its increments per unit log t against t (log growth: k = 0; t^k growth: k). Holds when the
  interval of the median over cells lies within +-0.05 (so t^0.1 fails; the R^2 of a line in log t, reported for
  comparison, cannot tell log t from t^0.1 or t^0.3). And max |rhounder| / max rhobar at the last step (holds
  when its median over cells is <= 0.5); the slope of the latter in d is measured.
- update_noise_active_frac: holds when the interval of SAM's fraction minus SGD's (same seeds) lies below 0; the
  ratio-law constant holds when its whole interval lies in [0.8, 1.25] (not only its point estimate).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from theory_sim.sweeps.cells import CELL, CORE_AXES, RUN_KEY, harmful_threshold, scored_error, seed_resamples

CORE = CORE_AXES   # CELL: a cell of a sweep without extra axes; with extra axes: spec.cell_key
EARLY_GAMMA = 0.25
CONSTANT_BAND = (0.8, 1.25)
SLOPE_TOLERANCE = 0.1
# the law's exponents; it does not depend on eta, B or m at all (docs/science.md §6.1)
RATIO_SLOPES = {"mu_norm": 2.0, "d": -1.0, "n": 1.0, "sigma_p": -2.0, "P-1": -1.0, "eta": 0.0, "batch_size": 0.0,
                "m": 0.0}
AMPLIFICATION = 2.0
COLLAPSE_MAX = 0.7
LATE_R2 = 0.9
LATE_UNDER = 0.5
# log growth has growth exponent k = 0 (d rhobar / d log t constant; t^k growth has k): holds when the whole
# interval of k lies within +-LATE_EXPONENT, half the slowest power it must tell apart from log (t^0.1)
LATE_EXPONENT = 0.05


# ---------------------------------------------------------------------------------------------------------------------
# Small tools: cell x seed arrays, regressions, isotonic fits, bootstrap
# ---------------------------------------------------------------------------------------------------------------------
def cell_seed_array(df: pd.DataFrame, value: str, seeds: list, keys=CELL) -> tuple[pd.DataFrame, np.ndarray]:
    """(cells, array (C, S)): ``value`` per cell and seed (NaN where a seed is missing)."""
    keys = list(keys)
    pv = df.pivot_table(index=keys, columns="seed", values=value, aggfunc="first")
    # every cell of df, also one whose values are all NaN (pivot_table drops it): the arrays of several values of
    # one table then share their rows
    present = df[keys].drop_duplicates()
    cells = (pd.MultiIndex.from_frame(present).sort_values() if len(keys) > 1
             else pd.Index(sorted(present[keys[0]].unique()), name=keys[0]))
    pv = pv.reindex(index=cells, columns=seeds)
    return pv.index.to_frame(index=False), pv.to_numpy(dtype=float)


def _nanmean(a: np.ndarray, idx=slice(None)) -> np.ndarray:
    with warnings.catch_warnings():  # an all-NaN row (no seed) is NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a[:, idx], axis=1)


def swept_logs(cells: pd.DataFrame, dims=("mu_norm", "d", "n", "sigma_p", "P")) -> dict[str, np.ndarray]:
    """log of every dimension with >= 2 distinct values among the cells (P as P - 1, the noise multiplicity)."""
    out = {}
    for dim in dims:
        if dim in cells and cells[dim].nunique() >= 2:
            v = cells[dim].to_numpy(dtype=float) - (1 if dim == "P" else 0)
            out["P-1" if dim == "P" else dim] = np.log(v)
    return out


def regress(logs: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Least-squares slopes of y on the given log-dimensions (with an intercept), over the finite rows."""
    ok = np.isfinite(y) & np.all([np.isfinite(v) for v in logs.values()], axis=0) if logs else np.isfinite(y)
    names = list(logs)
    if not names or ok.sum() <= len(names) + 1:
        return {k: float("nan") for k in names}
    X = np.column_stack([np.ones(ok.sum())] + [logs[k][ok] for k in names])
    coef, *_ = np.linalg.lstsq(X, y[ok], rcond=None)
    return dict(zip(names, map(float, coef[1:])))


def isotonic_decreasing(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The best non-increasing fit of y against x (least squares, pool-adjacent-violators); equal x share a value."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    ux, inverse = np.unique(xs, return_inverse=True)
    sums, counts = np.bincount(inverse, ys), np.bincount(inverse).astype(float)
    blocks: list[list[float]] = []  # [sum, count, n_unique]
    for s, c in zip(sums, counts):
        blocks.append([s, c, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s2, c2, k2 = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += c2
            blocks[-1][2] += k2
    level = np.concatenate([np.full(int(k), s / c) for s, c, k in blocks])
    fit = np.empty_like(y, dtype=float)
    fit[order] = level[inverse]
    return fit


def residual_rms(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    return float(np.sqrt(np.mean((y[ok] - isotonic_decreasing(x[ok], y[ok])) ** 2)))


def bootstrap(stat, n_seeds: int, n_boot: int, seed: int) -> tuple[dict, dict]:
    """stat(seed_idx) -> {name: value}; returns (point estimates, {name: (lo, hi)}) over seed resamples."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # empty or all-NaN slices give NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        point = stat(np.arange(n_seeds))
        draws = [stat(idx) for idx in seed_resamples(n_seeds, n_boot, seed)]
    ci = {}
    for k in point:
        v = np.array([d[k] for d in draws], dtype=float)
        v = v[np.isfinite(v)]
        ci[k] = tuple(map(float, np.percentile(v, [2.5, 97.5]))) if len(v) >= 10 else (float("nan"),) * 2
    return point, ci


def _row(claim, variant, dimension, measured, ci, predicted, holds, cells_used, window) -> dict:
    return dict(claim=claim, variant=variant, dimension=dimension, measured=float(measured),
                ci_low=float(ci[0]), ci_high=float(ci[1]), predicted=predicted,
                holds=None if holds is None else bool(holds), cells_used=int(cells_used), window=window)


def _cell_name(row, cell=CELL) -> str:
    return ", ".join(f"{k}={row[k]:g}" for k in cell)


# ---------------------------------------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------------------------------------
def with_settings(traj: pd.DataFrame, results: pd.DataFrame, key=RUN_KEY) -> pd.DataFrame:
    """The trajectory rows with each run's flip_p, batch_size, sam_steps, optimizer and final test error."""
    cols = [c for c in ("flip_p", "batch_size", "sam_steps", "test_error", "diverged", "train_acc", "dtype")
            if c in results.columns]
    info = results[list(key) + [c for c in cols if c not in key]].rename(
        columns={"test_error": "final_test_error", "train_acc": "final_train_acc"})
    return traj.merge(info, on=list(key), how="left", validate="many_to_one")


def ratio_law(traj: pd.DataFrame, label: str, seeds: list, n_boot: int, seed: int, cell=CELL):
    """Rows for the ratio law of one SGD variant, and the per-cell table (for figures)."""
    t = traj[(traj.label == label) & (traj.step == traj.n // traj.batch_size)]
    if t.empty:
        return [], pd.DataFrame()
    cells, G = cell_seed_array(t, "gamma_mean", seeds, cell)
    _, R = cell_seed_array(t, "rhobar_mean", seeds, cell)
    p = t.groupby(list(cell)).flip_p.first().reindex(pd.MultiIndex.from_frame(cells)).to_numpy()
    c = cells.astype(float)
    predicted = (1 - 2 * p) * c.n * c.mu_norm ** 2 / ((c.P - 1) * c.sigma_p ** 2 * c.d)
    early = (np.nanmean(G, 1) <= EARLY_GAMMA) & (np.nanmean(R, 1) > 0)
    used = cells[early].reset_index(drop=True)
    logs = swept_logs(used, ("mu_norm", "d", "n", "sigma_p", "P", *[c for c in cell if c not in CORE]))
    pred_used = predicted.to_numpy()[early]

    def stat(idx):
        ratio = _nanmean(G[early], idx) / _nanmean(R[early], idx)
        out = {f"slope:{k}": v for k, v in regress(logs, np.log(ratio)).items()}
        out.update({f"const:{i}": r / q for i, (r, q) in enumerate(zip(ratio, pred_used))})
        return out

    window = "end of epoch 1 (step n/B), cells with seed-mean Gamma <= 0.25 there"
    rows = []
    if early.any():
        point, ci = bootstrap(stat, len(seeds), n_boot, seed)
        for dim in logs:
            pred = RATIO_SLOPES.get(dim)
            lo, hi = ci[f"slope:{dim}"]
            holds = (None if pred is None or not np.isfinite(lo)
                     else lo <= pred + SLOPE_TOLERANCE and hi >= pred - SLOPE_TOLERANCE)
            rows.append(_row("ratio_law_slope", label, dim, point[f"slope:{dim}"], ci[f"slope:{dim}"], pred, holds,
                             len(used), window))
        for i in range(len(used)):
            v = point[f"const:{i}"]
            lo, hi = ci[f"const:{i}"]   # holds when the whole interval lies in the band
            rows.append(_row("ratio_law_constant", label, _cell_name(used.iloc[i], cell), v, (lo, hi), 1.0,
                             None if not np.isfinite(lo) else CONSTANT_BAND[0] <= lo and hi <= CONSTANT_BAND[1], 1,
                             window))
    table = cells.assign(label=label, measured=np.nanmean(G, 1) / np.nanmean(R, 1), predicted=predicted,
                         early=early)
    return rows, table


def sam_amplification(traj: pd.DataFrame, sam: str, sgd: str, sam_steps, seeds: list, harmful_at: float,
                      n_boot: int, seed: int, cell=CELL):
    """SAM's Gamma/Rho over SGD's during SAM's phase, per cell; rows and the per-cell table."""
    last = np.inf if sam_steps is None or not np.isfinite(sam_steps) else sam_steps
    phase = traj[(traj.step > 0) & (traj.step <= last)]
    a, b = phase[phase.label == sam], phase[phase.label == sgd]
    steps = sorted(set(a.step) & set(b.step))
    if not steps:
        return [], pd.DataFrame()
    keys = (*cell, "step")
    a, b = a[a.step.isin(steps)], b[b.step.isin(steps)]
    cells_s, Ga = cell_seed_array(a, "gamma_mean", seeds, keys)
    _, Ra = cell_seed_array(a, "rhobar_mean", seeds, keys)
    _, Gb = cell_seed_array(b, "gamma_mean", seeds, keys)
    _, Rb = cell_seed_array(b, "rhobar_mean", seeds, keys)
    _, Ua = cell_seed_array(a, "update_noise_active_frac", seeds, keys)
    _, Ub = cell_seed_array(b, "update_noise_active_frac", seeds, keys)
    cell_id = cells_s[list(cell)].apply(tuple, axis=1)
    cells = pd.DataFrame(list(dict.fromkeys(cell_id)), columns=list(cell))
    group = pd.Categorical(cell_id, categories=list(dict.fromkeys(cell_id))).codes
    sgd_err = (b.groupby(list(cell)).final_test_error.mean().reindex(pd.MultiIndex.from_frame(cells)).to_numpy())
    harmful = sgd_err >= harmful_at
    logs = swept_logs(cells)

    def per_cell(values: np.ndarray) -> np.ndarray:  # mean over a cell's steps, NaN steps left out
        # (+inf kept: SAM's Rho can be exactly 0 during its phase when every noise term is switched off, e.g. 1-SAM,
        # an unbounded amplification)
        ok = ~np.isnan(values)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (np.bincount(group[ok], values[ok], minlength=len(cells))
                    / np.bincount(group[ok], minlength=len(cells)))

    def stat(idx):
        with np.errstate(divide="ignore", invalid="ignore"):
            log_amp = np.log(_nanmean(Ga, idx) / _nanmean(Ra, idx)) - np.log(_nanmean(Gb, idx) / _nanmean(Rb, idx))
        amp = np.exp(per_cell(log_amp))
        out = {"min_harmful": float(np.nanmin(amp[harmful])) if harmful.any() else float("nan"),
               "median": float(np.nanmedian(amp))}
        out.update({f"slope:{k}": v for k, v in regress(logs, np.log(amp)).items()})
        out["noise_sam"] = float(np.nanmean(_nanmean(Ua, idx)))
        out["noise_sgd"] = float(np.nanmean(_nanmean(Ub, idx)))
        out["noise_diff"] = out["noise_sam"] - out["noise_sgd"]
        return out

    point, ci = bootstrap(stat, len(seeds), n_boot, seed)
    window = f"logged steps 1..{int(last) if np.isfinite(last) else 'end'} (SAM's phase), both variants"
    variant = f"{sam} vs {sgd}"
    rows = [_row("sam_amplification", variant, "min over SGD-harmful cells", point["min_harmful"],
                 ci["min_harmful"], AMPLIFICATION, None if not harmful.any() else point["min_harmful"] >= AMPLIFICATION,
                 int(harmful.sum()), window),
            _row("sam_amplification", variant, "median over cells", point["median"], ci["median"], None, None,
                 len(cells), window)]
    for dim in logs:
        rows.append(_row("sam_amplification_slope", variant, dim, point[f"slope:{dim}"], ci[f"slope:{dim}"], None,
                         None, len(cells), window))
    lo, hi = ci["noise_diff"]   # holds when the interval of SAM's fraction minus SGD's (same seeds) is below 0
    rows.append(_row("update_noise_active_frac", f"{sam}",
                     f"mean over cells and steps (minus {sgd}'s: {point['noise_diff']:+.3g} [{lo:+.3g}, {hi:+.3g}])",
                     point["noise_sam"], ci["noise_sam"], None, None if not np.isfinite(hi) else hi < 0, len(cells),
                     window))
    rows.append(_row("update_noise_active_frac", f"{sgd}", "mean over cells and steps", point["noise_sgd"],
                     ci["noise_sgd"], None, None, len(cells), window))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_amp = np.log(_nanmean(Ga) / _nanmean(Ra)) - np.log(_nanmean(Gb) / _nanmean(Rb))
    table = cells.assign(label=variant, amplification=np.exp(per_cell(log_amp)), sgd_test_error=sgd_err,
                         sgd_harmful=harmful, noise_active_sam=per_cell(_nanmean(Ua)),
                         noise_active_sgd=per_cell(_nanmean(Ub)))
    return rows, table


def collapse_variable(c: pd.DataFrame, power_of: str = "P-1") -> np.ndarray:
    q = c.P.astype(float) - (1 if power_of == "P-1" else 0)
    return (c.n * c.mu_norm ** 4 / (c.d * q ** 4 * c.sigma_p ** 4)).to_numpy(dtype=float)


def collapse(results: pd.DataFrame, label: str, seeds: list, n_boot: int, seed: int, cell=CELL):
    """SGD's final test error against x = n ||mu||^4 / (d (P-1)^4 sigma_p^4): rows and the per-cell table."""
    r = results[results.label == label]
    r = r.assign(_err=scored_error(r))
    cells, E = cell_seed_array(r, "_err", seeds, cell)
    others = [k for k in CORE if k != "mu_norm" and cells[k].nunique() >= 2]
    table = cells.assign(label=label, test_error=np.nanmean(E, 1), x=collapse_variable(cells),
                         x_P=collapse_variable(cells, "P"))
    if not others:
        return [], table
    x, xP, mu = table.x.to_numpy(), table.x_P.to_numpy(), cells.mu_norm.to_numpy(dtype=float)

    def stat(idx):
        e = _nanmean(E, idx)
        base = residual_rms(mu, e)
        return {"x": residual_rms(x, e) / base, "x_P": residual_rms(xP, e) / base}

    point, ci = bootstrap(stat, len(seeds), n_boot, seed)
    window = f"final test error; swept besides ||mu||: {', '.join(others)}"
    variables = [("x", "x = n mu^4 / (d (P-1)^4 sigma_p^4), RMS vs mu alone")]
    if cells.P.nunique() > 1:  # with P fixed the two variables differ by a constant factor
        variables.append(("x_P", "x = n mu^4 / (d P^4 sigma_p^4), RMS vs mu alone"))
    rows = [_row("collapse", label, name, point[key], ci[key], None,
                 None if not np.isfinite(ci[key][1]) else ci[key][1] < COLLAPSE_MAX, len(cells), window)
            for key, name in variables]
    return rows, table


def invariants(traj: pd.DataFrame, label: str, key=RUN_KEY) -> list[dict]:
    """Entry-level violations counted by the trainer, plus the summaries' signs and monotonicity per run."""
    t = traj[traj.label == label].sort_values([*key, "step"])
    eps = np.where(t.get("dtype", pd.Series("float64", index=t.index)).eq("float32"), 1.2e-7, 2.2e-16)
    scale = 64 * eps * np.maximum(t.rhobar_max.abs().fillna(0), t.rhounder_min.abs().fillna(0))
    count = float(np.nansum(t.rho_monotone_violations))
    count += float(((t.rhobar_min < -scale) | (t.rhounder_max > scale)).sum())
    run = t[list(key)].apply(tuple, axis=1) if len(t) else pd.Series(dtype=object)
    same_run = (run == run.shift()).to_numpy()
    for col, direction in (("rhobar_max", 1), ("rhobar_mean", 1), ("rhounder_min", -1)):
        change = direction * (t[col] - t[col].shift()).to_numpy()
        count += float(np.sum(same_run & (change < -scale.to_numpy())))
    runs = int(t.groupby(list(key)).ngroups) if len(t) else 0
    return [_row("invariants", label, "violations beyond round-off (rhobar up and >= 0, rhounder down and <= 0)",
                 count, (count, count), 0, count == 0, runs, f"every logged step of {runs} runs")]


def growth_exponent(t: np.ndarray, y: np.ndarray) -> float:
    """The exponent k of y's growth: the log-log slope of its increments per unit log t, dy / dlog t, against t
    (between consecutive logged steps, at their geometric mid-point). y = a + b log t gives k = 0, y = a + b t^k
    gives k (dy / dlog t = b k t^k). NaN with fewer than 3 rising increments."""
    ok = t > 0
    t, y = t[ok], y[ok]
    dlog = np.diff(np.log(t))
    rate = np.diff(y) / np.where(dlog > 0, dlog, np.nan)
    mid = np.sqrt(t[1:] * t[:-1])
    use = np.isfinite(rate) & (rate > 0)
    if use.sum() < 3 or np.ptp(np.log(mid[use])) == 0:
        return float("nan")
    return float(np.polyfit(np.log(mid[use]), np.log(rate[use]), 1)[0])


def late_phase(traj: pd.DataFrame, label: str, seeds: list, n_boot: int, seed: int, cell=CELL, key=RUN_KEY):
    """Runs that fit every training label: rhobar_max against log t after fitting, and |rhounder| / rhobar."""
    t = traj[(traj.label == label) & (traj.final_train_acc >= 1)].sort_values([*key, "step"])
    rows = []
    for run_key, g in t.groupby(list(key), sort=False):
        fitted = g.step[g.train_acc >= 1]
        after = g[g.step >= fitted.iloc[0]] if len(fitted) else g.iloc[:0]
        if len(after) < 4 or after.rhobar_max.var() == 0:
            continue
        y = after.rhobar_max.to_numpy(dtype=float)
        exponent = growth_exponent(after.step.to_numpy(dtype=float), y)
        r2 = {}
        for name, x in (("log", np.log(np.maximum(after.step.to_numpy(dtype=float), 1))),
                        ("lin", after.step.to_numpy(dtype=float))):
            res = y - np.polyval(np.polyfit(x, y, 1), x)
            r2[name] = 1 - res.var() / y.var()
        last = g.iloc[-1]
        rows.append(dict(zip(key, run_key), r2_log=r2["log"], r2_lin=r2["lin"], exponent=exponent,
                         under=-last.rhounder_min / last.rhobar_max if last.rhobar_max > 0 else np.nan))
    if not rows:
        return [], pd.DataFrame()
    runs = pd.DataFrame(rows)
    cells, L = cell_seed_array(runs, "r2_log", seeds, cell)
    _, T = cell_seed_array(runs, "r2_lin", seeds, cell)
    _, U = cell_seed_array(runs, "under", seeds, cell)
    _, K = cell_seed_array(runs, "exponent", seeds, cell)
    logs = swept_logs(cells)

    def stat(idx):
        u = _nanmean(U, idx)
        out = {"r2_log": float(np.nanmedian(_nanmean(L, idx))), "r2_lin": float(np.nanmedian(_nanmean(T, idx))),
               "under": float(np.nanmedian(u)), "exponent": float(np.nanmedian(_nanmean(K, idx)))}
        out.update({f"slope:{k}": v for k, v in regress(logs, np.log(u)).items()})
        return out

    point, ci = bootstrap(stat, len(seeds), n_boot, seed)
    window = "logged steps from the first one with every training label fitted"
    lo, hi = ci["exponent"]
    out = [_row("late_log_growth", label, "median growth exponent k of rhobar_max (d rhobar / d log t ~ t^k; log "
                "growth: k = 0)", point["exponent"], ci["exponent"], 0.0,
                None if not np.isfinite(lo) else -LATE_EXPONENT <= lo and hi <= LATE_EXPONENT, len(cells), window),
           _row("late_log_growth", label, "median R^2 of rhobar_max vs log t (comparison: t^0.1 and t^0.3 fit "
                "as well)", point["r2_log"], ci["r2_log"], None, None, len(cells), window),
           _row("late_log_growth", label, "median R^2 of rhobar_max vs t (comparison)", point["r2_lin"],
                ci["r2_lin"], None, None, len(cells), window),
           _row("late_rhounder_ratio", label, "median max|rhounder| / max rhobar at the last step", point["under"],
                ci["under"], None, point["under"] <= LATE_UNDER, len(cells), "last logged step")]
    if "d" in logs:
        out.append(_row("late_rhounder_ratio_slope", label, "d", point["slope:d"], ci["slope:d"], None, None,
                        len(cells), "last logged step"))
    # _nanmean: a cell where no seed gives a value (a late window too short to fit) is NaN, without numpy's warning
    table = cells.assign(label=label, r2_log=_nanmean(L), r2_lin=_nanmean(T), under=_nanmean(U), exponent=_nanmean(K))
    return out, table


def trajectory_claims(traj: pd.DataFrame, results: pd.DataFrame, spec, n_boot: int = 200, seed: int = 0) -> dict:
    """Every claim for every SGD variant (and every SAM variant against every SGD variant): ``claims`` (rows as in
    verify.json's ``trajectory_claims``) and per-cell ``tables`` for the figures."""
    key, cell = spec.run_key, spec.cell_key
    traj = with_settings(traj, results, key)
    seeds = sorted(results.seed.unique())
    optimizer_of = {o.label: o.optimizer for o in spec.optimizers}
    sam_steps_of = {o.label: o.overrides.get("sam_steps") for o in spec.optimizers}
    sgd = [lab for lab, o in optimizer_of.items() if o == "sgd"]
    sam = [lab for lab, o in optimizer_of.items() if o != "sgd"]   # every SAM-family rule against SGD
    p = float(results.flip_p.mean())
    claims: list[dict] = []
    tables: dict[str, list[pd.DataFrame]] = {"ratio_law": [], "amplification": [], "collapse": [], "late": []}
    for lab in sgd:
        rows, table = ratio_law(traj, lab, seeds, n_boot, seed, cell)
        claims += rows
        tables["ratio_law"].append(table)
        for s in sam:
            rows, table = sam_amplification(traj, s, lab, sam_steps_of.get(s), seeds, harmful_threshold(p), n_boot,
                                             seed, cell)
            claims += rows
            tables["amplification"].append(table)
        rows, table = collapse(results, lab, seeds, n_boot, seed, cell)
        claims += rows
        tables["collapse"].append(table)
        rows, table = late_phase(traj, lab, seeds, n_boot, seed, cell, key)
        claims += rows
        tables["late"].append(table)
    for lab in optimizer_of:
        claims += invariants(traj, lab, key)
    return {"claims": claims,
            "tables": {k: (pd.concat(v, ignore_index=True) if v else pd.DataFrame()) for k, v in tables.items()}}
