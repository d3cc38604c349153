"""``python -m theory_sim verify DIR``: locate the benign/harmful boundary and compare its shape with the theorems.

For every optimizer variant and every (d, n, P, sigma_p) cell the boundary ||mu||* is the onset of benign
overfitting: the smallest ||mu|| at which the seed-averaged test error drops to the benign threshold
p + benign_margin * (0.5 - p), interpolated (in log ||mu||) between the two grid points around the crossing. If
the error rises above the threshold again at a larger ||mu|| (seen for SAM at very large ||mu|| and d), the cell
reports that ``relapse_mu``. A cell benign at the smallest ||mu||
or never benign on the grid is censored and left out of the fits. The log-log slope of ||mu||* against every swept
dimension is fitted by least squares; its 95% confidence interval is the seed jackknife-t (theory_sim.intervals:
each seed left out jointly across cells, since every cell uses the same seeds). The interval covers seed noise, not the
discretisation of the ||mu|| grid: interpolating between grid points biases a slope by up to about the grid's
log-spacing divided by the log-range of the dimension, so use fine ||mu|| grids for tight checks.

Theory (docs/science.md §5, [C23] and [K23]): SGD is benign when n ||mu||^4 >= C d P^4 sigma_p^4, so ||mu||* ~ d^(1/4) n^(-1/4) P
sigma_p; SAM (with the [C23] radius scale) is benign once ||mu|| >= Omega~(1): slope ~0 in d. Constants are unknown,
so only shapes are checked, each as a claim of theory_sim.claims with its verdict rule. The markdown report is
theory_sim.sweeps.verify_report.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from theory_sim.claims import CLAIMS, DOMAIN, VERDICTS, cell_parameters, claim_row, init_scale, is_sam, is_sgd, \
    slope_tolerance, step_memorisation, variant_parameters
from theory_sim.intervals import NAN_INTERVAL, jackknife_interval, leave_one_out
from theory_sim.io import atomic_write_bytes, write_json
from theory_sim.sweeps.cells import DIMS, scored_error
from theory_sim.sweeps.paired import paired_differences
from theory_sim.sweeps.verify_report import markdown, summary_sentence

SLICE = DIMS[1:]   # a slice of the grid: a cell's dimensions besides d


STATUS = ("ok", "benign_everywhere", "never_benign")   # the status codes of ``crossings``
BLOCK = 1 << 21   # resampled_boundaries takes cells in blocks of about this many (cell, ||mu||, resample) means


def crossing(mus: np.ndarray, err: np.ndarray, threshold: float) -> tuple[float, str, float]:
    """The boundary ||mu||* of one cell (mus ascending): the onset of benign overfitting, i.e. the first crossing of
    the threshold from above, interpolated in log ||mu||. Returns (value, status, relapse) with status ok /
    benign_everywhere / never_benign, and relapse the smallest larger ||mu|| at which the error is above the
    threshold again (NaN if none: monotone on the grid)."""
    value, status, relapse = crossings(np.asarray(mus, dtype=float)[None], np.asarray(err, dtype=float)[None, :, None],
                                       threshold)
    return float(value[0, 0]), STATUS[status[0, 0]], float(relapse[0, 0])


def crossings(mus: np.ndarray, err: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``crossing`` of G cells with the same number M of ||mu|| values on B error curves each, at once: mus (G, M),
    err (G, M, B) -> (value, status, relapse), each (G, B), status an index into STATUS. NaN errors are not benign."""
    benign = err <= threshold
    cell = np.arange(err.shape[0])[:, None]
    k = benign.argmax(axis=1)                       # the first benign index (0 where none is)
    found = benign.any(axis=1)
    later = ~benign & (np.arange(err.shape[1])[None, :, None] > k[:, None, :])
    relapse = np.where(found & later.any(axis=1), mus[cell, later.argmax(axis=1)], np.nan)
    before = np.maximum(k - 1, 0)
    e0 = np.take_along_axis(err, before[:, None, :], axis=1)[:, 0]
    e1 = np.take_along_axis(err, k[:, None, :], axis=1)[:, 0]
    m0, m1 = mus[cell, before], mus[cell, k]
    with np.errstate(divide="ignore", invalid="ignore"):   # the branches np.where discards
        frac = np.where(e0 != e1, (e0 - threshold) / (e0 - e1), 0.5)
        value = np.where(m0 > 0, np.exp(np.log(m0) + frac * (np.log(m1) - np.log(m0))), m0 + frac * (m1 - m0))
    status = np.where(found, np.where(k == 0, 1, 0), 2)
    return np.where(status == 0, value, np.nan), status, relapse


