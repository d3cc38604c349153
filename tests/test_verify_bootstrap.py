"""verify's vectorised leave-one-seed-out fits (crossings, resampled_boundaries, resampled_slopes and the closed-form
fits behind the jackknife intervals) against the per-resample implementation they replaced, kept here as the
reference: a Python loop over cells calling np.nanmean and a scalar crossing, and np.polyfit per group of a pandas
groupby, once per jackknife replicate; the jackknife-t interval by its textbook formula."""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from theory_sim.sweeps import verify
from scipy import stats

from theory_sim.intervals import leave_one_out
from theory_sim.sweeps.cells import DIMS
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.verify import (boundaries, cell_arrays, crossing, fit_slopes, resampled_boundaries,
                                      resampled_slopes, verify_table)

P_FLIP, SEEDS = 0.1, 10   # 10 seeds: np.nanmean's pairwise and sequential sums differ from 8 terms on


def ref_crossing(mus, err, threshold):
    benign = err <= threshold
    if not benign.any():
        return float("nan"), "never_benign", float("nan")
    k = int(np.argmax(benign))
    after = np.nonzero(~benign[k:])[0]
    relapse = float(mus[k + after[0]]) if len(after) else float("nan")
    if k == 0:
        return float("nan"), "benign_everywhere", relapse
    e0, e1 = err[k - 1], err[k]
    frac = (e0 - threshold) / (e0 - e1) if e0 != e1 else 0.5
    if mus[k - 1] > 0:
        value = float(np.exp(np.log(mus[k - 1]) + frac * (np.log(mus[k]) - np.log(mus[k - 1]))))
    else:
        value = float(mus[k - 1] + frac * (mus[k] - mus[k - 1]))
    return value, "ok", relapse


def ref_boundaries(cells, threshold, seed_idx=None, dims=DIMS):
    rows = []
    for key, (mus, errs) in cells.items():
        e = errs if seed_idx is None else errs[:, seed_idx]
        with warnings.catch_warnings():   # "Mean of empty slice": a ||mu|| without any seed, NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(e, axis=1)
        mu_star, state, relapse = ref_crossing(mus, mean, threshold)
        rows.append(dict(label=key[0], **dict(zip(dims, key[1:])), mu_star=mu_star, status=state,
                         relapse_mu=relapse))
    return pd.DataFrame(rows)


def ref_fit_slopes(bnd, dims=DIMS):
    rows = []
    for dim in dims:
        others = [x for x in dims if x != dim]
        if (bnd[dim] <= 0).any():
            continue
        for key, g in bnd.groupby(["label", *others], sort=True):
            if g[dim].nunique() < 3:
                continue
            ok = g[np.isfinite(g.mu_star) & (g.mu_star > 0)]
            for name, shift in ((dim, 0), ("P-1", 1)) if dim == "P" else ((dim, 0),):
                slope = intercept = float("nan")
                if ok[dim].nunique() >= 3:
                    slope, intercept = np.polyfit(np.log(ok[dim].astype(float) - shift), np.log(ok.mu_star), 1)
                rows.append(dict(label=key[0], dim=name, **dict(zip(others, key[1:])), slope=float(slope),
                                 intercept=float(intercept), points=int(len(ok)), cells=int(len(g))))
    return pd.DataFrame(rows)


