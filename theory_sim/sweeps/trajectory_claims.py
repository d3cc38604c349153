"""The trajectory claims of docs/science.md §6 (declared in theory_sim.claims), checked on a whole sweep.

Input: ``trajectories.parquet`` (one row per logged step and run: Gamma = ``gamma_mean``, Rho = ``rhobar_mean``, the
invariant columns, ...) and ``results.parquet`` (final test errors, the run's settings). Each claim is estimated on
the cells inside its domain (theory_sim.claims.DOMAIN) and judged by the one verdict rule; its interval is the
jackknife-t over seeds (theory_sim.intervals: the seed is the unit, jointly across cells). Windows and estimands are
in the claims' table of docs/science.md §5.6; the derivations in §6.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from theory_sim.claims import CLAIMS, EARLY_GAMMA, claim_row
from theory_sim.cnn.labels import flip_fractions
from theory_sim.intervals import Interval, jackknife
from theory_sim.sweeps.cells import CELL, CORE_AXES, RUN_KEY, harmful_threshold, scored_error

CORE = CORE_AXES   # CELL: a cell of a sweep without extra axes; with extra axes: spec.cell_key
CONSTANT_BAND = CLAIMS["ratio_law_constant"].extra["band"]
SLOPE_TOLERANCE = CLAIMS["ratio_law_exponents"].extra["tolerance"]
RATIO_SLOPES = CLAIMS["ratio_law_exponents"].extra["slopes"]   # no dependence on eta, B or m (§6.1)
AMPLIFICATION = 2.0
COLLAPSE_MAX = 0.7
LATE_UNDER = 0.5
LATE_EXPONENT = CLAIMS["late_log_growth"].extra["tolerance"]
LATE_LOSS = 0.1      # the late phase: training loss this small, so |l'_i| ~ exp(-y_i f_i) (docs/science.md §6.6)
LATE_POINTS = 6      # logged steps a run needs in that window for its growth exponent


# ---------------------------------------------------------------------------------------------------------------------
# Small tools: cell x seed arrays, regressions, isotonic fits
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


def _row(claim: str, variant: str, interval: Interval, region, cells_in_domain: int, cells: int, window: str,
         dim: str | None = None, **info) -> dict:
    """A claim line (theory_sim.claims.claim_row); ``region`` None for an exploratory estimate."""
    return claim_row(CLAIMS[claim], variant, interval, region, dim=dim, fixed=info.pop("fixed", {}),
                     cells_in_domain=int(cells_in_domain), cells=int(cells), window=window, **info)


def _not_applicable(claim: str, variant: str, cells: int, window: str, why: str) -> dict:
    return _row(claim, variant, Interval(float("nan"), float("nan"), float("nan"), float("nan"), 0), None, 0,
                cells, window, applicable=False, note=why)


def _cell_name(row, cell=CELL) -> str:
    return ", ".join(f"{k}={row[k]:g}" for k in cell)


# ---------------------------------------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------------------------------------
def with_settings(traj: pd.DataFrame, results: pd.DataFrame, key=RUN_KEY) -> pd.DataFrame:
    """The trajectory rows with each run's flip_p, realised flip fraction p_hat, batch_size, sam_steps, final test
    error and the parameters the claims' domains read."""
    renamed = {"test_error": "final_test_error", "train_acc": "final_train_acc"}
    cols = [c for c in ("flip_p", "p_hat", "batch_size", "sam_steps", "test_error", "diverged", "train_acc", "dtype",
                        "m", "sigma_0", "eta", "c_tau", "tau", "depth")
            if c in results.columns and c not in key and renamed.get(c, c) not in traj.columns]
    info = results[list(key) + cols].rename(columns=renamed)
    return traj.merge(info, on=list(key), how="left", validate="many_to_one")


def with_flip_fraction(results: pd.DataFrame) -> pd.DataFrame:
    """results with p_hat, the realised fraction of flipped training labels of every run (from its seed)."""
    if "p_hat" in results.columns:
        return results
    seeds = results.data_seed.where(results.data_seed.notna(), results.seed) if "data_seed" in results else results.seed
    p_hat = np.empty(len(results))
    for (n, p), idx in results.groupby(["n", "flip_p"]).indices.items():
        p_hat[idx] = flip_fractions(seeds.to_numpy()[idx].astype(np.int64), int(n), float(p))
    return results.assign(p_hat=p_hat)


