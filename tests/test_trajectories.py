"""The trajectory claims of verify (docs/science.md §6): recovered from synthetic tables with known laws, injected
violations flagged, sweep trajectories equal simulate's, and a sweep killed with SIGKILL leaves no worker behind."""
import os
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from theory_sim.cli import main
from theory_sim.sweeps.runner import run_sweep
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.store import TRAJECTORY_COLUMNS
from theory_sim.sweeps.trajectory_claims import isotonic_decreasing, trajectory_claims
from theory_sim.sweeps.verify import verify

ROOT = Path(__file__).resolve().parent.parent


def synthetic(exponents=(2.0, -1.0, 1.0, -2.0), constant=1.1, amp_slope=0.5, noise=0.01, seeds=4, growth=0.0,
              sam_noise_active=0.2):
    """Results and trajectory tables that obey the laws with the given ratio-law exponents (||mu||, d, n, sigma_p)
    and constant, a SAM amplification 3 (d/200)^amp_slope, SGD test errors that are a function of
    x = n mu^4 / (d sigma_p^4) alone, rhobar_max growing as log t after fitting (``growth`` = k > 0: as t^k, with a
    scale that differs from run to run), and the invariants."""
    rng = np.random.default_rng(0)
    spec = SweepSpec.from_dict({"name": "synthetic", "seeds": seeds, "base": {"epochs": 10, "n_test": 0,
                                "n_mc": 200}, "grid": {"d": [200, 800, 3200], "mu_norm": [0.25, 0.5, 1.0],
                                "n": [20, 40], "sigma_p": [0.5, 1.0]},
                                "optimizers": [{"label": "sgd", "optimizer": "sgd"},
                                               {"label": "sam", "optimizer": "sam", "sam_steps": 40}]})
    p, B = 0.1, 5
    a_mu, a_d, a_n, a_s = exponents
    results, traj = [], []
    for label, d, mu, n, sp, seed in product(("sgd", "sam"), (200, 800, 3200), (0.25, 0.5, 1.0), (20, 40),
                                             (0.5, 1.0), range(seeds)):
        H = n // B
        x = n * mu ** 4 / (d * sp ** 4)
        err = 0.1 + 0.4 / (1 + x) if label == "sgd" else 0.1
        results.append(dict(label=label, optimizer=label, d=d, mu_norm=mu, n=n, P=2, sigma_p=sp, seed=seed,
                            flip_p=p, p_hat=p, batch_size=B, sam_steps=40.0 if label == "sam" else np.nan,
                            dtype="float64", m=10, sigma_0=0.001, eta=0.01, c_tau=1.0, model="c23", depth=2,
                            lr_schedule="constant", norm="2", m_sharpness=0,
                            test_error=err + 0.001 * rng.standard_normal(), diverged=False, train_acc=1.0))
        law = constant * (1 - 2 * p) * mu ** a_mu * d ** a_d * n ** a_n * sp ** a_s
        amp = 3.0 * (d / 200) ** amp_slope if label == "sam" else 1.0
        scale = 1 + 0.2 * rng.random()
        for step in range(0, 10 * H + 1, H):
            rho = 0.01 * step * (1 + noise * rng.standard_normal())
            rmax = 1.0 + scale * (np.log(max(step, 1)) if growth == 0 else max(step, 1) ** growth)
            traj.append(dict(label=label, d=d, mu_norm=mu, n=n, P=2, sigma_p=sp, seed=seed, step=step,
                             epoch=step / H, run=0, optimizer=label, train_loss=0.5 if step < 2 * H else 0.05, train_acc=float(step >= 2 * H),
                             test_error=err, update_noise_active_frac=sam_noise_active if label == "sam" else 0.4,
                             gamma_mean=amp * law * rho * (1 + noise * rng.standard_normal()), rhobar_mean=rho,
                             gamma_max=1.0, rhobar_max=rmax, rhounder_min=-0.1 * rmax, rhobar_min=0.0,
                             rhounder_max=0.0, noise_active_frac=0.4, rho_monotone_violations=0.0, chunk=0))
    traj = pd.DataFrame(traj)
    assert set(TRAJECTORY_COLUMNS) <= set(traj.columns)
    return spec, pd.DataFrame(results), traj


def claims_of(spec, results, traj):
    return pd.DataFrame(trajectory_claims(traj, results, spec)["claims"])


