"""The study reports: every verdict sentence is computed from its table (each test pairs a table where a sentence
says one thing with one where it says the other), intervals come from theory_sim.intervals (checked against
independent formulas), and every report opens with its claim lines."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from theory_sim.intervals import Interval

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ref_jackknife(point, replicates):
    r = np.asarray(replicates, dtype=float)
    S = len(r)
    half = stats.t.ppf(0.975, S - 1) * np.sqrt((S - 1) / S * ((r - r.mean()) ** 2).sum())
    return point, point - half, point + half


def rule_table(shift: dict, seeds=6, seed=0, ds=(800, 3200, 6400), mus=(0.5, 1.0, 2.0, 4.0), **extra):
    """Test errors 0.3 + shift[label] + a seed effect shared by every rule of a (cell, seed) + run noise."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 0.05, (len(ds), len(mus), seeds))
    optimizer = {"msam2": "msam", "msam5": "msam", "1-sam": "sam"}
    rows = []
    for label, dz in shift.items():
        for i, d in enumerate(ds):
            for j, mu in enumerate(mus):
                for s in range(seeds):
                    rows.append(dict(label=label, optimizer=optimizer.get(label, label.split("_")[0]), d=d,
                                     mu_norm=mu, n=20, P=2, sigma_p=1.0, seed=s, flip_p=0.1, diverged=False,
                                     test_error=0.3 + dz + effect[i, j, s] + 0.003 * rng.standard_normal(),
                                     **{k: v(label, s) for k, v in extra.items()}))
    return pd.DataFrame(rows)


# tau_sensitivity ----------------------------------------------------------------------------------------------------
def tau_table(edge_cell=True, seeds=4, jitter=0.0) -> pd.DataFrame:
    """Best c_tau = 1 in every cell (tau* ~ d^-1/2 exactly); with ``edge_cell`` one cell is flat up to the grid's
    largest c_tau (its best range reaches the edge: censored). ``jitter`` moves each seed's best c_tau."""
    rows = []
    rng = np.random.default_rng(0)
    for d in (200, 800, 3200):
        for mu in (1.0, 2.0):
            shift = rng.normal(0, jitter, seeds)
            for c in np.geomspace(0.01, 100, 9):
                for s in range(seeds):
                    if edge_cell and d == 3200 and mu == 2.0:
                        err = max(0.1, 0.3 - 0.1 * np.log10(c / 0.01))
                    else:
                        err = 0.1 + 0.1 * abs(np.log10(c) - shift[s] * np.log10(d))
                    rows.append(dict(d=d, mu_norm=mu, c_tau=c, seed=s, err=err, tau_effective=c / np.sqrt(d)))
    return pd.DataFrame(rows)


def test_tau_report_censors_cells_at_the_grid_edge():
    from theory_sim.reports import tau_sensitivity as report

    r = tau_table()
    slope, used, censored = report.best_tau_slope(r, range(4))
    assert censored == [(3200, 2.0)] and used == 5 and abs(slope + 0.5) < 1e-9
    biased, used_all, _ = report.best_tau_slope(r, range(4), censor=False)
    assert used_all == 6 and biased > -0.4           # the edge cell pulls the fit: what defect 3 was
    clean = report.best_tau_slope(tau_table(edge_cell=False), range(4))
    assert clean[2] == [] and abs(clean[0] + 0.5) < 1e-9


def test_tau_slope_interval_is_the_seed_jackknife_and_its_sentence_follows_it():
    from theory_sim.reports import tau_sensitivity as report

    r = tau_table(edge_cell=False, seeds=5, jitter=0.3)
    iv, used, _ = report.slope_with_interval(r, censor=True)
    loo = [report.best_tau_slope(r, [s for s in range(5) if s != k])[0] for k in range(5)]
    np.testing.assert_allclose([iv.estimate, iv.low, iv.high],
                               ref_jackknife(report.best_tau_slope(r, range(5))[0], loo), rtol=1e-12)
    assert iv.high > iv.low
    text = report.slope_sentence(Interval(-0.5, -0.7, -0.3, 0.1, 5))
    assert text.startswith("contains -0.5") and "excludes 0" in text
    text = report.slope_sentence(Interval(-0.1, -0.2, 0.05, 0.1, 5))
    assert text.startswith("excludes -0.5") and "contains 0" in text