def cell_arrays(df: pd.DataFrame, dims=DIMS) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """(label, *dims) -> (mus (M,), errors (M, S)); a diverged run counts as chance error 0.5. ``dims`` are the
    cell's dimensions besides ||mu|| (d, n, P, sigma_p and any extra swept axis).

    Each cell's table is what ``pivot_table(index="mu_norm", columns="seed", aggfunc="first")`` of the cell's rows
    gives (the first non-NaN error of each (||mu||, seed); a ||mu|| or seed without one left out), built from one
    groupby of the whole table instead of a pivot per cell (100 cells: 0.36 s -> a tenth of that)."""
    keys = ["label", *dims]
    first = df.assign(_err=scored_error(df)).groupby([*keys, "mu_norm", "seed"], sort=True)["_err"].first().dropna()
    wide = first.unstack("seed")             # rows (cell, ||mu||) in sorted order, a column per seed
    out = {}
    level = list(range(len(keys)))
    for key, table in wide.groupby(level=level if len(level) > 1 else 0, sort=True):
        table = table.dropna(axis=1, how="all")   # seeds this cell does not have
        key = key if isinstance(key, tuple) else (key,)
        out[key] = (table.index.get_level_values("mu_norm").to_numpy(dtype=float), table.to_numpy(dtype=float))
    return out


def boundaries(cells: dict, threshold: float, seed_idx: np.ndarray | None = None, dims=DIMS) -> pd.DataFrame:
    """The boundary ||mu||* of every cell (the keys of ``cell_arrays``), on the seeds ``seed_idx`` (all: None)."""
    rows = []
    for key, (mus, errs) in cells.items():
        e = errs if seed_idx is None else errs[:, seed_idx]
        mu_star, state, relapse = crossing(mus, np.nanmean(e, axis=1), threshold)
        rows.append(dict(label=key[0], **dict(zip(dims, key[1:])), mu_star=mu_star, status=state,
                         relapse_mu=relapse))
    return pd.DataFrame(rows)