def in_domain(claim: str, t: pd.DataFrame, cells: pd.DataFrame, cell=CELL) -> np.ndarray:
    """The cells (rows of ``cells``) inside the claim's domain, from the runs' parameters in ``t``."""
    params = t.groupby(list(cell), sort=False).first().reset_index()
    params = cells[list(cell)].merge(params, on=list(cell), how="left")
    return CLAIMS[claim].in_domain(params)


def ratio_law(traj: pd.DataFrame, label: str, seeds: list, cell=CELL):
    """Rows for the ratio law of one SGD variant (exponents, and one pooled constant), and the per-cell table."""
    t = traj[(traj.label == label) & (traj.step == traj.n // traj.batch_size)]
    window = f"end of epoch 1 (step n/B), cells with seed-mean Gamma <= {EARLY_GAMMA} there"
    if t.empty:
        return [], pd.DataFrame()
    cells, G = cell_seed_array(t, "gamma_mean", seeds, cell)
    _, R = cell_seed_array(t, "rhobar_mean", seeds, cell)
    _, Q = cell_seed_array(t, "p_hat", seeds, cell)      # each run's realised flip fraction
    c = cells.astype(float)
    law = c.n * c.mu_norm ** 2 / ((c.P - 1) * c.sigma_p ** 2 * c.d)   # the prediction without its (1 - 2p)
    domain = in_domain("ratio_law_constant", t, cells, cell)
    early = (np.nanmean(G, 1) <= EARLY_GAMMA) & (np.nanmean(R, 1) > 0)
    use = early & domain
    used = cells[use].reset_index(drop=True)
    logs = swept_logs(used, ("mu_norm", "d", "n", "sigma_p", "P", *[k for k in cell if k not in CORE]))
    law_used = law.to_numpy()[use]
    # cells that share the seeds' data draws (every ||mu|| of one (d, n, P, sigma_p, ...) row) are one measurement
    draw_keys = [k for k in cell if k != "mu_norm"]
    groups = pd.Categorical(used[draw_keys].apply(tuple, axis=1)).codes if len(used) else np.zeros(0, int)

    def stat(idx):
        ratio = _nanmean(G[use], idx) / _nanmean(R[use], idx)
        log_const = np.log(ratio / ((1 - 2 * _nanmean(Q[use], idx)) * law_used))
        out = {f"slope:{k}": v for k, v in regress(logs, np.log(ratio)).items()}
        per_group = np.bincount(groups, log_const) / np.bincount(groups)
        out["const"] = float(np.exp(per_group.mean()))
        out.update({f"group:{g}": float(np.exp(v)) for g, v in enumerate(per_group)})
        return out

    rows = []
    if not use.any():
        why = f"{int(domain.sum())} cells in the domain, {int(early.sum())} in the early-phase window, none in both"
        rows += [_not_applicable("ratio_law_constant", label, len(cells), window, why)]
        return rows, cells.assign(label=label, early=early, in_domain=domain)
    iv = jackknife(stat, len(seeds))
    for dim in logs:
        pred = RATIO_SLOPES.get(dim)
        region = None if pred is None else (pred - SLOPE_TOLERANCE, pred + SLOPE_TOLERANCE)
        rows.append(_row("ratio_law_exponents", label, iv[f"slope:{dim}"], region, len(used), len(cells), window,
                         dim=dim, predicted=pred))
    spread = [iv[f"group:{g}"].estimate for g in range(groups.max() + 1)]
    note = (f"one estimate from {len(used)} cells in {len(spread)} groups sharing data draws; per-group constants "
            f"{min(spread):.3g}-{max(spread):.3g}")
    rows.append(_row("ratio_law_constant", label, iv["const"], CONSTANT_BAND, len(used), len(cells), window,
                     predicted=1.0, heterogeneity=note))
    with np.errstate(divide="ignore", invalid="ignore"):
        measured = np.nanmean(G, 1) / np.nanmean(R, 1)
        predicted = (1 - 2 * np.nanmean(Q, 1)) * law.to_numpy()
    table = cells.assign(label=label, measured=measured, predicted=predicted, early=early, in_domain=domain)
    return rows, table


def sam_amplification(traj: pd.DataFrame, sam: str, sgd: str, sam_steps, seeds: list, harmful_at: float,
                      cell=CELL, covered: bool = True):
    """SAM's Gamma/Rho over SGD's during SAM's phase, per cell; rows and the per-cell table. ``covered``: whether
    [C23]'s mechanism covers the SAM variant (else its numbers are exploratory)."""
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
    domain = in_domain("sam_amplification", a, cells, cell)
    harmful = (sgd_err >= harmful_at) & domain
    logs = swept_logs(cells)
    inside = domain[group]   # per (cell, step) row

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
        diff = _nanmean(Ua, idx) - _nanmean(Ub, idx)
        out["noise_diff"] = float(np.nanmean(diff[inside])) if inside.any() else float("nan")
        return out

    iv = jackknife(stat, len(seeds))
    window = f"logged steps 1..{int(last) if np.isfinite(last) else 'end'} (SAM's phase), both variants"
    variant = f"{sam} vs {sgd}"
    rows = []
    if not covered:
        rows.append(_row("sam_amplification", variant, iv["min_harmful"], None, int(harmful.sum()), len(cells),
                         window, note="a variant [C23]'s mechanism does not cover"))
        rows.append(_row("noise_switched_off", variant, iv["noise_diff"], None, int(domain.sum()), len(cells),
                         window))
    elif harmful.any():
        rows.append(_row("sam_amplification", variant, iv["min_harmful"], (AMPLIFICATION, np.inf),
                         int(harmful.sum()), len(cells), window))
    else:
        rows.append(_not_applicable("sam_amplification", variant, len(cells), window,
                                    "no in-domain cell where SGD is harmful"))
    if covered:
        rows.append(_row("noise_switched_off", variant, iv["noise_diff"], (-np.inf, 0.0), int(domain.sum()),
                         len(cells), window) if domain.any() else
                    _not_applicable("noise_switched_off", variant, len(cells), window, "no cell in the domain"))
    rows.append(_row("sam_amplification", variant, iv["median"], None, len(cells), len(cells), window,
                     dim="median over all cells"))
    for dim in logs:
        rows.append(_row("sam_amplification", variant, iv[f"slope:{dim}"], None, len(cells), len(cells), window,
                         dim=f"log-log slope in {dim}"))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_amp = np.log(_nanmean(Ga) / _nanmean(Ra)) - np.log(_nanmean(Gb) / _nanmean(Rb))
    table = cells.assign(label=variant, amplification=np.exp(per_cell(log_amp)), sgd_test_error=sgd_err,
                         sgd_harmful=sgd_err >= harmful_at, in_domain=domain, noise_active_sam=per_cell(_nanmean(Ua)),
                         noise_active_sgd=per_cell(_nanmean(Ub)))
    return rows, table


def collapse_variable(c: pd.DataFrame, power_of: str = "P-1") -> np.ndarray:
    q = c.P.astype(float) - (1 if power_of == "P-1" else 0)
    return (c.n * c.mu_norm ** 4 / (c.d * q ** 4 * c.sigma_p ** 4)).to_numpy(dtype=float)


def collapse(results: pd.DataFrame, label: str, seeds: list, cell=CELL):
    """SGD's final test error against x = n ||mu||^4 / (d (P-1)^4 sigma_p^4) on the in-domain cells: rows and the
    per-cell table."""
    r = results[results.label == label]
    r = r.assign(_err=scored_error(r))
    cells, E = cell_seed_array(r, "_err", seeds, cell)
    domain = in_domain("collapse", r, cells, cell)
    table = cells.assign(label=label, test_error=np.nanmean(E, 1), x=collapse_variable(cells),
                         x_P=collapse_variable(cells, "P"), in_domain=domain)
    inside = cells[domain]
    others = [k for k in CORE if k != "mu_norm" and inside[k].nunique() >= 2]
    window = f"final test error; swept besides ||mu||: {', '.join(others) or 'nothing in the domain'}"
    if not others:
        if any(cells[k].nunique() >= 2 for k in CORE if k != "mu_norm"):
            return [_not_applicable("collapse", label, len(cells), window,
                                    "fewer than 2 values of a dimension besides ||mu|| inside the domain")], table
        return [], table
    x, xP = table.x.to_numpy()[domain], table.x_P.to_numpy()[domain]
    mu, E_in = cells.mu_norm.to_numpy(dtype=float)[domain], E[domain]

    def stat(idx):
        e = _nanmean(E_in, idx)
        base = residual_rms(mu, e)
        return {"x": residual_rms(x, e) / base, "x_P": residual_rms(xP, e) / base}

    iv = jackknife(stat, len(seeds))
    rows = [_row("collapse", label, iv["x"], (0.0, COLLAPSE_MAX), int(domain.sum()), len(cells), window,
                 dim="x with (P-1)^4")]
    if inside.P.nunique() > 1:  # with P fixed the two variables differ by a constant factor
        rows.append(_row("collapse", label, iv["x_P"], None, int(domain.sum()), len(cells), window,
                         dim="x with P^4"))
    return rows, table


def invariants(traj: pd.DataFrame, label: str, key=RUN_KEY) -> list[dict]:
    """Entry-level violations counted by the trainer, plus the summaries' signs and monotonicity per run."""
    t = traj[traj.label == label].sort_values([*key, "step"])
    window = "every logged step of the runs in the domain"
    if not len(t):
        return []
    t = t[CLAIMS["invariants"].in_domain(t)]   # the two-layer runs: the derivation of §6.5 is theirs
    if not len(t):
        return [_not_applicable("invariants", label, 0, window, "no run of the two-layer network")]
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
    exact = Interval(count, count, count, 0.0, runs)   # a count over every run, no sampling error
    return [_row("invariants", label, exact, (0.0, 0.0), runs, runs, f"every logged step of {runs} runs")]


# The Box-Cox family a + b ((t + t0)^k - 1) / k (k = 0: a + b log(t + t0)) nests log growth with an offset t0, which
# the late phase of docs/science.md §6.6 predicts, and power growth t^k: its exponent k tells them apart.
BOXCOX_K = np.round(np.arange(-1.0, 1.5001, 0.01), 2)
BOXCOX_T0 = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 61)])   # in units of the window's first step


