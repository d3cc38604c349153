"""``python -m theory_sim verify DIR``: locate the benign/harmful boundary and compare its shape with the theorems.

For every optimizer variant and every (d, n, P, sigma_p) cell the boundary ||mu||* is the onset of benign
overfitting: the smallest ||mu|| at which the seed-averaged test error drops to the benign threshold
p + benign_margin * (0.5 - p), interpolated (in log ||mu||) between the two grid points around the crossing. If
the error rises above the threshold again at a larger ||mu|| (seen for SAM at very large ||mu|| and d), the cell
reports that ``relapse_mu``. A cell benign at the smallest ||mu||
or never benign on the grid is censored and left out of the fits. The log-log slope of ||mu||* against every swept
dimension is fitted by least squares; its 95% confidence interval comes from a bootstrap over seeds (seeds are
resampled jointly across cells, since every cell uses the same seeds). The interval covers seed noise, not the
discretisation of the ||mu|| grid: interpolating between grid points biases a slope by up to about the grid's
log-spacing divided by the log-range of the dimension, so use fine ||mu|| grids for tight checks.

Theory (docs/science.md §5, [C23] and [K23]): SGD is benign when n ||mu||^4 >= C d P^4 sigma_p^4, so ||mu||* ~ d^(1/4) n^(-1/4) P
sigma_p; SAM (with the [C23] radius scale) is benign once ||mu|| >= Omega~(1): slope ~0 in d. Constants are unknown,
so only shapes are checked: a prediction holds when it lies in the bootstrap interval.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from theory_sim.io import atomic_write_bytes, write_json
from theory_sim.sweeps.cells import DIMS, scored_error, seed_resamples
from theory_sim.sweeps.paired import paired_differences

SLICE = DIMS[1:]   # a slice of the grid: a cell's dimensions besides d
PREDICTED = {"sgd": {"d": 0.25, "n": -0.25, "P": 1.0, "P-1": 1.0, "sigma_p": 1.0}, "sam": {"d": 0.0}}
# An exact exponent holds when the bootstrap interval contains it. SAM's "about 0" (Omega~ hides log factors) holds
# when the whole interval lies within +-TOLERANCE, half of SGD's 1/4: flat compared with SGD's boundary.
TOLERANCE = {"sgd": 0.0, "sam": 0.125}
PAIRED_BOOT = 2000  # resamples of the paired differences (cheap: a matrix product per comparison)


def prediction_holds(optimizer: str, predicted: float, lo: float, hi: float) -> bool:
    tol = TOLERANCE.get(optimizer, 0.0)
    if tol == 0.0:
        return bool(lo <= predicted <= hi)
    return bool(predicted - tol <= lo and hi <= predicted + tol)


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
    """mu* of every cell (rows, in the order of ``cells``) on every resample of the seeds (columns; ``draws`` (B, S)
    from seed_resamples): column b is the mu_star of ``boundaries(cells, threshold, draws[b])``, all at once."""
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
            if errs.shape[2] < draws.shape[1]:   # cells with fewer seeds (a boundary search's): the others missing
                errs = np.concatenate([errs, np.full((*errs.shape[:2], draws.shape[1] - errs.shape[2]), np.nan)], 2)
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


def verify(out: str | Path, n_boot: int = 200, seed: int = 0) -> dict:
    """Write DIR/verify.json and DIR/verify.md; return the report (with its markdown under 'markdown')."""
    from theory_sim.sweeps.store import load_spec, read_results, read_trajectories

    out = Path(out)
    spec = load_spec(out)
    return verify_table(read_results(out), spec, out, n_boot=n_boot, seed=seed, traj=read_trajectories(out))


def verify_table(df: pd.DataFrame, spec, out: Path | None = None, n_boot: int = 200, seed: int = 0,
                 traj: pd.DataFrame | None = None) -> dict:
    """The boundary checks from the results table and, given the trajectory table, the trajectory claims."""
    p = float(df.flip_p.iloc[0]) if df.flip_p.nunique() == 1 else float(df.flip_p.mean())
    threshold = spec.benign_threshold(p)
    optimizer_of = {o.label: o.optimizer for o in spec.optimizers}
    dims = spec.cell_dims
    cells = cell_arrays(df, dims)
    bnd = boundaries(cells, threshold, dims=dims)
    if "sigma_0" in df.columns:  # the theorems want sigma_0 <~ 1/(P sigma_p sqrt(d)): report where a cell stands
        scale = (df.sigma_0 * df.P * df.sigma_p * np.sqrt(df.d)).groupby([df[k] for k in ("label", *dims)])
        bnd["init_scale"] = [float(scale.get_group(tuple(k)).max()) for k in
                             bnd[["label", *dims]].itertuples(index=False, name=None)]
    fits = fit_slopes(bnd, dims)
    seeds = int(df.seed.nunique())
    checks = []
    # a variant's runs repeat along the axes its optimizer does not read (theory_sim.config.ignored_parameters):
    # no slope along such an axis, and the slopes along the others once (at the axis's first value), not per value
    ignored = {o.label: spec.ignored_axes(o.label) for o in spec.optimizers}
    first = {a.name: min(a.values) for a in spec.axes}
    if not fits.empty:
        # every resample's boundaries and slopes at once; row r of boot is fits' row r over the resamples
        boot = resampled_slopes(bnd, resampled_boundaries(cells, threshold, seed_resamples(seeds, n_boot, seed)),
                                dims)
        for r, row in fits.iterrows():
            skip = ignored.get(row.label, ())
            if row.dim in skip or any(row[a] != first[a] for a in skip if a in row):
                continue
            s = boot[r][~np.isnan(boot[r])]
            lo, hi = (np.percentile(s, [2.5, 97.5]) if len(s) >= 10 else (float("nan"), float("nan")))
            pred = PREDICTED.get(optimizer_of.get(row.label, ""), {}).get(row.dim)
            fixed = {k: ("any" if k in skip else row[k]) for k in dims
                     if k != row.dim and not (row.dim == "P-1" and k == "P")}
            checks.append(dict(label=row.label, optimizer=optimizer_of.get(row.label), dim=row.dim, fixed=fixed,
                               slope=row.slope, ci_low=float(lo), ci_high=float(hi), predicted=pred,
                               points=row.points, cells=row.cells, boot_valid=int(len(s)),
                               tolerance=TOLERANCE.get(optimizer_of.get(row.label, ""), 0.0),
                               holds=(None if pred is None or not np.isfinite(lo)
                                      else prediction_holds(optimizer_of.get(row.label), pred, lo, hi))))
    comparisons = _sam_below_sgd(bnd, optimizer_of, dims[1:])
    report = {"threshold": threshold, "flip_p": p, "benign_rule": f"mean test error <= p + {spec.benign_margin} * "
              f"(0.5 - p) = {threshold:.4f}", "seeds": seeds, "bootstrap": n_boot, "slopes": checks,
              "sam_below_sgd": comparisons,
              "paired_bootstrap": PAIRED_BOOT,
              "paired_differences": paired_differences(df, spec=spec, n_boot=PAIRED_BOOT, seed=seed)
              .replace({np.nan: None}).to_dict(orient="records"),
              "boundaries": bnd.replace({np.nan: None}).to_dict(orient="records")}
    if traj is not None:
        from theory_sim.sweeps.trajectory_claims import trajectory_claims

        report["trajectory_claims"] = trajectory_claims(traj, df, spec, n_boot=n_boot, seed=seed)["claims"]
        report["trajectory_note"] = None
    else:
        report["trajectory_claims"] = []
        report["trajectory_note"] = ("this sweep directory has no trajectories.parquet (written before sweeps kept "
                                     "coefficient trajectories, or with trajectories = false): the trajectory claims "
                                     "need a re-run of the sweep into a new --out directory")
    report["summary"] = summarize(report)
    report["markdown"] = _markdown(report, spec)
    if out is not None:
        write_json(Path(out) / "verify.json", {k: v for k, v in report.items() if k != "markdown"})
        atomic_write_bytes(Path(out) / "verify.md", report["markdown"].encode())
    return report


def _cell_text(values: dict) -> str:
    return ", ".join(f"{k}={_fmt(_int(v))}" for k, v in values.items())


def summarize(report: dict) -> dict:
    """The verdict of a report: every check with a rule (holds True/False; a '-' row has none) counted, grouped by
    check (the same claim for the same variant, over cells). Returns {checks, holding, failing: [names], groups:
    [{check, holding, total, failing: [cells]}]}."""
    groups: dict[str, dict] = {}

    def add(check: str, cell: str, holds) -> None:
        if holds is None:
            return
        g = groups.setdefault(check, {"check": check, "holding": 0, "total": 0, "failing": []})
        g["total"] += 1
        g["holding"] += bool(holds)
        if not holds:
            g["failing"].append(cell)

    for c in report["slopes"]:
        add(f"{c['label']} boundary slope in {c['dim']}", _cell_text(c["fixed"]), c["holds"])
    for c in report["sam_below_sgd"]:
        add(f"{c['sam']} boundary below {c['sgd']}'s at large d", _cell_text(c["slice"]), c["holds"])
    for c in report.get("trajectory_claims") or []:
        if c["claim"] == "ratio_law_constant":
            add(f"ratio_law_constant ({c['variant']})", c["dimension"], c["holds"])
        else:
            add(f"{c['claim']} ({c['variant']}, {c['dimension']})", "", c["holds"])
    total = sum(g["total"] for g in groups.values())
    holding = sum(g["holding"] for g in groups.values())
    failing = [f"{g['check']}" + (f" [{cell}]" if cell else "") for g in groups.values() for cell in g["failing"]]
    return {"checks": total, "holding": holding, "failing": failing, "groups": list(groups.values())}


def summary_sentence(summary: dict, max_cells: int = 3) -> str:
    """'N of M checks hold; failing: X (in k of n cells: ...), ...' (one line, for verify.md and the gallery)."""
    parts = []
    for g in summary["groups"]:
        bad = [c for c in g["failing"] if c]
        if g["holding"] == g["total"]:
            continue
        if g["total"] == 1:
            parts.append(g["check"])
            continue
        cells = "; ".join(bad[:max_cells]) + ("; ..." if len(bad) > max_cells else "")
        parts.append(f"{g['check']} fails in {g['total'] - g['holding']} of {g['total']} cells"
                     + (f" ({cells})" if cells else ""))
    head = f"{summary['holding']} of {summary['checks']} checks hold"
    return head + (f"; failing: {'; '.join(parts)}." if parts else "; none fails.")


def stored_summary(out: str | Path) -> str:
    """The summary sentence of DIR/verify.json, for a study's report (a line saying how to get it if absent)."""
    import json

    path = Path(out) / "verify.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    if not report.get("summary"):
        return f"not computed (run `python -m theory_sim verify {out}`)"
    from theory_sim.sweeps.store import load_spec

    keeps = load_spec(out).trajectories   # a sweep with trajectories = false has no trajectory claims to miss
    note = (" (boundary checks only: the trajectory claims need the sweep's trajectories.parquet)"
            if report.get("trajectory_note") and keeps else "")
    return summary_sentence(report["summary"], max_cells=8) + note