# sam_family ---------------------------------------------------------------------------------------------------------
def test_sam_family_sentences_follow_the_table():
    """A table where Rand-SAM equals SAM (both better than SGD) matches [T24]; one where Rand-SAM equals SGD does
    not, in those words; the multi-step sentence names the K whose interval lies above SAM's."""
    from theory_sim.reports import sam_family as report

    like_t24 = rule_table({"sgd": 0.0, "sam": -0.05, "randsam": -0.05, "msam2": -0.06, "msam5": 0.02})
    text = " ".join(report.sentences(report.comparisons(like_t24)))
    assert "Rand-SAM minus SAM at d >= 3200: " in text and "interval covers 0; minus SGD: -0.05" in text
    assert "The direction matches [T24]" in text and "does not show" not in text
    assert "interval lies above 0 (errs more than SAM) at K = 5." in text
    like_sgd = rule_table({"sgd": 0.0, "sam": -0.05, "randsam": 0.0, "msam2": 0.03, "msam5": 0.02})
    text = " ".join(report.sentences(report.comparisons(like_sgd)))
    assert "The theory model does not show [T24]'s WRN-28-10 / CIFAR pattern" in text
    assert "+0.050 [" in text                                  # the measured difference, with its interval
    assert "at K = 2, K = 5." in text
    assert "holds" not in text and "fails" not in text


# msam_step_size -----------------------------------------------------------------------------------------------------
def test_msam_step_size_sentence_follows_the_table():
    from theory_sim.reports import msam_step_size as report
    from theory_sim.sweeps.paired import paired_differences

    step = rule_table({"sam": 0.0, "msam5": 0.05, "msam5_step_tau5": -0.03})
    text = report.step_sentence(paired_differences(step, baselines=("sam",)))
    assert "step tau +0.049 [" in text and "is a step-size effect" in text
    no_loss = rule_table({"sam": 0.0, "msam5": -0.01, "msam5_step_tau5": -0.03})
    text = report.step_sentence(paired_differences(no_loss, baselines=("sam",)))
    assert "does not make K = 5 err more than SAM" in text and "step-size effect" not in text


# msam_ascent (issue 24 item 8) --------------------------------------------------------------------------------------
def test_msam_ascent_sentence_claims_no_more_than_the_numbers():
    """r = +0.16 with 8 of 11 counterexamples: a weak tendency, not the [T24] statement; a strong correlation
    without counterexamples supports it. r^2 and the count are stated either way."""
    from theory_sim.reports import msam_ascent as report

    weak = report.maximiser_sentence(Interval(0.159, 0.05, 0.27, 0.05, 4), [f"m{i}" for i in range(8)], 11, 9)
    assert "r = +0.159 [+0.050, +0.270]" in weak and "r^2 = 0.025 [0.003, 0.073]" in weak
    assert "3% of the test error" in weak
    assert "8 of 11 multi-step rules reach a higher gain than SAM and still err less" in weak
    assert "do not support" in weak and "goes with a higher test error" not in weak and "9 of 11 by the point" in weak
    strong = report.maximiser_sentence(Interval(0.8, 0.7, 0.9, 0.05, 4), [], 11)
    assert "0 of 11" in strong and "goes with a higher test error" in strong and "do not support" not in strong
    assert "no relation" in report.maximiser_sentence(Interval(0.1, -0.1, 0.3, 0.1, 4), [], 11)


def test_variance_share_is_the_interval_of_r_squared():
    from theory_sim.reports.msam_ascent import variance_share

    assert variance_share(0.086, 0.234) == (0.086 ** 2, 0.234 ** 2)
    assert variance_share(-0.3, 0.1) == (0.0, 0.09)          # an interval through 0: r^2 from 0
    assert np.allclose(variance_share(-0.4, -0.2), (0.04, 0.16))


