"""The verdicts' statistics, tested as estimators: interval coverage measured by simulation against a known truth,
the one verdict rule, the late-phase growth test on exact curves, and p-hat against the data generator."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from theory_sim.claims import CLAIMS, DOMAIN, claim_row, verdict
from theory_sim.cnn.data import generate
from theory_sim.cnn.labels import flip_fractions
from theory_sim.intervals import (Interval, jackknife, jackknife_interval, leave_one_out, mean_interval,
                                  seeds_to_decide)
from theory_sim.sweeps.trajectory_claims import boxcox_exponent
from theory_sim.sweeps.verify import _fit, _fits, resampled_boundaries


def test_jackknife_of_a_mean_is_the_t_interval():
    rng = np.random.default_rng(0)
    for S in (2, 4, 9):
        x = rng.normal(size=S)
        jk = jackknife(lambda idx: {"m": x[idx].mean()}, S)["m"]
        t = stats.t.interval(0.95, S - 1, loc=x.mean(), scale=stats.sem(x))
        mi = mean_interval(x)
        assert np.allclose([jk.low, jk.high], t, rtol=1e-12) and np.allclose([mi.low, mi.high], t, rtol=1e-12)
        assert jk.units == mi.units == S


def test_a_statistic_undefined_without_one_seed_has_no_interval():
    assert not jackknife_interval(0.3, [0.2, np.nan, 0.4]).finite
    assert np.isnan(mean_interval([1.0]).low)
    assert leave_one_out(3).tolist() == [[1, 2], [0, 2], [0, 1]]


def test_one_verdict_rule_is_symmetric():
    iv = lambda lo, hi: Interval((lo + hi) / 2, lo, hi, (hi - lo) / 4, 8)  # noqa: E731
    assert verdict(iv(0.2, 0.3), (0.15, 0.35))[0] == "consistent"
    assert verdict(iv(0.4, 0.5), (0.15, 0.35))[0] == "contradicted"
    assert verdict(iv(-0.1, 0.0), (0.15, 0.35))[0] == "contradicted"
    word, more = verdict(iv(0.3, 0.45), (0.15, 0.35))
    assert word == "inconclusive" and more > 8
    # a wider interval around the same estimate is never more consistent and never more contradicted
    assert verdict(iv(0.1, 0.4), (0.15, 0.35))[0] == "inconclusive"
    assert verdict(iv(0.2, 0.3), None)[0] == "exploratory"
    nan = Interval(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    assert verdict(nan, (0, 1))[0] == "inconclusive"   # no estimate in the domain: undecided, not a failure
    assert claim_row(CLAIMS["collapse"], "sgd", nan, None, applicable=False)["verdict"] == "not applicable"
    assert verdict(iv(2.5, 3.5), (2.0, np.inf))[0] == "consistent"   # one-sided regions
    assert verdict(iv(-0.3, -0.1), (-np.inf, 0.0))[0] == "consistent"


def test_seeds_to_decide_shrinks_the_interval_off_the_edge():
    iv = mean_interval(np.array([0.30, 0.42, 0.38, 0.47]))   # straddles 0.35
    S = seeds_to_decide(iv, (0.15, 0.35))
    spread = iv.se * np.sqrt(iv.units)
    half = stats.t.ppf(0.975, S - 1) * spread / np.sqrt(S)
    assert half < iv.estimate - 0.35 <= stats.t.ppf(0.975, S - 2) * spread / np.sqrt(S - 1)
    assert seeds_to_decide(Interval(0.35, 0.3, 0.4, 0.02, 4), (0.15, 0.35)) is None   # on the edge


def _synthetic_sweep(rng, S, ds, mus, slope=0.25, width=0.35, seed_sd=0.15, cell_sd=0.1, mc_sd=0.01):
    """Per-seed error curves p + (0.5 - p) sigmoid((log mu*(d) + shifts - log mu) / width): a seed effect shared
    by every cell (the cells of a seed are correlated), a cell-and-seed effect and Monte-Carlo noise."""
    u = rng.normal(0, seed_sd, S)
    v = rng.normal(0, cell_sd, (len(ds), S))
    c = slope * np.log(ds)[:, None, None] + u + v[:, None, :] - np.log(mus)[None, :, None] - 0.5
    err = 0.1 + 0.4 / (1 + np.exp(-c / width)) + rng.normal(0, mc_sd, c.shape)
    return {("sgd", d, 20, 2, 1.0): (mus, err[i]) for i, d in enumerate(ds)}


def _slope_fit(ds):
    bnd = pd.DataFrame([dict(label="sgd", d=d, n=20, P=2, sigma_p=1.0) for d in ds])
    return next(f for f in _fits(bnd, ("d", "n", "P", "sigma_p")) if f.fields["dim"] == "d")


@pytest.mark.slow
@pytest.mark.parametrize("S", [4, 8, 16])
def test_boundary_slope_interval_covers_95_percent(S):
    """verify's slope interval (jackknife-t over seeds through resampled_boundaries) on synthetic sweeps: the truth
    is the slope the same estimator gives on 20,000 seeds; nominal 95% must cover 93-97% of 2000 sweeps."""
    ds, mus = np.geomspace(100, 12800, 8), np.geomspace(0.25, 16, 25)
    fit = _slope_fit(ds)
    slope = lambda cells, draws: _fit(fit, resampled_boundaries(cells, 0.14, draws))[0]  # noqa: E731
    rng = np.random.default_rng(S)
    truth = slope(_synthetic_sweep(rng, 20000, ds, mus), np.arange(20000)[None])[0]
    assert abs(truth - 0.25) < 0.01
    hits = total = 0
    loo = leave_one_out(S)
    for _ in range(2000):
        cells = _synthetic_sweep(rng, S, ds, mus)
        iv = jackknife_interval(slope(cells, np.arange(S)[None])[0], slope(cells, loo))
        if iv.finite:
            total += 1
            hits += iv.low <= truth <= iv.high
    assert total >= 1900
    assert 0.93 <= hits / total <= 0.97, hits / total


@pytest.mark.slow
@pytest.mark.parametrize("S", [4, 8, 16])
def test_paired_difference_interval_covers_95_percent(S):
    """The t-interval of a paired difference pooled over correlated cells (seed = unit), with skewed per-run
    errors: coverage of the true mean difference within 93-97% over 4000 simulated sweeps."""
    from theory_sim.sweeps.paired import paired_differences

    rng = np.random.default_rng(100 + S)
    truth, hits, reps = -0.02, 0, 4000
    cells = 6
    for _ in range(reps):
        shared = rng.gamma(4.0, 0.01, (1, S)) - 0.04          # a seed's draw, shared by every cell (skewed, mean 0)
        base = 0.3 + rng.normal(0, 0.02, (cells, S)) + shared
        diff = truth + rng.normal(0, 0.01, (cells, S)) + 0.5 * shared   # E[diff] = truth
        rows = [dict(label=lab, d=100 * (c + 1), mu_norm=1.0, n=20, P=2, sigma_p=1.0, seed=s, test_error=e,
                     diverged=False, optimizer=lab)
                for c in range(cells) for s in range(S)
                for lab, e in (("sgd", base[c, s]), ("var", base[c, s] + diff[c, s]))]
        t = paired_differences(pd.DataFrame(rows), baselines=("sgd",))
        row = t[(t.scope == "pooled") & (t.label == "var")].iloc[0]
        hits += row.ci_low <= truth <= row.ci_high
    assert 0.93 <= hits / reps <= 0.97, hits / reps


def test_log_growth_test_accepts_log_and_rejects_powers():
    """docs/science.md §6.6: rhobar ~ (1/a) log(t + t0) has exponent k = 0; t^0.1 and t^0.3 have 0.1 and 0.3, and
    the claim's tolerance 0.05 tells them apart (the old growth exponent gave 0.20 on log(t + 20))."""
    t = np.unique(np.round(np.geomspace(4, 400, 30)))
    tol = CLAIMS["late_log_growth"].extra["tolerance"]
    for t0 in (0.0, 5.0, 20.0, 80.0):
        assert abs(boxcox_exponent(t, 3.0 + 2.0 * np.log(t + t0))) <= tol / 2
    assert abs(boxcox_exponent(t, 1 + 0.7 * t ** 0.1) - 0.1) < 0.011
    assert abs(boxcox_exponent(t, 1 + 0.2 * t ** 0.3) - 0.3) < 0.011
    # with seed noise the verdict over seeds: log accepted, t^0.1 and t^0.3 rejected
    rng = np.random.default_rng(0)
    for curve, expected in ((lambda s: 2 * np.log(t + 10 + s), "consistent"),
                            (lambda s: (t + s) ** 0.1 * 3, "contradicted"),
                            (lambda s: (t + s) ** 0.3, "contradicted")):
        ks = np.array([boxcox_exponent(t, curve(rng.uniform(0, 3)) + rng.normal(0, 1e-3, len(t)))
                       for _ in range(8)])
        assert verdict(mean_interval(ks), (-tol, tol))[0] == expected, (expected, ks)