def line(c, claim, variant=None, dim=None):
    """The one claim line of ``claim`` (for ``variant`` / ``dim`` when given)."""
    sel = c[(c.claim == claim) & (c.verdict != "exploratory")]
    if variant is not None:
        sel = sel[sel.variant == variant]
    if dim is not None:
        sel = sel[sel.dim == dim]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_recovers_known_ratio_law_amplification_collapse_and_late_phase():
    spec, results, traj = synthetic()
    c = claims_of(spec, results, traj)
    for dim, want in {"mu_norm": 2.0, "d": -1.0, "n": 1.0, "sigma_p": -2.0}.items():
        s = line(c, "ratio_law_exponents", dim=dim)
        assert s.estimate == pytest.approx(want, abs=0.02) and s.ci_low <= s.estimate <= s.ci_high
        assert s.verdict == "consistent" and s.seeds == 4
    const = c[c.claim == "ratio_law_constant"]
    assert len(const) == 1                        # one pooled estimate, not one check per cell
    assert const.estimate.iloc[0] == pytest.approx(1.1, rel=0.02) and const.verdict.iloc[0] == "consistent"
    assert "groups sharing data draws" in const.heterogeneity.iloc[0]
    amp = c[(c.claim == "sam_amplification") & (c.dim == "log-log slope in d")].iloc[0]
    assert amp.estimate == pytest.approx(0.5, abs=0.02) and amp.verdict == "exploratory"
    low = line(c, "sam_amplification", "sam vs sgd")
    assert low.verdict == "consistent" and low.estimate == pytest.approx(3.0, rel=0.05)
    collapse = line(c, "collapse")
    assert collapse.verdict == "consistent" and collapse.estimate < 0.2
    late = line(c, "late_log_growth")
    assert late.estimate == pytest.approx(0.0, abs=1e-9) and late.verdict == "consistent"
    noise = line(c, "noise_switched_off")
    assert noise.verdict == "consistent" and noise.estimate == pytest.approx(-0.2)
    assert line(c, "late_rhounder_small").estimate == pytest.approx(0.1)
    inv = c[c.claim == "invariants"]
    assert (inv.estimate == 0).all() and (inv.verdict == "consistent").all() and len(inv) == 2


def test_wrong_exponent_and_wrong_constant_are_contradicted():
    spec, results, traj = synthetic(exponents=(2.0, -0.5, 1.0, -2.0), constant=1.6)
    c = claims_of(spec, results, traj)
    d = line(c, "ratio_law_exponents", dim="d")
    assert d.estimate == pytest.approx(-0.5, abs=0.02) and d.verdict == "contradicted"
    assert line(c, "ratio_law_constant").verdict == "contradicted"


def test_the_constant_uses_each_runs_realised_flip_fraction():
    """The law's (1 - 2p) with p-hat: runs whose realised flip fraction is 0.2 instead of 0.1 have (1 - 2p) 0.6,
    not 0.8; the constant stays 1 with p-hat and comes out 0.75 with the nominal p."""
    spec, results, traj = synthetic(constant=0.75)
    results["p_hat"] = 0.2
    assert line(claims_of(spec, results, traj), "ratio_law_constant").estimate == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("k", [0.1, 0.3, 0.5])
def test_power_growth_is_told_apart_from_log_growth(k):
    """rhobar_max ~ t^k after fitting: the Box-Cox exponent recovers k and the claim is contradicted."""
    spec, results, traj = synthetic(growth=k)
    late = line(claims_of(spec, results, traj), "late_log_growth")
    assert late.estimate == pytest.approx(k, abs=0.01) and late.verdict == "contradicted"


def test_noise_active_fraction_and_ratio_constant_are_judged_on_their_intervals():
    spec, results, traj = synthetic(sam_noise_active=0.45)      # SAM's fraction above SGD's 0.4
    assert line(claims_of(spec, results, traj), "noise_switched_off").verdict == "contradicted"
    spec, results, traj = synthetic(constant=1.2, noise=0.3)    # a point estimate inside the band, a wide interval
    const = line(claims_of(spec, results, traj), "ratio_law_constant")
    assert 0.8 <= const.estimate <= 1.25
    assert const.verdict == ("consistent" if 0.8 <= const.ci_low and const.ci_high <= 1.25 else "inconclusive")