def test_msam_ascent_counts_rules_that_reach_more_and_err_less():
    from theory_sim.reports import msam_ascent as report
    from theory_sim.reports.study_report import paired_on
    from theory_sim.sweeps.paired import paired_differences

    gain = {"sam": 0.2, "msam2": 0.25, "msam5": 0.3, "msam10": 0.3}
    shift = {"sam": 0.0, "msam2": -0.05, "msam5": 0.05, "msam10": -0.0}
    df = rule_table(shift, gain=lambda lab, s: gain[lab] + 0.001 * s)
    errors = paired_differences(df, baselines=("sam",))
    gains = paired_on(df, "gain", ("sam",), ["d", "mu_norm", "n", "P", "sigma_p"])
    assert report.higher_gain_lower_error(errors, gains, ["msam2", "msam5", "msam10"]) == ["msam2"]
    points = report.higher_gain_lower_error(errors, gains, ["msam2", "msam5", "msam10"], clear=False)
    assert points[0] == "msam2" and "msam5" not in points


# randsam_radius -----------------------------------------------------------------------------------------------------
def test_randsam_sentence_follows_the_table():
    from theory_sim.reports import randsam_radius as report
    from theory_sim.sweeps.paired import paired_differences

    c_of = {"randsam_c1": 1.0, "randsam_c16": 16.0}
    like_t24 = rule_table({"sgd": 0.0, "sam": -0.05, "randsam_c1": 0.0, "randsam_c16": -0.05})
    text = report.t24_sentence(paired_differences(like_t24, baselines=("sgd", "sam")), list(c_of), c_of)
    assert "same pattern at c_tau = 16 " in text
    unlike = rule_table({"sgd": 0.0, "sam": -0.05, "randsam_c1": 0.0, "randsam_c16": 0.03})
    text = report.t24_sentence(paired_differences(unlike, baselines=("sgd", "sam")), list(c_of), c_of)
    assert "No radius shows [T24]'s pattern" in text and "(c_tau = 1) minus SAM: +0.050" in text


# deep_phase ---------------------------------------------------------------------------------------------------------
def test_deep_phase_sentence_follows_the_intervals():
    from theory_sim.reports import deep_phase as report

    row = lambda lo, hi: dict(mean_diff=(lo + hi) / 2, ci_low=lo, ci_high=hi)  # noqa: E731
    text = report.depth_sentence({2.0: row(-0.1, -0.02), 3.0: row(-0.05, 0.01), 4.0: row(0.01, 0.04)})
    assert "below 0 (SAM errs less) at depth 2;" in text and "covering 0 at depth 3;" in text
    assert "above 0 at depth 4." in text
    text = report.depth_sentence({2.0: row(-0.1, -0.02), 3.0: row(-0.1, -0.01), 4.0: row(-0.2, -0.1)})
    assert "at depth 2, 3, 4;" in text and "covering 0 at depth none" in text


def test_deep_phase_depth2_note_reads_the_ratio_law_claim():
    """issue 24 item 10: the report states depth 2's pooled ratio-law constant from verify's claim line and points to
    the seed-set reproduction; without that claim (no trajectories), no note."""
    from theory_sim.reports.deep_phase import depth2_ratio_note

    claim = dict(claim="ratio_law_constant", scope="in domain", variant="sgd", estimate=1.21, ci_low=1.05,
                 ci_high=1.37, cells_in_domain=9, heterogeneity="per-group constants 1.1-1.3")
    text = " ".join(depth2_ratio_note([claim, dict(claim, claim="collapse", estimate=9.0)], 4))
    assert "constant is 1.21 [1.05, 1.37] over 9 in-domain cells" in text and "seeds 0-3 here" in text
    assert "python studies/ratio_law_seeds.py" in text
    assert depth2_ratio_note([dict(claim, estimate=float("nan"))], 4) == []
    assert depth2_ratio_note([dict(claim, claim="collapse")], 4) == []


