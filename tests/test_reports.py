"""The study reports' verdicts are computed from their tables: censored cells, sentences that follow the data."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tau_table(edge_cell=True, seeds=4) -> pd.DataFrame:
    """Best c_tau = 1 in every cell (tau* ~ d^-1/2 exactly); with ``edge_cell`` one cell is flat up to the grid's
    largest c_tau (its best range reaches the edge: censored)."""
    rows = []
    for d in (200, 800, 3200):
        for mu in (1.0, 2.0):
            for c in np.geomspace(0.01, 100, 9):
                if edge_cell and d == 3200 and mu == 2.0:
                    err = max(0.1, 0.3 - 0.1 * np.log10(c / 0.01))
                else:
                    err = 0.1 + 0.1 * abs(np.log10(c))
                for s in range(seeds):
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


def family_table(shift: dict, seeds=6, seed=0) -> pd.DataFrame:
    """Test errors 0.3 + shift[label] + a seed effect shared by every rule + run noise, at d in {800, 3200, 6400}."""
    rng = np.random.default_rng(seed)
    rows = []
    effect = rng.normal(0, 0.05, (3, 4, seeds))
    optimizer = {"msam2": "msam", "msam5": "msam", "1-sam": "sam"}
    for label, dz in shift.items():
        for i, d in enumerate((800, 3200, 6400)):
            for j, mu in enumerate((0.5, 1.0, 2.0, 4.0)):
                for s in range(seeds):
                    rows.append(dict(label=label, optimizer=optimizer.get(label, label), d=d, mu_norm=mu, n=20, P=2,
                                     sigma_p=1.0, seed=s, flip_p=0.1, diverged=False,
                                     test_error=0.3 + dz + effect[i, j, s] + 0.003 * rng.standard_normal()))
    return pd.DataFrame(rows)


def test_sam_family_verdicts_follow_the_table():
    """The Rand-SAM sentence is computed: a table where Rand-SAM equals SAM (both better than SGD) gives the
    [T24] agreement; one where Rand-SAM equals SGD gives the disagreement, in those words."""
    from theory_sim.reports import sam_family as report

    like_t24 = family_table({"sgd": 0.0, "sam": -0.05, "randsam": -0.05, "msam2": -0.06, "msam5": 0.02})
    text = " ".join(report.verdicts(report.comparisons(like_t24, n_boot=500)))
    assert "Rand-SAM vs SAM at d >= 3200: " in text
    assert "test error (indistinguishable, 48 pairs); vs SGD: -0.05" in text
    assert "This agrees with [T24]" in text and "disagrees" not in text.split("Multi-step")[0]
    assert "holds at K = 5 but not at K = 2, which is better than SAM" in text
    like_sgd = family_table({"sgd": 0.0, "sam": -0.05, "randsam": 0.0, "msam2": 0.03, "msam5": 0.02})
    text = " ".join(report.verdicts(report.comparisons(like_sgd, n_boot=500)))
    assert "The theory model disagrees with [T24]'s real-network finding" in text
    assert "Rand-SAM is worse than SAM and indistinguishable from SGD" in text
    assert "holds at K = 2 and K = 5" in text
    assert "+0.050 [" in text                                  # the measured difference, with its interval


def test_gallery_checks_fill_the_readme_from_verify_summaries(tmp_path):
    gallery = load("gallery_checks")
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "demo_verify.md").write_text("# verify: demo\n\n**Summary:** 3 of 4 checks hold; failing: sgd boundary "
                                            "slope in d [n=20]. (Every row below ...)\n")
    readme = tmp_path / "README.md"
    readme.write_text("| demo | headline; checks that fail: <!-- checks:demo -->old text<!-- /checks --> |\n")
    import sys

    argv, sys.argv = sys.argv, ["gallery_checks", "--readme", str(readme), "--figures", str(figures)]
    try:
        gallery.main()
    finally:
        sys.argv = argv
    text = readme.read_text()
    assert "old text" not in text
    assert "3 of 4 checks hold; failing: sgd boundary slope in d [n=20].<!-- /checks -->" in text


def test_exact_maximiser_verdict_follows_the_numbers():
    """issue 24 item 8: msam_ascent's verdict on "a more exact maximiser generalises worse" states the correlation
    with its interval and share of variance (r^2, by hand) and counts the rules that contradict it; a positive
    interval alone no longer makes it "true"."""
    from theory_sim.reports.sam_questions import exact_maximiser_verdict, variance_share

    assert variance_share(0.086, 0.234) == (0.086 ** 2, 0.234 ** 2)
    assert variance_share(-0.3, 0.1) == (0.0, 0.09)          # an interval through 0: r^2 from 0
    assert np.allclose(variance_share(-0.4, -0.2), (0.04, 0.16))
    weak = " ".join(exact_maximiser_verdict(0.159, 0.086, 0.234, ["msam2_tau2", "msam3_tau"], 11))
    assert "is not supported as stated on this model" in weak and "is supported on this model" not in weak
    assert "r = +0.159 [+0.086, +0.234] explains r^2 = 2.5% of the within-cell variance of test error [0.7%, 5.5%]" \
        in weak
    assert "2 of 11 multi-step rules reach a higher perturbed-loss gain than SAM" in weak
    assert "(msam2_tau2, msam3_tau)" in weak
    clean = " ".join(exact_maximiser_verdict(0.8, 0.7, 0.9, [], 11))       # no rule contradicts it: supported
    assert "is supported on this model" in clean and "0 of 11" in clean and "(none)" in clean
    assert "is false on this model" in " ".join(exact_maximiser_verdict(-0.5, -0.6, -0.4, [], 11))
    assert "is not shown on this model" in " ".join(exact_maximiser_verdict(0.05, -0.02, 0.12, [], 11))


def test_deep_phase_depth2_note_reads_the_largest_d():
    """issue 24 item 10: deep_phase's report states depth 2's ratio-law constants at its largest d (from verify's
    claims, not other depths or smaller d) and points to the seed-set reproduction; no such claims, no note."""
    from theory_sim.reports.deep_phase import depth2_ratio_note

    def row(d, depth, mu, value, lo, hi, claim="ratio_law_constant"):
        return dict(claim=claim, variant="sgd", measured=value, ci_low=lo, ci_high=hi,
                    dimension=f"d={d}, n=20, P=2, sigma_p=1, depth={depth}, mu_norm={mu}")

    claims = [row(6400, 2, 0.25, 1.27, 1.12, 1.48), row(6400, 2, 1.13, 1.24, 1.09, 1.44),
              row(1600, 2, 0.25, 1.12, 0.95, 1.35), row(6400, 3, 0.25, 1.19, 1.02, 1.34),
              row(6400, 2, 0.25, 9.0, 9.0, 9.0, claim="ratio_law_slope")]
    text = " ".join(depth2_ratio_note(claims))
    assert "At d = 6400, depth 2's ratio-law constant is 1.24-1.27 over its 2 early-phase cells" in text
    assert "(intervals within [1.09, 1.48]" in text and "python studies/ratio_law_seeds.py" in text
    assert depth2_ratio_note([row(6400, 3, 0.25, 1.19, 1.02, 1.34)]) == []