def boxcox_exponent(t: np.ndarray, y: np.ndarray) -> float:
    """The exponent k of the least-squares fit y = a + b ((t + t0)^k - 1) / k over a grid of k (step 0.01) and
    t0 >= 0 (log-spaced, relative to t's first value); NaN with fewer than 4 points or a flat y."""
    ok = np.isfinite(t) & np.isfinite(y) & (t > 0)
    t, y = t[ok], y[ok]
    if len(t) < 4 or np.ptp(y) == 0:
        return float("nan")
    base = np.log(t[None, :] + BOXCOX_T0[:, None] * t[0])            # (t0, points)
    k = BOXCOX_K[:, None, None]
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.where(k == 0, base[None], np.expm1(k * base[None]) / np.where(k == 0, 1, k))   # (k, t0, points)
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        rss = (yc ** 2).sum() - (xc * yc).sum(-1) ** 2 / (xc ** 2).sum(-1)
    rss = np.where(np.isfinite(rss), rss, np.inf)
    i, _ = np.unravel_index(np.argmin(rss), rss.shape)
    return float(BOXCOX_K[i])


def late_phase(traj: pd.DataFrame, label: str, seeds: list, cell=CELL, key=RUN_KEY):
    """Runs that fit every training label: the growth of rhobar_max after fitting, and |rhounder| / rhobar."""
    t = traj[(traj.label == label) & (traj.final_train_acc >= 1)].sort_values([*key, "step"])
    window = (f"logged steps with every training label fitted and training loss <= {LATE_LOSS} (|l'| ~ exp(-y f), "
              f"the late phase of §6.6), >= {LATE_POINTS} of them")
    rows = []
    for run_key, g in t.groupby(list(key), sort=False):
        after = g[(g.train_acc >= 1) & (g.train_loss <= LATE_LOSS)]
        if len(after) < LATE_POINTS or after.rhobar_max.var() == 0:
            continue
        last = g.iloc[-1]
        rows.append(dict(zip(key, run_key), exponent=boxcox_exponent(after.step.to_numpy(dtype=float),
                                                                     after.rhobar_max.to_numpy(dtype=float)),
                         under=-last.rhounder_min / last.rhobar_max if last.rhobar_max > 0 else np.nan))
    if not rows:
        why = f"no run has {LATE_POINTS} logged steps in the window"
        return [_not_applicable(c, label, 0, window, why) for c in ("late_log_growth", "late_rhounder_small")] \
            if len(traj[traj.label == label]) else [], pd.DataFrame()
    runs = pd.DataFrame(rows)
    cells, U = cell_seed_array(runs, "under", seeds, cell)
    _, K = cell_seed_array(runs, "exponent", seeds, cell)
    domain = in_domain("late_log_growth", t, cells, cell)
    logs = swept_logs(cells)

    def stat(idx):
        u = _nanmean(U, idx)
        out = {"under": float(np.nanmean(u[domain])), "exponent": float(np.nanmean(_nanmean(K[domain], idx)))}
        out.update({f"slope:{k}": v for k, v in regress(logs, np.log(u)).items()})
        return out

    # _nanmean: a cell where no seed gives a value (a late window too short to fit) is NaN, without numpy's warning
    table = cells.assign(label=label, under=_nanmean(U), exponent=_nanmean(K), in_domain=domain)
    if not domain.any():
        return [_not_applicable(c, label, len(cells), window, "no cell in the domain")
                for c in ("late_log_growth", "late_rhounder_small")], table
    iv = jackknife(stat, len(seeds))
    out = [_row("late_log_growth", label, iv["exponent"], (-LATE_EXPONENT, LATE_EXPONENT), int(domain.sum()),
                len(cells), window, dim="Box-Cox exponent k of rhobar_max", predicted=0.0),
           _row("late_rhounder_small", label, iv["under"], (0.0, LATE_UNDER), int(domain.sum()), len(cells),
                "last logged step")]
    if "d" in logs:
        out.append(_row("late_rhounder_small", label, iv["slope:d"], None, len(cells), len(cells),
                        "last logged step", dim="log-log slope in d"))
    return out, table