# lr_schedules -------------------------------------------------------------------------------------------------------
def test_lr_schedule_slope_sentence_follows_the_interval():
    from theory_sim.reports import lr_schedules as report

    def row(lo, hi):
        return pd.Series(dict(slope=0.3, ci_low=0.2, ci_high=0.4, delta=(lo + hi) / 2, delta_low=lo, delta_high=hi))

    assert report.slope_sentence(row(0.05, 0.1)).endswith("interval above 0 (steeper)")
    assert report.slope_sentence(row(-0.05, 0.1)).endswith("interval covers 0")


# sam_family_sharpness -----------------------------------------------------------------------------------------------
def test_sharpness_sentence_follows_the_paired_lambda():
    from theory_sim.reports import sam_family_sharpness as report
    from theory_sim.reports.study_report import paired_on

    def runs(msam5_shift):
        lam = {"sam": 0.05, "msam2": 0.06, "msam5": 0.05 + msam5_shift}
        df = rule_table({k: 0.0 for k in lam}, seeds=5, ds=(800,), mus=tuple(report.MUS),
                        lambda_1=lambda lab, s: lam[lab] + 0.001 * s)
        return paired_on(df, "lambda_1", ("sam",), ["mu_norm"])

    assert "Only msam2 ends sharper than SAM" in report.sharpness_sentence(runs(0.0))
    assert "Every multi-step rule ends sharper than SAM" in report.sharpness_sentence(runs(0.02))


# digits_sam_family --------------------------------------------------------------------------------------------------
def digits_table(sam_minus_sgd_pp: float, seeds=5) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    acc = {"sgd": 0.95, "sam": 0.95 + sam_minus_sgd_pp / 100, "randsam": 0.95, "msam2": 0.95, "msam5": 0.95}
    for p in (0.0, 0.2):
        effect = rng.normal(0, 0.01, seeds)
        for lab, a in acc.items():
            for s in range(seeds):
                rows.append(dict(label=lab, label_noise=p, seed=s, test_acc=a + effect[s] + 0.0005 * rng.random(),
                                 lambda_1=5 + rng.random(), trace=60 + rng.random()))
    return pd.DataFrame(rows)


def test_digits_verdicts_use_the_t_interval_and_the_verdict_rule():
    from theory_sim.reports import digits_sam_family as report

    def sam_sgd(table):
        return [r for r in report.verdicts(table) if r["claim"] == "SAM above SGD" and r["fixed"]["label noise"] == 0]

    above = sam_sgd(digits_table(2.0))[0]
    t = digits_table(2.0).assign(pp=lambda x: 100 * x.test_acc).query("label_noise == 0").set_index(["label", "seed"])
    diff = (t.pp.loc["sam"] - t.pp.loc["sgd"]).to_numpy()
    want = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    np.testing.assert_allclose([above["ci_low"], above["ci_high"]], want, rtol=1e-10)
    assert above["verdict"] == "consistent"
    assert sam_sgd(digits_table(-2.0))[0]["verdict"] == "contradicted"
    lines = report.claim_lines(report.verdicts(digits_table(-2.0)))
    assert lines[0].startswith("**Claims ([T24] on digits):**") and "contradicted" in lines[0]
    assert any("| SAM above SGD | sam - sgd (test_acc_pp) (label noise 0) |" in ln for ln in lines)


# shared pieces ------------------------------------------------------------------------------------------------------
def test_correlation_is_the_seed_jackknife_of_pearson_and_spearman():
    from theory_sim.reports.study_report import correlation

    rng = np.random.default_rng(3)
    seeds = np.repeat(np.arange(6), 10)
    x = rng.standard_normal(60)
    y = 0.6 * x + rng.standard_normal(60)
    for rank, fn in ((False, lambda a, b: stats.pearsonr(a, b)[0]), (True, lambda a, b: stats.spearmanr(a, b)[0])):
        got = correlation(x, y, seeds, rank=rank)
        loo = [fn(x[seeds != k], y[seeds != k]) for k in range(6)]
        np.testing.assert_allclose([got.estimate, got.low, got.high], ref_jackknife(fn(x, y), loo), rtol=1e-10)
        assert got.low > 0
    none = correlation(x, rng.standard_normal(60), seeds)
    assert none.low < 0 < none.high