def test_weak_amplification_and_no_collapse_are_contradicted():
    spec, results, traj = synthetic(amp_slope=0.0)
    traj.loc[traj.label == "sam", "gamma_mean"] /= 3.0 / 1.5   # SAM's ratio only 1.5x SGD's
    results.loc[results.label == "sgd", "test_error"] = 0.1 + 0.4 / (1 + results.mu_norm ** 4)  # ||mu|| alone
    c = claims_of(spec, results, traj)
    low = line(c, "sam_amplification", "sam vs sgd")
    assert low.estimate == pytest.approx(1.5, rel=0.05) and low.verdict == "contradicted"
    assert line(c, "collapse").verdict == "contradicted"


def test_cells_outside_the_domain_are_left_out_and_said_so():
    spec, results, traj = synthetic()
    results["sigma_0"] = 0.2                       # init scale 0.2 * 2 * sigma_p sqrt(d) >= 2.8: outside small_init
    c = claims_of(spec, results, traj)
    assert line(c, "ratio_law_constant").verdict == "not applicable"
    assert line(c, "collapse").verdict == "not applicable"
    results["sigma_0"] = 0.001
    results.loc[results.d == 3200, "sigma_0"] = 0.2    # only d = 3200 outside: the exponents without it
    c = claims_of(spec, results, traj)
    s = line(c, "ratio_law_exponents", dim="d")
    assert s.cells_in_domain == 2 * 3 * 2 * 2 and s.verdict == "consistent"


@pytest.mark.parametrize("inject", ["decrease", "sign", "entry"])
def test_injected_invariant_violation_is_flagged(inject):
    spec, results, traj = synthetic(seeds=2)
    row = traj.index[(traj.label == "sgd") & (traj.step > 20)][5]
    if inject == "decrease":   # rhobar went down between logged steps
        traj.loc[row, "rhobar_mean"] = traj.loc[row - 1, "rhobar_mean"] * 0.5
    elif inject == "sign":     # a rhounder entry became positive
        traj.loc[row, "rhounder_max"] = 1e-3
    else:                      # the trainer counted an entry moving the wrong way
        traj.loc[row, "rho_monotone_violations"] = 1.0
    inv = line(claims_of(spec, results, traj), "invariants", "sgd")
    assert inv.estimate >= 1 and inv.verdict == "contradicted"


def test_isotonic_fit_is_the_least_squares_decreasing_fit():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([5.0, 3.0, 4.0, 1.0, 2.0])
    fit = isotonic_decreasing(x, y)
    assert np.all(np.diff(fit) <= 0)
    assert fit == pytest.approx([5.0, 3.5, 3.5, 1.5, 1.5])
    rng = np.random.default_rng(1)   # no other decreasing sequence has a smaller squared error
    for _ in range(200):
        other = np.sort(rng.uniform(0, 6, 5))[::-1]
        assert ((y - fit) ** 2).sum() <= ((y - other) ** 2).sum() + 1e-12


@pytest.fixture
def traj_sweep(tiny_sweep):
    """The tiny sweep at d = 60, ||mu|| = 1, 2 for 6 epochs, SAM for 5 steps, logging the test error (float64)."""
    return tiny_sweep(name="traj", chunk_runs=8,
                      base={"epochs": 6, "n_mc": 300, "trajectory_mc": 300, "dtype": "float64"},
                      grid={"d": {"values": [60]}, "mu_norm": {"values": [1.0, 2.0]}},
                      optimizers=[{"label": "sgd", "optimizer": "sgd"},
                                  {"label": "sam", "optimizer": "sam", "sam_steps": 5}])


def test_sweep_trajectory_rows_equal_simulate(traj_sweep, tmp_path):
    spec_path = tmp_path / "traj.toml"
    spec_path.write_text(traj_sweep)
    spec = SweepSpec.from_toml(spec_path)
    run_sweep(spec, tmp_path / "sweep", progress=False)
    traj = pd.read_parquet(tmp_path / "sweep" / "trajectories.parquet")
    steps = set(traj.step)
    assert {0, 2, 5, 12} <= steps    # step 0, the end of epoch 1 (n/B = 2), the SAM->SGD switch, the last step
    for opt in ("sgd", "sam"):
        out = tmp_path / f"sim_{opt}"
        sam = ["--sam-steps", "5"] if opt == "sam" else []
        assert main(["simulate", "--optimizer", opt, "--d", "60", "--mu-norm", "2", "--n", "8", "--batch-size", "4",
                     "--epochs", "6", *sam, "--n-test", "0", "--n-mc", "300", "--seeds", "2", "--log-points", "30",
                     "--trajectory-mc", "300", "--no-progress", "--out", str(out)]) == 0
        sim = pd.read_parquet(out / "trajectory.parquet")
        mine = traj[(traj.label == opt) & (traj.mu_norm == 2.0)]
        cols = [c for c in sim.columns if c not in ("run",)]
        merged = mine.merge(sim[cols], on=["seed", "step"], suffixes=("", "_sim"))
        assert merged.test_error.notna().all()
        assert len(merged) == len(sim) == len(mine)
        for col in cols:
            if col in ("seed", "step"):
                continue
            a, b = merged[col], merged[f"{col}_sim"]
            if a.dtype.kind in "fc":
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=col)
            else:
                assert (a == b).all(), col