def trajectory_claims(traj: pd.DataFrame, results: pd.DataFrame, spec, seed: int = 0) -> dict:
    """Every trajectory claim for every plain-SGD variant (and every SAM-family variant against it): ``claims``
    (claim lines as in verify.json) and per-cell ``tables`` for the figures."""
    from theory_sim.claims import is_sam, is_sgd, variant_parameters

    key, cell = spec.run_key, spec.cell_key
    results = with_flip_fraction(results)
    traj = with_settings(traj, results, key)
    seeds = sorted(results.seed.unique())
    variants = variant_parameters(results)
    sam_steps_of = {o.label: o.overrides.get("sam_steps") for o in spec.optimizers}
    sgd = [lab for lab, v in variants.items() if is_sgd(v)]
    sam = [lab for lab, v in variants.items() if v.get("optimizer") != "sgd"]   # every SAM-family rule against SGD
    p = float(results.flip_p.mean())
    claims: list[dict] = []
    tables: dict[str, list[pd.DataFrame]] = {"ratio_law": [], "amplification": [], "collapse": [], "late": []}
    for lab in sgd:
        rows, table = ratio_law(traj, lab, seeds, cell)
        claims += rows
        tables["ratio_law"].append(table)
        for s in sam:
            rows, table = sam_amplification(traj, s, lab, sam_steps_of.get(s), seeds, harmful_threshold(p), cell,
                                             covered=is_sam(variants[s]))
            claims += rows
            tables["amplification"].append(table)
        rows, table = collapse(results, lab, seeds, cell)
        claims += rows
        tables["collapse"].append(table)
        rows, table = late_phase(traj, lab, seeds, cell, key)
        claims += rows
        tables["late"].append(table)
    for lab in variants:
        claims += invariants(traj, lab, key)
    return {"claims": claims,
            "tables": {k: (pd.concat(v, ignore_index=True) if v else pd.DataFrame()) for k, v in tables.items()}}