def test_claim_lines_open_with_verify_summary(tmp_path):
    from theory_sim.reports.study_report import claim_lines

    assert "not computed" in claim_lines(tmp_path)[0]
    claim = dict(claim="sam_below_sgd", source="[C23]", kind="theorem", variant="sam vs sgd", scope="in domain",
                 dim="d", fixed={"n": 20}, estimate=0.8, ci_low=0.1, ci_high=1.5, se=0.2, seeds=4,
                 region=[0.0, float("inf")], verdict="consistent", seeds_to_decide=None, cells_in_domain=3, cells=3)
    summary = {"counts": {"consistent": 1}, "lines": [dict(claim="sam_below_sgd", variant="sam vs sgd", dim="d",
                                                           fixed={"n": 20}, verdict="consistent")], "not_run": []}
    (tmp_path / "verify.json").write_text(json.dumps({"claims": [claim], "summary": summary}))
    lines = claim_lines(tmp_path)
    assert lines[0].endswith("claims: 1 consistent.")
    assert any(ln.startswith("| sam_below_sgd | sam vs sgd in d (n=20) | [C23] | 3/3 | 0.8 [0.1, 1.5] | > 0 | "
                             "consistent |") for ln in lines)


def test_gallery_checks_fill_the_readme_from_verify_summaries(tmp_path):
    gallery = load("gallery_checks")
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "demo_verify.md").write_text("# verify: demo\n\n**Verdicts:** claims: 2 consistent, 1 contradicted; "
                                            "contradicted: sgd_boundary_slope (sgd, d).\n\nBenign rule: ...\n")
    readme = tmp_path / "README.md"
    readme.write_text("| demo | headline; checks: <!-- checks:demo -->old text<!-- /checks --> |\n")
    import sys

    argv, sys.argv = sys.argv, ["gallery_checks", "--readme", str(readme), "--figures", str(figures)]
    try:
        gallery.main()
    finally:
        sys.argv = argv
    text = readme.read_text()
    assert "old text" not in text
    assert "claims: 2 consistent, 1 contradicted; contradicted: sgd_boundary_slope (sgd, d).<!-- /checks -->" in text


REPORTS = [("msam_step_size", "sam_questions_report", ["msam_step_size"]),
           ("lr_schedules", "sam_questions_report", ["lr_schedules"]),
           ("msam_ascent", "sam_questions_report", ["msam_ascent"]),
           ("randsam_radius", "sam_questions_report", ["randsam_radius"]),
           ("sam_family_phase", "sam_family_report", [])]


@pytest.mark.slow
@pytest.mark.parametrize("name,script,args", REPORTS, ids=[r[0] for r in REPORTS])
def test_every_report_runs_on_its_committed_table_and_opens_with_its_claims(name, script, args, tmp_path):
    """On the committed table (no trajectories: those sections say so), with verify run first."""
    import shutil
    import sys

    from theory_sim.sweeps.verify import verify

    run = tmp_path / name
    shutil.copytree(ROOT / "figures" / "results" / name, run)
    verify(run)
    argv, sys.argv = sys.argv, [script, *args, str(run), "--gallery", str(tmp_path)]
    try:
        load(script).main()
    finally:
        sys.argv = argv
    text = (tmp_path / f"{name}.md").read_text()
    assert text.splitlines()[2].startswith("**Claims** (from `verify`") and "Exploratory" in text
    assert "bootstrap" not in text and "holds" not in text