def test_flip_fraction_replays_the_generators_labels():
    seeds, n, p = [3, 17, 123456789], 40, 0.2
    batch = generate(seeds, [1.0] * 3, [1.0] * 3, [p] * 3, d=8, n=n, P=2, dtype=torch.float64)
    flipped = (batch.y != batch.yhat).double().mean(1).numpy()
    assert np.array_equal(flip_fractions(seeds, n, p), flipped)
    assert not np.array_equal(flip_fractions(seeds, n, 0.4), flipped)


def test_domain_predicates_follow_their_formulas():
    cells = pd.DataFrame(dict(d=[3200, 3000, 12800], n=[20, 20, 20], m=[10, 10, 10], P=[2, 2, 2],
                              sigma_p=[1.0, 1.0, 2.0], sigma_0=[0.001, 0.01, 0.001], eta=[0.1, 0.1, 0.1],
                              batch_size=[5, 5, 5], c_tau=[1.0, 0.01, 100.0]))
    assert DOMAIN["dimension"](cells).tolist() == [True, False, True]          # 400 log(2000) = 3040
    assert DOMAIN["small_init"](cells).tolist() == [True, False, True]         # 0.11, 1.10, 0.45
    assert DOMAIN["small_step"](cells).tolist() == [True, True, False]         # 3.2, 3.0, 51.2
    assert DOMAIN["radius_scale"](cells).tolist() == [True, False, False]
    assert DOMAIN["two_layer"](cells).tolist() == [True, True, True]          # no depth column: the c23 network
    assert DOMAIN["two_layer"](cells.assign(depth=[2, 3, 4])).tolist() == [True, False, False]
    row = claim_row(CLAIMS["sgd_boundary_slope"], "sgd", Interval(0.3, 0.2, 0.4, 0.05, 8), (0.2, 0.3))
    assert row["verdict"] == "inconclusive" and row["source"].startswith("[K23]")