def _sam_below_sgd(bnd: pd.DataFrame, optimizer_of: dict, slice_dims=SLICE) -> list[dict]:
    """At every d in the upper half of the grid: is each SAM-family variant's boundary below each SGD variant's, in
    every slice of the other dimensions? A never-benign SGD cell counts as +inf, a benign-everywhere SAM cell as
    -inf."""
    out = []
    sgd_labels = [l for l, o in optimizer_of.items() if o == "sgd"]
    sam_labels = [l for l, o in optimizer_of.items() if o != "sgd"]
    ds = np.sort(bnd.d.unique())
    large = ds[len(ds) // 2:]
    value = lambda r: (r.mu_star if r.status == "ok" else  # noqa: E731
                       (np.inf if r.status == "never_benign" else -np.inf))
    for a in sam_labels:
        for b in sgd_labels:
            for key, g in bnd[bnd.d.isin(large)].groupby(list(slice_dims)):
                ga = g[g.label == a].set_index("d")
                gb = g[g.label == b].set_index("d")
                per_d = {int(d): (value(ga.loc[d]), value(gb.loc[d])) for d in large if d in ga.index and d in gb.index}
                below = all(x < y or (np.isinf(x) and x < 0 and not (np.isinf(y) and y < 0)) for x, y in per_d.values())
                out.append(dict(sam=a, sgd=b, slice=dict(zip(slice_dims, key)), d=list(per_d),
                                sam_mu_star=[v[0] for v in per_d.values()], sgd_mu_star=[v[1] for v in per_d.values()],
                                holds=bool(below and per_d)))
    return out


def _fmt(x, nd=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a" if x is None or np.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def _markdown(report: dict, spec) -> str:
    lines = [f"# verify: {spec.name}", "", f"**Summary:** {summary_sentence(report['summary'], max_cells=8)} "
             "(Every row below with a 'holds' column is a check; verify --strict exits 1 when any fails.)", "",
             f"Benign rule: {report['benign_rule']}; {report['seeds']} seeds per cell; "
             f"95% intervals from {report['bootstrap']} bootstrap resamples of the seeds.", "",
             "## Boundary slopes (log ||mu||* against log of the dimension)", "",
             "| variant | dimension | held fixed | measured slope | 95% CI | predicted | holds | cells used |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in report["slopes"]:
        fixed = ", ".join(f"{k}={_fmt(v)}" for k, v in c["fixed"].items())
        holds = {True: "yes", False: "NO", None: "-"}[c["holds"]]
        pred = _fmt(c["predicted"]) + (f" +- {c['tolerance']:g}" if c["predicted"] is not None and c["tolerance"]
                                       else "")
        lines.append(f"| {c['label']} | {c['dim']} | {fixed} | {_fmt(c['slope'])} | "
                     f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}] | {pred} | {holds} | "
                     f"{c['points']}/{c['cells']} |")
    if not report["slopes"]:
        lines.append("| (no dimension has 3 or more values with a located boundary) | | | | | | | |")
    if report["sam_below_sgd"]:
        slice_names = ", ".join(spec.cell_dims[1:])
        lines += ["", "## SAM's boundary below SGD's at every large d", "",
                  f"| SAM | SGD | slice ({slice_names}) | d | SAM mu* | SGD mu* | holds |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in report["sam_below_sgd"]:
            values = ", ".join(_fmt(v) for v in c["slice"].values())
            lines.append(f"| {c['sam']} | {c['sgd']} | {values} | {c['d']} | "
                         f"{[_fmt(x) for x in c['sam_mu_star']]} | {[_fmt(x) for x in c['sgd_mu_star']]} | "
                         f"{'yes' if c['holds'] else 'NO'} |")
    lines += _paired_markdown(report, spec)
    lines += _trajectory_markdown(report)
    dims = spec.cell_dims
    lines += ["", "## Boundary per cell", "", "init scale = sigma_0 P sigma_p sqrt(d): the theorems assume it small.", "",
              f"| variant | {' | '.join(dims)} | mu* | status | harmful again at | init scale |",
              "| --- | " + "--- | " * len(dims) + "--- | --- | --- | --- |"]
    for b in report["boundaries"]:
        lines.append(f"| {b['label']} | " + " | ".join(_fmt(b[k]) for k in dims) + f" | "
                     f"{_fmt(b['mu_star'])} | {b['status']} | {_fmt(b['relapse_mu'])} | "
                     f"{_fmt(b.get('init_scale'))} |")
    lines += ["", "Censored cells (benign_everywhere: below the grid; never_benign: above it) are left out of the "
              "fits. Theory (docs/science.md §5): SGD slope 1/4 in d, -1/4 in n, 1 in P and sigma_p (holds: the interval contains it; "
              "'P-1' fits against the number of noise patches, which the shared-noise gradient actually counts); "
              "SAM about 0 in d (holds: the whole interval within +-0.125, half of SGD's slope)."]
    return "\n".join(lines) + "\n"


def _int(v):
    """An integral float (a cell value of an integer axis, e.g. d = 3200.0 next to NaN) as an int."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _paired_markdown(report: dict, spec) -> list[str]:
    """Pooled rows as a table; per-cell rows as one symbol per ||mu|| (- better, + worse, . indistinguishable)."""
    rows = report.get("paired_differences") or []
    lines = ["", "## Paired test-error differences (variant - baseline, same seeds; theory_sim.sweeps.paired)", ""]
    if not rows:
        return lines + ["Not computed: the sweep has no baseline (sgd or sam) next to another variant."]
    pooled = [r for r in rows if r["scope"] == "pooled"]
    lines += [f"Mean over the (cell, seed) pairs of test_error(variant) - test_error(baseline), a diverged run "
              f"scoring 0.5; 95% interval from {report['paired_bootstrap']} resamples of the seeds (jointly across "
              f"cells: a cluster bootstrap by seed). better / worse: the interval lies below / above 0.", "",
              "| variant | baseline | mean difference, all cells | 95% CI | pairs | verdict |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['label']} | {r['baseline']} | {r['mean_diff']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
              f"| {r['n_pairs']} | {r['verdict']} |" for r in pooled]
    cells = [r for r in rows if r["scope"] == "cell"]
    others = [k for k in spec.run_key if k not in ("label", "seed", "mu_norm")]
    symbol = {"better": "-", "worse": "+", "indistinguishable": "."}
    mus = sorted({r["mu_norm"] for r in cells})
    lines += ["", f"Per cell, one symbol per ||mu|| in {[_fmt(float(m)) for m in mus]} "
              "(- better, + worse, . indistinguishable, blank: no pairs):", "",
              f"| variant | baseline | {' | '.join(others)} | per ||mu|| | better / worse / indist. |",
              "| --- | --- | " + "--- | " * len(others) + "--- | --- |"]
    groups: dict[tuple, dict] = {}
    for r in cells:
        groups.setdefault((r["label"], r["baseline"], *(r[k] for k in others)), {})[r["mu_norm"]] = r["verdict"]
    for key, verdicts in groups.items():
        counts = [sum(v == name for v in verdicts.values()) for name in ("better", "worse", "indistinguishable")]
        marks = "".join(symbol.get(verdicts.get(m), " ") for m in mus)
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(_fmt(_int(v)) for v in key[2:]) +
                     f" | `{marks}` | {counts[0]} / {counts[1]} / {counts[2]} |")
    return lines


def _trajectory_markdown(report: dict) -> list[str]:
    lines = ["", "## Trajectory claims (docs/science.md §6)", ""]
    if report.get("trajectory_note"):
        return lines + [f"Not checked: {report['trajectory_note']}."]
    claims = report["trajectory_claims"]
    constants = [c for c in claims if c["claim"] == "ratio_law_constant"]
    others = [c for c in claims if c["claim"] != "ratio_law_constant"]
    holds = lambda c: {True: "yes", False: "NO", None: "-"}[c["holds"]]  # noqa: E731
    lines += ["| claim | variant | dimension | measured | 95% CI | predicted | holds | cells used | window |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in others:
        lines.append(f"| {c['claim']} | {c['variant']} | {c['dimension']} | {_fmt(c['measured'])} | "
                     f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}] | {_fmt(c['predicted'])} | {holds(c)} | "
                     f"{c['cells_used']} | {c['window']} |")
    if constants:
        values = np.array([c["measured"] for c in constants])
        ok = sum(bool(c["holds"]) for c in constants)
        lines += ["", f"Ratio-law constant (measured / predicted) per early-phase cell: {ok} of {len(constants)} "
                  f"with the whole 95% interval within [0.8, 1.25]; min {values.min():.3g}, median "
                  f"{np.median(values):.3g}, max "
                  f"{values.max():.3g}.", "",
                  "| variant | cell | measured / predicted | 95% CI | holds |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['variant']} | {c['dimension']} | {_fmt(c['measured'])} | [{_fmt(c['ci_low'])}, "
                  f"{_fmt(c['ci_high'])}] | {holds(c)} |" for c in constants]
    lines += ["", "Rules (theory_sim.sweeps.trajectory_claims): ratio-law exponents hold when the interval comes within "
              "0.1 of the prediction, constants when the whole interval lies within [0.8, 1.25]; SAM amplification "
              ">= 2 in every SGD-harmful cell (seed-mean test error >= p + 0.1); the update-point noise-active fraction "
              "when the interval of SAM's minus SGD's lies below 0; collapse holds when x's residual spread around a "
              "decreasing fit is below 0.7 of ||mu||'s (the whole interval); invariants need 0 violations; late "
              "phase: the growth exponent k of rhobar_max (log growth: 0) when its whole interval lies within +-0.05, "
              "median max|rhounder| / max rhobar <= 0.5."]
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="sweep directory with results.parquet")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=False,
                   help="exit with status 1 when any check fails (for CI)")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False,
                   help="print only the one-line summary (the full report is in DIR/verify.md)")


def run(args: argparse.Namespace) -> int:
    from theory_sim.config import check_int

    check_int("bootstrap", args.bootstrap, 10)
    report = verify(args.dir, n_boot=args.bootstrap)
    print(f"{args.dir}: {summary_sentence(report['summary'])} ({args.dir / 'verify.md'})" if args.quiet
          else report["markdown"])
    return 1 if args.strict and report["summary"]["failing"] else 0