def resampled_boundaries(cells: dict, threshold: float, draws: np.ndarray) -> np.ndarray:
    """mu* of every cell (rows, in the order of ``cells``) on every resample of the seeds (columns; ``draws`` (B, k)
    seed indices, e.g. theory_sim.intervals.leave_one_out(S)): column b is the mu_star of ``boundaries(cells, threshold, draws[b])``, all at once."""
    mu_star = np.full((len(cells), len(draws)), np.nan)
    arrays = list(cells.values())
    by_shape: dict[tuple, list[int]] = {}   # cells stacked by shape: each has its own ||mu|| grid (and seeds)
    for i, (_, errs) in enumerate(arrays):
        by_shape.setdefault(errs.shape, []).append(i)
    for (length, _), rows in by_shape.items():
        step = max(1, BLOCK // max(1, length * len(draws)))
        for start in range(0, len(rows), step):
            part = rows[start:start + step]
            errs = np.stack([arrays[i][1] for i in part])
            seeds = int(draws.max()) + 1 if draws.size else errs.shape[2]
            if errs.shape[2] < seeds:   # cells with fewer seeds (a boundary search's): the others missing
                errs = np.concatenate([errs, np.full((*errs.shape[:2], seeds - errs.shape[2]), np.nan)], 2)
            means = _seed_means(errs, draws)
            mu_star[part] = crossings(np.stack([arrays[i][0] for i in part]), means, threshold)[0]
    return mu_star


def _seed_means(errs: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """np.nanmean over the drawn seeds: errs (G, M, S), draws (B, S) -> (G, M, B). The seeds are added one by one in
    draw order, as np.nanmean(errs[:, idx], axis=1) adds them (fancy indexing returns an F-ordered copy, reduced
    seed by seed), so the means are bit-identical to the per-resample ``boundaries``."""
    total = np.zeros((*errs.shape[:2], len(draws)))
    count = np.zeros(total.shape, dtype=np.intp)
    for slot in draws.T:   # the seed each resample draws at this position
        e = errs[:, :, slot]
        missing = np.isnan(e)
        total += np.where(missing, 0.0, e)
        count += ~missing
    with np.errstate(invalid="ignore", divide="ignore"):   # a point without any seed: NaN, as np.nanmean
        return total / count


class _Fit(NamedTuple):
    """One fit of fit_slopes without its data: the row's keys, the cells' row positions in the boundary table,
    which of the dimension's distinct values each cell has (one-hot (values, cells): counts the values left with a
    located boundary), and the abscissa log(dimension - shift)."""
    fields: dict
    rows: np.ndarray
    distinct: np.ndarray
    x: np.ndarray


def _fits(bnd: pd.DataFrame, dims) -> list[_Fit]:
    """The fits of fit_slopes (in its row order): every dimension with >= 3 distinct positive values, per group of
    the other dimensions."""
    bnd = bnd.reset_index(drop=True)
    out = []
    for dim in dims:
        others = [x for x in dims if x != dim]
        if (bnd[dim] <= 0).any():  # a log-log slope needs positive values (e.g. sam_steps = 0 on an extra axis)
            continue
        for key, g in bnd.groupby(["label", *others], sort=True):
            if g[dim].nunique() < 3:
                continue
            values = g[dim].to_numpy()
            distinct = (np.unique(values)[:, None] == values[None, :]).astype(float)
            # P: the theorems' P^4 counts patches; with shared noise the noise enters P - 1 times, which on a small
            # grid of P is a different power law, so both are fitted
            for name, shift in ((dim, 0), ("P-1", 1)) if dim == "P" else ((dim, 0),):
                out.append(_Fit(dict(label=key[0], dim=name, **dict(zip(others, key[1:]))), g.index.to_numpy(),
                                distinct, np.log(values.astype(float) - shift)))
    return out


def _fit(fit: _Fit, mu_star: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares line of log mu* against fit.x on every column of mu_star ((cells, B)), over the cells with a
    finite positive mu*: (slope, intercept, points), each (B,); NaN where < 3 distinct values remain. The centred
    closed form of np.polyfit(x, log mu*, 1), equal to it up to rounding (~1e-15 relative)."""
    mu = mu_star[fit.rows]
    ok = np.isfinite(mu) & (mu > 0)
    points = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(ok, fit.x[:, None], 0.0)
        y = np.where(ok, np.log(np.where(ok, mu, 1.0)), 0.0)
        x_mean, y_mean = x.sum(axis=0) / points, y.sum(axis=0) / points
        dx, dy = np.where(ok, x - x_mean, 0.0), np.where(ok, y - y_mean, 0.0)
        slope = (dx * dy).sum(axis=0) / (dx * dx).sum(axis=0)
    slope = np.where((fit.distinct @ ok > 0).sum(axis=0) >= 3, slope, np.nan)
    return slope, y_mean - slope * x_mean, points


def fit_slopes(bnd: pd.DataFrame, dims=DIMS) -> pd.DataFrame:
    """Log-log slope of mu* (least squares over the cells with a located boundary) in every dimension with >= 3
    distinct positive values, the others held fixed; NaN where fewer than 3 of the values have a boundary."""
    mu_star = bnd.mu_star.to_numpy(dtype=float)[:, None]
    rows = []
    for fit in _fits(bnd, dims):
        slope, intercept, points = (v[0] for v in _fit(fit, mu_star))
        rows.append(dict(**fit.fields, slope=float(slope), intercept=float(intercept), points=int(points),
                         cells=int(len(fit.rows))))
    return pd.DataFrame(rows)


def resampled_slopes(bnd: pd.DataFrame, mu_star: np.ndarray, dims=DIMS) -> np.ndarray:
    """The slopes of ``fit_slopes(bnd)``'s rows (rows) with mu* replaced by each column of mu_star ((rows of bnd, B),
    e.g. from resampled_boundaries): (fits, B)."""
    return np.array([_fit(fit, mu_star)[0] for fit in _fits(bnd, dims)]).reshape(-1, mu_star.shape[1])


def verify(out: str | Path, seed: int = 0) -> dict:
    """Write DIR/verify.json and DIR/verify.md; return the report (with its markdown under 'markdown')."""
    from theory_sim.sweeps.store import load_spec, read_results, read_trajectories

    out = Path(out)
    spec = load_spec(out)
    return verify_table(read_results(out), spec, out, seed=seed, traj=read_trajectories(out))


def boundary_claims(df: pd.DataFrame, spec, threshold: float, bnd: pd.DataFrame, cells: dict) -> list[dict]:
    """The boundary claims of theory_sim.claims (slopes, SAM below SGD) on the in-domain cells, each with the same
    fit over every located cell beside it (exploratory). Intervals: the seed jackknife (theory_sim.intervals)."""
    dims = spec.cell_dims
    S = int(df.seed.nunique())
    loo = leave_one_out(S)
    params = cell_parameters(df, dims)
    domain_of = {c.name: c.in_domain(params) for c in CLAIMS.values()}
    key_of = list(params[["label", *dims]].itertuples(index=False, name=None))
    variants = variant_parameters(df)
    ignored = {o.label: spec.ignored_axes(o.label) for o in spec.optimizers}
    first = {a.name: min(a.values) for a in spec.axes}
    keys = list(cells)   # bnd's rows are cells' keys, in order
    mus = np.array([_log_step(cells[k][0]) for k in keys])   # each cell's ||mu|| grid step, for the tolerance
    loo_mu = resampled_boundaries(cells, threshold, loo)   # (cells, S): every leave-one-out boundary at once
    mu_star = bnd.mu_star.to_numpy(dtype=float)
    rows = []
    for claim_name in ("sgd_boundary_slope", "sam_boundary_slope"):
        claim = CLAIMS[claim_name]
        index = dict(zip(key_of, domain_of[claim.name]))
        inside = np.array([index[k] for k in keys])
        covered = [lab for lab, v in variants.items() if claim.covers(v)]
        # the claim's fits over its in-domain cells; beside them the exploratory fits over every located cell: of
        # the covered variants, and under SGD's claim of every variant no theorem covers (Rand-SAM, msam, ...)
        explored = covered if claim_name == "sam_boundary_slope" else [lab for lab, v in variants.items()
                                                                        if not is_sam(v)]
        for scope, mask in (("in domain", inside & bnd.label.isin(covered).to_numpy()),
                            ("all cells", bnd.label.isin(explored).to_numpy())):
            sub = bnd[mask]
            for fit in _fits(sub, dims):
                f, dim = fit.fields, fit.fields["dim"]
                skip = ignored.get(f["label"], ())
                if dim in skip or any(f[a] != first[a] for a in skip if a in f):
                    continue
                fit = fit._replace(rows=sub.index.to_numpy()[fit.rows])   # rows of the whole boundary table
                slope, intercept, _ = (v[0] for v in _fit(fit, mu_star[:, None]))
                interval = jackknife_interval(slope, _fit(fit, loo_mu)[0])
                located = np.isfinite(mu_star[fit.rows])
                predicted = claim.extra["slopes"].get(dim) if f["label"] in covered and dim != "P-1" else None
                region, tol = None, None
                if predicted is not None and scope == "in domain":
                    values = np.exp(fit.x) + (1 if dim == "P-1" else 0)
                    tol = slope_tolerance(claim, float(np.nanmedian(mus[fit.rows])), values)
                    region = (predicted - tol, predicted + tol)
                fixed = {k: ("any" if k in skip else _int(f[k])) for k in dims
                         if k != dim and not (dim == "P-1" and k == "P") and k in f}
                rows.append(claim_row(claim if scope == "in domain" else CLAIMS["slope_outside_domain"],
                                      f["label"], interval, region, scope, dim=dim, fixed=fixed, predicted=predicted,
                                      tolerance=tol, cells_in_domain=int(inside[fit.rows].sum()),
                                      cells=int(len(fit.rows)), located=int(located.sum()),
                                      law=_law(intercept, fit.x[located])))
        # a covered variant with no in-domain fit at all: the claim is not applicable, said once
        for lab, v in variants.items():
            if claim.covers(v) and not any(r["variant"] == lab and r["scope"] == "in domain" and r["claim"] ==
                                           claim_name for r in rows):
                n_in = int(sum(index[k] for k in key_of if k[0] == lab))
                rows.append(claim_row(claim, lab, NAN_INTERVAL, None, applicable=False, dim="d", fixed={},
                                       predicted=claim.extra["slopes"]["d"], tolerance=None, cells_in_domain=n_in,
                                       cells=int(sum(k[0] == lab for k in key_of)), located=0,
                                       note=f"{n_in} in-domain cells: a slope needs 3 distinct values of a "
                                            "dimension with a located boundary"))
    below = dict(zip(key_of, domain_of["sam_below_sgd"]))
    rows += _sam_below_sgd(bnd, cells, loo_mu, variants, dims, np.array([below[k] for k in keys]))
    return rows


def _law(intercept: float, log_x: np.ndarray) -> dict | None:
    """The fitted boundary law log mu* = intercept + slope log x, for figures: its intercept and the range and
    centre of the log dimension it was fitted on (the slope interval's band pivots at the centre)."""
    if not len(log_x) or not np.isfinite(intercept):
        return None
    return {"intercept": float(intercept), "log_x_mean": float(log_x.mean()), "log_x_min": float(log_x.min()),
            "log_x_max": float(log_x.max())}


def _log_step(mus: np.ndarray) -> float:
    """The median log-spacing of a cell's positive ||mu|| values (NaN with fewer than 2)."""
    positive = np.log(mus[mus > 0])
    return float(np.median(np.diff(positive))) if len(positive) > 1 else float("nan")


def _censored(bnd: pd.DataFrame, cells: dict, mu: np.ndarray, low_side: bool) -> np.ndarray:
    """log mu* with censored cells at the grid's end: for SGD (low_side False) a never-benign cell counts as the
    grid's top (a lower bound of its boundary), for SAM a benign-everywhere cell as the grid's bottom (an upper
    bound): SGD's minus SAM's is then a lower bound wherever a cell is censored."""
    tops = np.array([cells[k][0].max() for k in cells])[:, None]
    bottoms = np.array([cells[k][0].min() for k in cells])[:, None]
    status = bnd.status.to_numpy()[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        fill = bottoms if low_side else tops
        censored = (status == "benign_everywhere") if low_side else (status == "never_benign")
        out = np.where(np.isfinite(mu), mu, np.where(censored, fill, np.nan))
        return np.log(out)


def _sam_below_sgd(bnd: pd.DataFrame, cells: dict, loo_mu: np.ndarray, variants: dict, dims,
                   inside: np.ndarray) -> list[dict]:
    """[C23]'s SAM below plain SGD: the mean over in-domain d (per slice of the other dimensions) of
    log(mu*_SGD / mu*_SAM), censored cells at the grid's ends (a lower bound), with the seed jackknife."""
    claim = CLAIMS["sam_below_sgd"]
    cells_of = {tuple(r): i for i, r in enumerate(bnd[["label", *dims]].itertuples(index=False, name=None))}
    mu = np.column_stack([bnd.mu_star.to_numpy(dtype=float), loo_mu])   # column 0: all seeds; then leave-one-out
    sam_side, sgd_side = _censored(bnd, cells, mu, low_side=True), _censored(bnd, cells, mu, low_side=False)
    rows = []
    for a in [lab for lab, v in variants.items() if is_sam(v)]:
        for b in [lab for lab, v in variants.items() if is_sgd(v)]:
            groups: dict[tuple, list[tuple[int, int]]] = {}
            for key, i in cells_of.items():
                j = cells_of.get((b, *key[1:]))
                if key[0] == a and inside[i] and j is not None:
                    groups.setdefault(key[2:], []).append((i, j))
            for slice_key, pairs in sorted(groups.items()):
                ia, ib = (np.array(x) for x in zip(*pairs))
                with np.errstate(invalid="ignore"):
                    gap = np.mean(sgd_side[ib] - sam_side[ia], axis=0)   # NaN if a cell has no boundary at all
                interval = jackknife_interval(gap[0], gap[1:])
                rows.append(claim_row(claim, f"{a} vs {b}", interval, (0.0, np.inf), dim="d",
                                       fixed={k: _int(v) for k, v in zip(dims[1:], slice_key)}, predicted=None,
                                       tolerance=None, cells_in_domain=len(pairs), cells=len(pairs),
                                       located=int(np.isfinite(sgd_side[ib, 0] - sam_side[ia, 0]).sum()),
                                       d=[_int(float(bnd.d.iloc[i])) for i in ia]))
    return rows


TRAJECTORY_NOTE = ("not run: this sweep directory has no trajectories.parquet (committed tables leave it out, or the "
                   "sweep ran with trajectories = false); re-run the sweep into a new --out directory "
                   "(`python -m theory_sim sweep SPEC --out DIR`, trajectories = true) and verify that")
TRAJECTORY_CLAIMS = ("ratio_law_exponents", "ratio_law_constant", "sam_amplification", "noise_switched_off",
                     "collapse", "invariants", "late_log_growth", "late_rhounder_small")


def located_boundaries(df: pd.DataFrame, spec, threshold: float) -> tuple[dict, pd.DataFrame]:
    """(cells, boundaries): ``cell_arrays`` and every cell's boundary with its init scale, one step's noise
    memorisation and a column ``in_<predicate>`` per domain predicate of theory_sim.claims.DOMAIN."""
    dims = spec.cell_dims
    cells = cell_arrays(df, dims)
    params = cell_parameters(df, dims)
    flags = {f"in_{name}": pred(params) for name, pred in DOMAIN.items()}
    params = params.assign(init_scale=init_scale(params), step_memorisation=step_memorisation(params), **flags)
    bnd = boundaries(cells, threshold, dims=dims).merge(
        params[["label", *dims, "init_scale", "step_memorisation", *flags]], on=["label", *dims], how="left")
    return cells, bnd


def verify_table(df: pd.DataFrame, spec, out: Path | None = None, seed: int = 0,
                 traj: pd.DataFrame | None = None) -> dict:
    """Every claim of theory_sim.claims that the tables allow: the boundary claims from the results table and,
    given the trajectory table, the trajectory claims; exploratory estimates beside them."""

    p = float(df.flip_p.iloc[0]) if df.flip_p.nunique() == 1 else float(df.flip_p.mean())
    threshold = spec.benign_threshold(p)
    cells, bnd = located_boundaries(df, spec, threshold)
    claims = boundary_claims(df, spec, threshold, bnd, cells)
    seeds = int(df.seed.nunique())
    report = {"threshold": threshold, "flip_p": p, "benign_rule": f"mean test error <= p + {spec.benign_margin} * "
              f"(0.5 - p) = {threshold:.4f}", "seeds": seeds, "interval": "95% jackknife-t over seeds "
              "(docs/science.md §5.6)", "claims": claims,
              "paired_differences": paired_differences(df, spec=spec).replace({np.nan: None}).to_dict(orient="records"),
              "boundaries": bnd.replace({np.nan: None}).to_dict(orient="records"), "not_run": []}
    if traj is not None:
        from theory_sim.sweeps.trajectory_claims import trajectory_claims

        report["claims"] += trajectory_claims(traj, df, spec, seed=seed)["claims"]
    else:
        report["not_run"].append({"claims": list(TRAJECTORY_CLAIMS), "why": TRAJECTORY_NOTE})
    report["summary"] = summarize(report)
    report["markdown"] = markdown(report, spec)
    if out is not None:
        write_json(Path(out) / "verify.json", {k: v for k, v in report.items() if k != "markdown"})
        atomic_write_bytes(Path(out) / "verify.md", report["markdown"].encode())
    return report


def summarize(report: dict) -> dict:
    """The verdicts of a report, one per claim line (a claim for one variant and slice; exploratory estimates are
    not counted): {counts: {verdict: n}, lines: [{claim, variant, fixed, verdict}], not_run: [...]}."""
    lines = [dict(claim=c["claim"], variant=c["variant"], dim=c.get("dim"), fixed=c.get("fixed") or {},
                  verdict=c["verdict"]) for c in report["claims"] if c["verdict"] != "exploratory"]
    counts = {v: sum(x["verdict"] == v for x in lines) for v in VERDICTS}
    return {"counts": counts, "lines": lines, "not_run": [n["why"] for n in report.get("not_run", [])]}


def stored_summary(out: str | Path) -> str:
    """The summary sentence of DIR/verify.json, for a study's report (a line saying how to get it if absent)."""
    import json

    path = Path(out) / "verify.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    if not report.get("summary") or "counts" not in report["summary"]:
        return f"not computed (run `python -m theory_sim verify {out}`)"
    return summary_sentence(report["summary"])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="sweep directory with results.parquet")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=False,
                   help="exit with status 1 when any claim is contradicted (for CI)")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False,
                   help="print only the one-line summary (the full report is in DIR/verify.md)")


def run(args: argparse.Namespace) -> int:
    report = verify(args.dir)
    print(f"{args.dir}: {summary_sentence(report['summary'])} ({args.dir / 'verify.md'})" if args.quiet
          else report["markdown"])
    return 1 if args.strict and report["summary"]["counts"]["contradicted"] else 0


def _int(v):
    """An integral float (a cell value of an integer axis, e.g. d = 3200.0 next to NaN) as an int."""
    return int(v) if isinstance(v, float) and v.is_integer() else v