def test_sweep_verify_reports_every_trajectory_claim(traj_sweep, tmp_path):
    spec_path = tmp_path / "traj.toml"
    spec_path.write_text(traj_sweep.replace("values = [60]", "values = [40, 80]"))
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "s"), "--executor", "inline", "--no-progress"]) == 0
    report = (tmp_path / "s" / "verify.md").read_text()
    for claim in ("ratio_law_exponents", "ratio_law_constant", "sam_amplification", "collapse", "invariants",
                  "late_"):
        assert claim in report
    figs = {p.name for p in (tmp_path / "s" / "figures").glob("*.png")}
    assert {"ratio_law.png", "sam_amplification.png", "collapse.png"} <= figs
    assert any(name.startswith("trajectories_") for name in figs)
    assert main(["figures", str(tmp_path / "s"), "--cell", "d=80,mu_norm=1"]) == 0
    assert (tmp_path / "s" / "figures" / "trajectories_d80_n8_P2_sigma_p1_mu_norm1.png").exists()


def test_sweep_from_before_trajectories_still_verifies(tmp_path):
    """A committed results directory (no trajectories.parquet): boundary checks run, trajectory checks say why not."""
    import shutil

    src = ROOT / "figures" / "results" / "phase_diagram_quick"
    shutil.copytree(src, tmp_path / "old")
    report = verify(tmp_path / "old")
    assert {c["claim"] for c in report["claims"]} <= {"sgd_boundary_slope", "sam_boundary_slope", "sam_below_sgd",
                                                       "slope_outside_domain"}
    assert "trajectory claims not run" in report["summary_line"] if "summary_line" in report else True
    assert "ratio_law_constant" in report["markdown"] and "re-run the sweep" in report["markdown"]
    assert "not run" in report["markdown"].splitlines()[2]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the workers")
@pytest.mark.slow
def test_sigkill_of_the_sweep_parent_leaves_no_worker(traj_sweep, tmp_path):
    spec_path = tmp_path / "slow.toml"
    spec_path.write_text(traj_sweep.replace("epochs = 6", "epochs = 400").replace("values = [60]",
                                                                                  "values = [400, 800]")
                         .replace("seeds = 2", "seeds = 4").replace("chunk_runs = 8", "chunk_runs = 4"))
    cmd = [sys.executable, "-m", "theory_sim", "sweep", str(spec_path), "--out", str(tmp_path / "k"),
           "--workers", "2", "--no-figures"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        workers = [c for c in _children(proc.pid)
                   if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="ignore")]
        time.sleep(0.1)
    assert workers, "the sweep never started its workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "pool workers outlived their killed parent"


def test_cell_seed_arrays_of_one_table_share_their_cells():
    """A value that is NaN in every seed of a cell (a growth exponent no run could fit) keeps that cell's row, so
    the arrays of one table line up (a late-phase table once failed on exactly this)."""
    from theory_sim.sweeps.trajectory_claims import cell_seed_array
    runs = pd.DataFrame({"d": [100, 100, 400, 400], "mu_norm": [1.0, 1.0, 1.0, 1.0], "seed": [0, 1, 0, 1],
                         "a": [1.0, 2.0, 3.0, 4.0], "b": [np.nan, np.nan, 5.0, 6.0]})
    cells_a, A = cell_seed_array(runs, "a", [0, 1], ["d", "mu_norm"])
    cells_b, B = cell_seed_array(runs, "b", [0, 1], ["d", "mu_norm"])
    assert cells_a.equals(cells_b) and A.shape == B.shape == (2, 2)
    assert np.isnan(B[0]).all() and list(B[1]) == [5.0, 6.0] and list(A[0]) == [1.0, 2.0]