def random_cells(rng):
    """Cells of every kind on ragged ||mu|| grids (1 to 20 points, some starting at ||mu|| = 0): crossing, never
    benign, benign everywhere, relapsing; errors on a 0.02 lattice (the threshold 0.14 is on it: seed means tie with
    it and with each other), missing seeds (NaN) and ||mu|| values without any seed."""
    grid = np.geomspace(0.1, 10, 30)
    cells = {}
    for label in ("sgd", "sam"):
        for d in (100, 200, 400, 800):
            for n in (10, 20, 40):
                for P in (2, 3, 4):
                    if rng.random() < 0.15:   # a missing cell: some fits have fewer than 3 values left
                        continue
                    m = int(rng.choice([1, 2, 3, 6, 12, 20, 20, 20]))
                    mus = np.sort(rng.choice(grid, m, replace=False))
                    if m > 1 and rng.random() < 0.3:
                        mus[0] = 0.0
                    mu_c = 0.4 * (d / 100) ** 0.25 * (20 / n) ** 0.25 * P / 2 * np.exp(0.1 * rng.standard_normal())
                    curve = P_FLIP + 0.4 / (1 + (mus / mu_c) ** 4)
                    kind = rng.choice(["crossing", "never", "everywhere", "relapse"], p=[0.7, 0.1, 0.1, 0.1])
                    if kind == "never":
                        curve = curve + 0.3
                    elif kind == "everywhere":
                        curve = np.full(m, P_FLIP)
                    elif kind == "relapse":
                        curve[-max(1, m // 4):] = 0.45
                    errs = np.clip(np.round((curve[:, None] + 0.04 * rng.standard_normal((m, SEEDS))) / 0.02) * 0.02,
                                   0, 1)
                    errs[rng.random((m, SEEDS)) < 0.1] = np.nan
                    if rng.random() < 0.1:
                        errs[rng.integers(m)] = np.nan
                    cells[(label, d, n, P, 1.0)] = (mus, errs)
    return cells


THRESHOLD = P_FLIP + 0.1 * (0.5 - P_FLIP)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crossing_and_boundaries_are_the_reference_bit_for_bit(seed):
    cells = random_cells(np.random.default_rng(seed))
    for idx in (None, *leave_one_out(SEEDS)):
        ref = ref_boundaries(cells, THRESHOLD, idx)
        pd.testing.assert_frame_equal(boundaries(cells, THRESHOLD, idx), ref, check_exact=True)
    statuses = set(ref.status)
    assert statuses == {"ok", "never_benign", "benign_everywhere"} and ref.relapse_mu.notna().any()
    for mus, errs in cells.values():   # the curves of single seeds: exact ties of neighbours and with the threshold
        for s in range(SEEDS):
            got, want = crossing(mus, errs[:, s], THRESHOLD), ref_crossing(mus, errs[:, s], THRESHOLD)
            assert got[1] == want[1] and np.array_equal(got[::2], want[::2], equal_nan=True)
    linear = (np.array([0.0, 1.0]), np.array([0.3, 0.1]), 0.2)   # from ||mu|| = 0: linear interpolation
    assert crossing(*linear)[:2] == ref_crossing(*linear)[:2] and abs(crossing(*linear)[0] - 0.5) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampled_boundaries_are_every_resample_of_the_reference(seed, monkeypatch):
    cells = random_cells(np.random.default_rng(seed))
    draws = leave_one_out(SEEDS)
    want = np.stack([ref_boundaries(cells, THRESHOLD, idx).mu_star.to_numpy() for idx in draws], axis=1)
    np.testing.assert_array_equal(resampled_boundaries(cells, THRESHOLD, draws), want)   # NaN where NaN, else equal
    monkeypatch.setattr(verify, "BLOCK", 100)   # cells in many small blocks: the same numbers
    np.testing.assert_array_equal(resampled_boundaries(cells, THRESHOLD, draws), want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fits_match_np_polyfit_on_every_resample(seed):
    cells = random_cells(np.random.default_rng(seed))
    draws = leave_one_out(SEEDS)
    bnd = ref_boundaries(cells, THRESHOLD)
    new, ref = fit_slopes(bnd), ref_fit_slopes(bnd)
    assert list(new.columns) == list(ref.columns) and len(ref) > 20 and ref.slope.notna().sum() > 5
    keys = [c for c in ref.columns if c not in ("slope", "intercept")]
    pd.testing.assert_frame_equal(new[keys], ref[keys], check_exact=True)
    for col in ("slope", "intercept"):
        np.testing.assert_allclose(new[col], ref[col], rtol=1e-9, atol=1e-12)
    boot = resampled_slopes(bnd, resampled_boundaries(cells, THRESHOLD, draws))
    want = np.stack([ref_fit_slopes(ref_boundaries(cells, THRESHOLD, idx)).slope.to_numpy() for idx in draws], 1)
    assert boot.shape == want.shape and np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_allclose(boot, want, rtol=1e-9, atol=1e-12)   # NaN exactly where np.polyfit had no fit


def ref_jackknife(point, replicates):
    """The jackknife-t interval by its textbook formula (NaN when a replicate is not finite)."""
    r = np.asarray(replicates, dtype=float)
    S = len(r)
    if not np.isfinite(point) or not np.isfinite(r).all():
        return point, np.nan, np.nan
    se = np.sqrt((S - 1) / S * ((r - r.mean()) ** 2).sum())
    half = stats.t.ppf(0.975, S - 1) * se
    return point, point - half, point + half


@pytest.mark.slow
def test_verify_table_intervals_are_the_per_replicate_reference():
    """The exploratory slopes of verify (every located cell) and their jackknife intervals from the old loop:
    boundaries and fit_slopes per leave-one-seed-out replicate, the rows of a fit picked out of their concatenation
    by its keys, and the textbook jackknife-t formula."""
    rng = np.random.default_rng(5)
    cells = random_cells(rng)
    # a NaN is a missing run (a ||mu|| without any run leaves the cell's grid), or a diverged one (scored 0.5)
    # where it would take a seed out of the cell
    rows = [dict(label=key[0], optimizer=key[0], **dict(zip(DIMS, key[1:])), mu_norm=mu, seed=s, flip_p=P_FLIP,
                 test_error=errs[i, s], diverged=bool(np.isnan(errs[i, s])), train_loss=0.0)
            for key, (mus, errs) in cells.items() for i, mu in enumerate(mus) for s in range(SEEDS)
            if np.isfinite(errs[i, s]) or np.isnan(errs[:, s]).all()]
    df = pd.DataFrame(rows)
    spec = SweepSpec.from_dict({"name": "ragged", "seeds": SEEDS,
                                "grid": {"d": [100, 200, 400, 800], "n": [10, 20, 40], "P": [2, 3, 4],
                                         "mu_norm": [0.5, 2.0]},
                                "optimizers": [{"label": "sgd"}, {"label": "sam", "optimizer": "sam"}],
                                "base": {"epochs": 1}})
    report = verify_table(df, spec)
    table = cell_arrays(df, spec.cell_dims)
    threshold = spec.benign_threshold(P_FLIP)
    fits = ref_fit_slopes(ref_boundaries(table, threshold))
    loo = pd.concat([ref_fit_slopes(ref_boundaries(table, threshold, idx)).assign(rep=b)
                     for b, idx in enumerate(leave_one_out(SEEDS))], ignore_index=True)
    explore = [c for c in report["claims"] if c["scope"] == "all cells"]
    checks = {(c["variant"], c["dim"], tuple(c["fixed"].items())): c for c in explore}
    assert len(checks) == len(fits) == len(explore) > 40
    finite = 0
    for _, row in fits.iterrows():
        match = loo
        for k in ["label", "dim", *DIMS]:
            if k in row and not pd.isna(row[k]):
                match = match[match[k] == row[k]]
        assert len(match) == SEEDS
        want = ref_jackknife(row.slope, match.sort_values("rep").slope.to_numpy())
        fixed = tuple((k, row[k]) for k in DIMS if k != row.dim and not (row.dim == "P-1" and k == "P"))
        c = checks[(row.label, row.dim, fixed)]
        assert (c["located"], c["cells"], c["seeds"]) == (row.points, row.cells, SEEDS)
        np.testing.assert_allclose([c["estimate"], c["ci_low"], c["ci_high"]], want, rtol=1e-9, atol=1e-12)
        finite += bool(np.isfinite(want[1]))
    assert 5 <= finite < len(fits)   # some fits lose a point without one seed: no interval


def ref_cell_arrays(df, dims=DIMS):
    """cell_arrays as it was: one pivot_table per cell."""
    df = df.assign(_err=verify.scored_error(df))
    out = {}
    for key, g in df.groupby(["label", *dims], sort=True):
        table = g.pivot_table(index="mu_norm", columns="seed", values="_err", aggfunc="first").sort_index()
        out[key] = (table.index.to_numpy(dtype=float), table.to_numpy(dtype=float))
    return out


def _same_cells(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key][0].dtype == b[key][0].dtype and np.array_equal(a[key][0], b[key][0]), key
        assert a[key][1].shape == b[key][1].shape and np.array_equal(a[key][1], b[key][1], equal_nan=True), key


RESULTS = Path(__file__).resolve().parents[1] / "figures" / "results"


@pytest.mark.parametrize("name", sorted(p.parent.name for p in RESULTS.glob("*/results.parquet")))
def test_cell_arrays_equal_a_pivot_per_cell_on_every_committed_table(name):
    spec = SweepSpec.from_dict(json.loads((RESULTS / name / "results.json").read_text())["spec"], expand=False)
    root = RESULTS / name
    df = pd.read_parquet(root / "results.parquet")
    _same_cells(cell_arrays(df, spec.cell_dims), ref_cell_arrays(df, spec.cell_dims))


def test_cell_arrays_equal_a_pivot_per_cell_with_gaps_duplicates_and_nan():
    """A seed missing from one cell, a ||mu|| whose every error is NaN, a duplicated (||mu||, seed) whose first
    error is NaN, diverged runs, and a cell with a single dimension value."""
    rng = np.random.default_rng(0)
    rows = [dict(label=lab, d=d, n=20, P=2, sigma_p=1.0, mu_norm=mu, seed=s, test_error=rng.random(),
                 diverged=bool(rng.random() < 0.1), flip_p=0.1)
            for lab in ("sam", "sgd") for d in (50, 100) for mu in (0.5, 1.0, 2.0) for s in range(4)]
    df = pd.DataFrame(rows)
    df = df[~((df.label == "sgd") & (df.d == 100) & (df.seed == 2))]            # a seed this cell lacks
    df.loc[(df.label == "sam") & (df.d == 50) & (df.mu_norm == 1.0), "test_error"] = np.nan
    df.loc[(df.label == "sam") & (df.d == 50) & (df.mu_norm == 1.0), "diverged"] = False   # NaN, not diverged
    dup = df.iloc[[0]].assign(test_error=0.25)
    df = pd.concat([df.iloc[[0]].assign(test_error=np.nan, diverged=False), df.iloc[1:], dup], ignore_index=True)
    for dims in (DIMS, ("d",)):
        _same_cells(cell_arrays(df, dims), ref_cell_arrays(df, dims))


@pytest.mark.slow
def test_report_slope_table_equals_fitting_replicate_by_replicate():
    """reports.lr_schedules.slope_table (every leave-one-seed-out fit at once) against the loop it replaced:
    boundaries and fit_slopes per replicate, and the textbook jackknife-t formula, on the committed lr_schedules
    table; a slope difference's replicates leave the same seed out of both slopes."""
    from theory_sim.reports.lr_schedules import SCHEDULES, slope_table

    root = RESULTS / "lr_schedules"
    spec = SweepSpec.from_dict(json.loads((root / "results.json").read_text())["spec"], expand=False)
    r = pd.read_parquet(root / "results.parquet")
    labels = [o.label for o in spec.optimizers]
    against = {f"{rule}{s}": rule for rule in ("sgd", "sam") for s in SCHEDULES if s}
    table, bnd = slope_table(r, spec, labels, against)
    dims, cells = spec.cell_dims, cell_arrays(r, spec.cell_dims)
    threshold = spec.benign_threshold(float(r.flip_p.mean()))

    def slopes(idx):
        f = fit_slopes(boundaries(cells, threshold, idx, dims), dims)
        f = f[f.dim == "d"].set_index("label").slope
        return {lab: float(f.get(lab, np.nan)) for lab in labels}

    loo = pd.DataFrame([slopes(idx) for idx in leave_one_out(r.seed.nunique())])
    point = slopes(None)
    assert np.isfinite(table.ci_low).sum() >= 6
    for row in table.itertuples():
        want = ref_jackknife(point[row.label], loo[row.label])
        np.testing.assert_allclose([row.slope, row.ci_low, row.ci_high], want, rtol=1e-9, atol=1e-12)
        if isinstance(row.reference, str):
            want = ref_jackknife(point[row.label] - point[row.reference], loo[row.label] - loo[row.reference])
            np.testing.assert_allclose([row.delta, row.delta_low, row.delta_high], want, rtol=1e-9, atol=1e-12)
    pd.testing.assert_frame_equal(bnd, boundaries(cells, threshold, None, dims))
