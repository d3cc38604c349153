"""Paired rule-vs-rule differences find a known difference, contain 0 when there is none, and pairing matters."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from theory_sim.config import ConfigError
from theory_sim.sweeps.paired import baseline_labels, paired_differences
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.verify import verify_table

SEEDS = 8
DS = (100, 400, 1600)
MUS = (0.5, 1.0, 2.0, 4.0)


def table(shift: dict, seed_sd=0.08, run_sd=0.005, seed=0) -> pd.DataFrame:
    """Test errors err = 0.3 + shift[label] + seed effect (shared by every rule of a seed: the same data) + run
    noise. seed_sd >> run_sd: the seed effect is what pairing cancels."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, seed_sd, (len(DS), len(MUS), SEEDS))
    rows = []
    for label, dz in shift.items():
        opt = label.split("_")[0]
        for i, d in enumerate(DS):
            for j, mu in enumerate(MUS):
                for s in range(SEEDS):
                    rows.append(dict(label=label, optimizer=opt, d=d, mu_norm=mu, n=20, P=2, sigma_p=1.0, seed=s,
                                     flip_p=0.1, test_error=0.3 + dz + effect[i, j, s] + run_sd * rng.standard_normal(),
                                     diverged=False))
    return pd.DataFrame(rows)


def test_a_known_difference_is_found_per_cell_and_pooled():
    t = paired_differences(table({"sgd": 0.0, "sam": -0.05, "randsam": 0.0}))
    assert list(t.columns) == ["label", "baseline", "d", "n", "P", "sigma_p", "mu_norm", "scope", "mean_diff",
                               "ci_low", "ci_high", "seeds", "n_pairs", "verdict"]
    pooled = t[t.scope == "pooled"].set_index(["label", "baseline"])
    sam = pooled.loc[("sam", "sgd")]
    assert sam.mean_diff == pytest.approx(-0.05, abs=0.003) and sam.ci_high < 0 and sam.verdict == "better"
    assert sam.n_pairs == len(DS) * len(MUS) * SEEDS and sam.seeds == SEEDS
    assert pooled.loc[("sgd", "sam")].verdict == "worse"
    assert pooled.loc[("randsam", "sam")].verdict == "worse"
    cells = t[(t.scope == "cell") & (t.label == "sam") & (t.baseline == "sgd")]
    assert len(cells) == len(DS) * len(MUS) and (cells.verdict == "better").all() and (cells.n_pairs == SEEDS).all()
    assert ("sam", "sam") not in pooled.index and ("sgd", "sgd") not in pooled.index


def test_zero_difference_interval_contains_zero():
    t = paired_differences(table({"sgd": 0.0, "randsam": 0.0}))
    row = t[(t.scope == "pooled") & (t.label == "randsam")].iloc[0]
    assert row.ci_low < 0 < row.ci_high and row.verdict == "indistinguishable"
    assert abs(row.mean_diff) < 0.002
    cells = t[(t.scope == "cell") & (t.label == "randsam")]
    assert (cells.ci_low < 0).mean() > 0.8 and (cells.ci_high > 0).mean() > 0.8


def test_pairing_matters_with_correlated_seeds():
    """The seed effect (sd 0.08) is shared by both rules: the paired interval of a 0.01 shift is much narrower
    than an unpaired (Welch) t-interval of the two rules' seed means, which cannot even see the shift. The paired
    interval is scipy's one-sample t-interval of the per-seed mean differences (cells of a seed are one unit)."""
    df = table({"sgd": 0.0, "usam": 0.01})
    row = paired_differences(df, baselines=("sgd",)).query("scope == 'pooled'").iloc[0]
    assert row.verdict == "worse" and row.ci_low > 0 and row.seeds == SEEDS
    a = df[df.label == "usam"].groupby("seed").test_error.mean().to_numpy()
    b = df[df.label == "sgd"].groupby("seed").test_error.mean().to_numpy()
    want = stats.t.interval(0.95, SEEDS - 1, loc=(a - b).mean(), scale=stats.sem(a - b))
    np.testing.assert_allclose([row.ci_low, row.ci_high], want, rtol=1e-10)
    se = np.sqrt(a.var(ddof=1) / SEEDS + b.var(ddof=1) / SEEDS)
    dof = se ** 4 / ((a.var(ddof=1) / SEEDS) ** 2 / (SEEDS - 1) + (b.var(ddof=1) / SEEDS) ** 2 / (SEEDS - 1))
    lo, hi = a.mean() - b.mean() + np.array([-1, 1]) * stats.t.ppf(0.975, dof) * se
    assert lo < 0 < hi                                       # unpaired: indistinguishable
    assert (row.ci_high - row.ci_low) < 0.2 * (hi - lo)      # paired: over 5x narrower


def test_diverged_runs_score_chance_and_baselines_by_label_or_optimizer():
    df = table({"sgd": 0.0, "sam": 0.0, "sam_big": 0.0}, seed_sd=0.0, run_sd=0.0)
    df.loc[(df.label == "sam_big") & (df.seed == 0), ["diverged", "test_error"]] = [True, np.nan]
    t = paired_differences(df, baselines=("sgd",))
    row = t[(t.scope == "pooled") & (t.label == "sam_big")].iloc[0]
    assert row.mean_diff == pytest.approx((0.5 - 0.3) / SEEDS) and row.n_pairs == len(DS) * len(MUS) * SEEDS
    assert baseline_labels(df, ("sgd", "sam")) == ["sgd", "sam"]        # labels first
    assert baseline_labels(df.replace({"label": {"sam": "sam_small"}}), ("sam",)) == ["sam_small", "sam_big"]
    assert baseline_labels(df, ("msam",)) == []
    with pytest.raises(ConfigError, match="several runs"):
        paired_differences(df, cell_columns=["d"])


def test_verify_reports_paired_differences():
    df = table({"sgd": 0.0, "sam": -0.05})
    spec = SweepSpec.from_dict({"name": "synthetic", "seeds": SEEDS, "grid": {"d": list(DS), "mu_norm": list(MUS)},
                                "optimizers": [{"label": "sgd"}, {"label": "sam", "optimizer": "sam"}],
                                "base": {"epochs": 1}})
    report = verify_table(df, spec)
    rows = pd.DataFrame(report["paired_differences"])
    pooled = rows[(rows.scope == "pooled") & (rows.label == "sam") & (rows.baseline == "sgd")].iloc[0]
    assert pooled.verdict == "better"
    assert "| sam | sgd | -0.05" in report["markdown"] and "Paired test-error differences" in report["markdown"]