@pytest.mark.slow
def test_dimfree_boundaries_recovers_known_local_slopes():
    """A synthetic table whose boundary is 2 (d/100)^(1/4) for SGD and flat at 3 for SAM: the in-domain tail slopes
    are consistent with the claims sgd_boundary_slope / sam_boundary_slope; swapping the laws makes both
    contradicted. The domain is the claim's in_domain (d >= n^2 log(10 n m) here); the tail's interval is the
    jackknife-t over leave-one-seed-out boundaries, checked against a direct refit on each seed subset (np.polyfit);
    a SAM variant with m-sharpness is no claim's (exploratory)."""
    from scipy import stats

    from theory_sim.reports.dimfree_boundaries import slopes
    from theory_sim.sweeps.spec import SweepSpec
    from theory_sim.sweeps.verify import boundaries, cell_arrays

    def table(sgd_slope, sam_slope, sam_extra=None):
        spec = SweepSpec.from_dict({
            "name": "t", "seeds": 6, "trajectories": False,
            "base": {"n": 10, "dimension_free": True, "init_scale": 0.02, "noise_step": 0.1},
            "grid": {"d": {"values": [int(10 ** e) for e in np.arange(2, 8.01, 1.0)]},
                     "mu_norm": {"start": 0.5, "stop": 200, "num": 60, "spacing": "log"}},
            "optimizers": [{"label": "sgd_regime", "optimizer": "sgd"},
                           {"label": "sam_regime", "optimizer": "sam", "c_tau": 1.0, **(sam_extra or {})}]})
        rows = []
        for key, cfg in spec.runs:
            star = (2.0 * (cfg.d / 100) ** sgd_slope if key[0].startswith("sgd") else 3.0 * (cfg.d / 100) ** sam_slope)
            rng = np.random.default_rng([cfg.seed, cfg.d, int(cfg.mu_norm * 1e6)])
            err = 0.1 + 0.35 / (1 + np.exp((np.log(cfg.mu_norm) - np.log(star)) / 0.1)) + 0.02 * rng.standard_normal()
            rows.append({"label": key[0], **cfg.to_dict(), "test_error": err, "diverged": False})
        return spec, pd.DataFrame(rows)

    h = np.log(200 / 0.5) / 59
    spec, df = table(0.25, 0.0)
    bnd, local, tail = slopes(df, spec, h)
    claimed = tail[tail.scope == "in domain"].set_index("variant")
    assert list(claimed.verdict) == ["consistent", "consistent"]
    assert list(claimed.claim) == ["sam_boundary_slope", "sgd_boundary_slope"]
    assert bnd[bnd.d == 100].in_domain.eq(False).all() and bnd[bnd.d >= 1000].in_domain.all()   # 100 < 100 log 1000
    assert np.allclose(local[local.variant == "sgd_regime"].estimate, 0.25, atol=0.03)
    assert (local[local.d_low == 100].verdict == "exploratory").all()   # a window with d = 100: outside the domain
    # the jackknife oracle: refit the tail on every leave-one-seed-out subset
    cells = cell_arrays(df, spec.cell_dims)
    far = bnd[(bnd.label == "sgd_regime") & (bnd.d >= 1e5)]
    reps = []
    for i in range(6):
        b = boundaries(cells, spec.benign_threshold(0.1), seed_idx=np.delete(np.arange(6), i), dims=spec.cell_dims)
        b = b.loc[far.index]
        reps.append(np.polyfit(np.log(b.d.astype(float)), np.log(b.mu_star), 1)[0])
    se = np.sqrt(5 / 6 * np.sum((np.array(reps) - np.mean(reps)) ** 2))
    row = claimed.loc["sgd_regime"]
    assert row.estimate == pytest.approx(np.polyfit(np.log(far.d.astype(float)), np.log(far.mu_star), 1)[0])
    assert row.ci_high - row.estimate == pytest.approx(stats.t.ppf(0.975, 5) * se, rel=1e-9)
    assert row.ci_high - row.estimate != pytest.approx(1.96 * se, rel=1e-3)   # the t quantile, not the normal one
    spec, df = table(0.0, 0.25)
    _, _, tail = slopes(df, spec, h)
    assert list(tail[tail.scope == "in domain"].verdict) == ["contradicted", "contradicted"]
    spec, df = table(0.25, 0.0, {"m_sharpness": 5})   # not [C23]'s SAM: no claim covers it
    _, _, tail = slopes(df, spec, h)
    sam = tail[tail.variant == "sam_regime"]
    assert set(sam.verdict) == {"exploratory"} and set(sam.claim) == {"slope_outside_domain"}
