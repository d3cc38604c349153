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


# ---------------------------------------------------------------------------------------------------------------------
# The first hour: --version, --help of every verb, sweep-status, figures options
# ---------------------------------------------------------------------------------------------------------------------
def verb_parsers():
    """Every verb's parser, built the way ``python -m theory_sim VERB`` builds it."""
    import argparse

    from theory_sim.cli import VERBS, build_parser

    for verb in VERBS:
        sub = next(a for a in build_parser(verb)._actions if isinstance(a, argparse._SubParsersAction))
        yield verb, sub.choices[verb]


def options_without_help(parser) -> list[str]:
    return [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not (a.help and a.help.strip())]


def test_version(capsys):
    from theory_sim import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"theory_sim {__version__}"


def test_every_option_of_every_verb_has_help():
    import argparse

    assert {verb: options_without_help(p) for verb, p in verb_parsers()} == {verb: [] for verb, _ in verb_parsers()}
    bare = argparse.ArgumentParser()
    bare.add_argument("--undocumented", type=int)
    assert options_without_help(bare) == ["--undocumented"]  # the check sees a missing help text


def test_help_shows_defaults(capsys):
    texts = {verb: " ".join(p.format_help().split()) for verb, p in verb_parsers()}
    assert "--timeout-min TIMEOUT_MIN submitit: Slurm time limit per chunk job (default 60)" in texts["sweep"]
    assert "(default: only on a terminal)" in texts["sweep"] and "(default: only on a terminal)" in texts["simulate"]
    # options left at None take their value from the config: shown from SimConfig / CifarConfig
    assert "--d D dimension of every patch (>= 1) (default with --preset c23: 800)" in texts["simulate"]
    assert "--lr LR peak learning rate (cosine schedule) (default: 0.1)" in texts["cifar"]
    assert "--trace-samples TRACE_SAMPLES Hutchinson probes for the Hessian trace (default: 64)" in texts["sharpness"]
    assert "(default: None)" not in " ".join(texts.values())  # nothing to show is not shown
    with pytest.raises(SystemExit):
        main(["figures", "--help"])
    assert "--format {png,pdf,svg}" in capsys.readouterr().out


@pytest.fixture
def cli_sweep(tiny_sweep):
    """The tiny sweep, SGD only, on d = 40, 160 and ||mu|| = 1, 2 (float64)."""
    return tiny_sweep(base={"n_mc": 300, "dtype": "float64"},
                      grid={"d": {"values": [40, 160]}, "mu_norm": {"values": [1.0, 2.0]}},
                      optimizers=[{"label": "sgd", "optimizer": "sgd"}])


def test_sweep_status_idle_unless_a_process_computes(cli_sweep, tmp_path, capsys):
    import os

    from theory_sim.sweeps.spec import SweepSpec
    from theory_sim.sweeps.store import prepare, shard_path

    (tmp_path / "tiny.toml").write_text(cli_sweep)
    out = tmp_path / "s"
    prepare(SweepSpec.from_toml(tmp_path / "tiny.toml"), out)  # spec.json only: nothing computed, nothing running
    assert main(["sweep-status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0/2 chunks" in text and "idle (re-run the sweep command" in text and "ETA" not in text
    lock = shard_path(out, 1, "lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(), "time": 0}))
    assert main(["sweep-status", str(out)]) == 0  # a live process holds chunk 1
    text = capsys.readouterr().out
    assert "running, ETA" in text and "1 chunks computing" in text
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": __import__("socket").gethostname(), "time": 0}))
    assert main(["sweep-status", str(out)]) == 0  # its process died: a stale lock is not a running sweep
    assert "idle" in capsys.readouterr().out


def test_figures_cell_format_dpi_and_no_empty_panel(cli_sweep, tmp_path, capsys, monkeypatch):
    """A sweep (trajectory_mc = 0: no logged test error): ``figures --cell`` off the grid is one error line listing
    the valid values, before any figure is drawn; ``--format svg --dpi`` writes every figure as SVG; the per-cell
    trajectory figure has no (empty) test-error panel."""
    import theory_sim.cnn.plotting as plotting

    (tmp_path / "tiny.toml").write_text(cli_sweep)
    out = tmp_path / "s"
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--out", str(out), "--executor", "inline", "--no-progress",
                 "--no-figures"]) == 0
    capsys.readouterr()
    assert main(["figures", str(out), "--cell", "d=100,mu_norm=2"]) == 2
    err = capsys.readouterr().err
    assert err == "error: cell d=100 is not on the grid (valid: 40, 160)\n"
    assert not (out / "figures").exists()
    titles = []
    real = plotting.save_figure
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, dpi: (
        titles.extend(ax.get_title() for ax in fig.axes if ax.axison), real(fig, path, dpi=dpi)))
    assert main(["figures", str(out), "--cell", "d=160,mu_norm=1", "--format", "svg", "--dpi", "50"]) == 0
    written = sorted(p.name for p in (out / "figures").iterdir())
    assert "phase_diagram.svg" in written and "trajectories_d160_n8_P2_sigma_p1_mu_norm1.svg" in written
    assert all(name.endswith(".svg") for name in written)
    assert (out / "figures" / "phase_diagram.svg").read_text().lstrip().startswith("<?xml")
    assert "training loss" in titles and not any(t.startswith("test error") for t in titles)
    assert main(["figures", str(out), "--dpi", "0"]) == 2 and "dpi must be" in capsys.readouterr().err


def test_phase_figure_layout_many_variants_and_two_explicit_d():
    """Seven variants wrap into two pairs of rows of four columns (not a one-row strip); two explicit d values a
    factor 4 apart are drawn on a log axis (linear cell edges would start at d = -200), two close ones are not."""
    import numpy as np

    from theory_sim.sweeps.figures import _phase_panels, log_axis
    from theory_sim.sweeps.spec import Axis

    labels = [f"v{k}" for k in range(7)]
    grids = {lab: np.full((3, 2), 0.2) for lab in labels}
    fig, tops, bottoms = _phase_panels(grids, labels, np.arange(3.0), np.arange(4.0), 0.14, 0.2)
    assert len(tops) == len(bottoms) == 8 and fig.get_size_inches()[0] <= 4 * 4.6 + 1e-9
    assert len({round(ax.get_position().y0, 3) for ax in tops}) == 2  # the error panels sit in two rows
    fig, tops, _ = _phase_panels({k: grids[k] for k in labels[:2]}, labels[:2], np.arange(3.0), np.arange(4.0),
                                 0.14, 0.2)
    assert len(tops) == 3 and len({round(ax.get_position().y0, 3) for ax in tops}) == 1  # as before: one row
    assert log_axis(Axis.from_toml("d", {"values": [400, 1600]}))
    assert not log_axis(Axis.from_toml("d", {"values": [400, 500]}))
    assert not log_axis(Axis.from_toml("flip_p", {"values": [0.0, 0.2]}))
