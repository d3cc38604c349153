"""The simulate verb end to end, and parameter validation before any work."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from theory_sim.cli import main


@pytest.mark.slow
def test_simulate_writes_every_output(tmp_path):
    out = tmp_path / "run"
    rc = main(["simulate", "--optimizer", "sam", "--d", "60", "--epochs", "4", "--seeds", "2,5", "--sam-steps",
               "6", "--n-mc", "500", "--n-test", "200", "--out", str(out), "--no-progress"])
    assert rc == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["seeds"] == [2, 5] and meta["config"]["optimizer"] == "sam" and meta["config"]["sam_steps"] == 6
    assert "git_commit" in meta and "torch" in meta["versions"]
    s = pd.read_parquet(out / "summary.parquet")
    for col in ("d", "mu_norm", "n", "P", "sigma_p", "flip_p", "eta", "seed", "train_loss", "train_acc",
                "test_error", "test_error_heldout", "bayes_error", "steps", "diverged"):
        assert col in s.columns, col
    assert list(s.seed) == [2, 5] and (s.steps == 16).all()
    t = pd.read_parquet(out / "trajectory.parquet")
    for col in ("step", "seed", "train_loss", "test_error", "gamma_max", "rhobar_max", "rhounder_min",
                "noise_active_frac"):
        assert col in t.columns, col
    assert sorted(t.step.unique()) == list(range(17))
    assert (out / "trajectory.png").stat().st_size > 10_000
    assert (out / "final_state.pt").exists() and (out / "coefficients.npz").exists()


BAD = [
    (["--d", "0"], "d must"), (["--P", "1"], "P must"), (["--flip-p", "0.5"], "flip_p must"),
    (["--flip-p", "-0.1"], "flip_p must"), (["--sigma-p", "0"], "sigma_p must"), (["--batch-size", "3"], "batch_size"),
    (["--batch-size", "40"], "batch_size"), (["--epochs", "0"], "epochs must"), (["--eta", "0"], "eta must"),
    (["--mu-norm", "-1"], "mu_norm must"), (["--m", "0"], "m must"), (["--n", "0"], "n must"),
    (["--tau", "-1"], "tau must"), (["--c-tau", "-2"], "c_tau must"), (["--seeds", "x"], "seeds must"),
    (["--sigma-0", "0"], "sigma_0 must"), (["--log-every", "0"], "log_every must"), (["--n-mc", "5"], "n_mc must"),
    (["--sam-steps", "5"], "sam_steps only applies"), (["--optimizer", "sam", "--sam-steps", "-1"], "sam_steps must"),
    (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--d", "-5"], "must"),
]


@pytest.mark.parametrize("args,msg", BAD)
def test_bad_parameters_rejected_with_their_name(args, msg, tmp_path, capsys):
    rc = main(["simulate", *args, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()  # rejected before any work


@pytest.mark.slow
def test_module_entry_point_in_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "theory_sim", "simulate", "--P", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: P must be in [2, inf], got 1"
