"""Bad inputs refused up front, in one line, by one set of rules (issue 26 part B, issue 27 item 2).

Every case pairs a refused input with an accepted one (so a check that refuses everything fails too): file names
derived from user text stay inside their folder; sizes that would hang are refused before anything is expanded;
options without effect are refused alike by simulate, sweep specs, the Python API and cifar; errors that used to be
tracebacks (a write error in a pool worker, sharpness of a deep run, a missing device, a checkout named
theory_sim in the working directory) are one line or work.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import errno
import json
import multiprocessing as mp
import pickle
import subprocess
import sys
import tomllib
import types
from importlib.metadata import version as dist_version
from pathlib import Path

import pandas as pd
import pytest
import torch

from theory_sim.cli import main
from theory_sim.config import ConfigError, SimConfig, check_effective
from theory_sim.io import ResultWriteError
from theory_sim.sweeps.spec import SweepSpec
from test_faults import one_line

TINY = ["--d", "30", "--n", "4", "--batch-size", "2", "--epochs", "2", "--n-test", "0", "--n-mc", "200", "--seeds",
        "1", "--no-progress"]


def refused(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    line = one_line(capsys)
    assert line.startswith("error: ") and message in line, line


def spec_of(text: str) -> SweepSpec:
    return SweepSpec.from_dict(tomllib.loads(text))


def simulate_config(argv: list[str]) -> SimConfig:
    from theory_sim.cnn.simulate_verb import add_training_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_training_arguments(p)
    return config_from_args(p.parse_args(argv))


# ---- paths derived from user text ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../evil", "a/b", "/abs", ".hidden", "..", "x" * 101, "tab\tname"])
def test_a_spec_name_must_be_a_file_name_stem(faults_sweep, name):
    with pytest.raises(ConfigError, match="name must be a plain file-name stem"):
        spec_of(faults_sweep.replace('name = "faults"', f"name = {json.dumps(name)}"))
    assert spec_of(faults_sweep.replace('"faults"', '"phase_diagram.v2-b"')).name == "phase_diagram.v2-b"


def test_gallery_files_stay_inside_the_gallery(tmp_path):
    from theory_sim.sweeps.figures import check_gallery, gallery_path

    gallery = tmp_path / "g"
    assert gallery_path(gallery, "x_collapse.png") == gallery / "x_collapse.png"
    for name in ("../../evil_collapse.png", "../g2/x.png", "sub/x.png"):
        with pytest.raises(ConfigError, match="must stay inside"):
            gallery_path(gallery, name)
    check_gallery(gallery)                      # new: fine
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="gallery must be a directory"):
        check_gallery(tmp_path / "file")


# ---- sizes that would hang: refused before anything is expanded --------------------------------------------------------
def test_a_huge_grid_is_refused_before_it_is_expanded(faults_sweep):
    huge = faults_sweep.replace("num = 2", "num = 1000000000")
    with pytest.raises(ConfigError, match=r"grid.mu_norm.num must be in \[1, 1000000\]"):
        spec_of(huge)
    with pytest.raises(ConfigError, match="a sweep must hold at most 1,000,000 runs .* this spec holds 1,000,000,000"):
        spec_of(huge.replace("num = 1000000000", "num = 100000").replace("seeds = 1", "seeds = 5000"))
    assert len(spec_of(huge.replace("num = 1000000000", "num = 3")).runs) == 6


def test_sweep_workers_are_bounded(faults_sweep, tmp_path, capsys):
    from theory_sim.sweeps.runner import MAX_WORKERS

    spec = tmp_path / "s.toml"
    spec.write_text(faults_sweep)
    refused(capsys, ["sweep", str(spec), "--out", str(tmp_path / "o"), "--workers", "100000"],
            f"workers must be in [1, {MAX_WORKERS}]")
    assert not (tmp_path / "o").exists()


# ---- tracebacks ------------------------------------------------------------------------------------------------------
def _fail_to_write(path: str) -> None:
    raise ResultWriteError(path, OSError(errno.ENOSPC, "No space left on device"))


def test_a_write_error_in_a_pool_worker_reaches_the_parent_as_itself():
    """A disk-full error in a sweep's worker was rebuilt from OSError's (errno, strerror): a TypeError in the parent,
    BrokenProcessPool and 42 lines. It must arrive as the ResultWriteError it was."""
    err = pickle.loads(pickle.dumps(ResultWriteError("/x/chunk-00001.parquet", OSError(errno.ENOSPC, "No space"))))
    assert isinstance(err, ResultWriteError) and str(err) == "could not write /x/chunk-00001.parquet: No space"
    assert err.errno == errno.ENOSPC and err.path == Path("/x/chunk-00001.parquet")
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as pool:
        with pytest.raises(ResultWriteError, match="could not write /y/s.parquet: No space left on device"):
            pool.submit(_fail_to_write, "/y/s.parquet").result()


@pytest.mark.slow
def test_sharpness_of_a_deep_run(tmp_path):
    """sharpness on a --model deep run used the two-layer network (a shape mismatch); its loss must be the one the
    trainer reported for the run."""
    out = tmp_path / "deep"
    assert main(["simulate", *TINY, "--seeds", "2", "--model", "deep", "--depth", "3", "--width", "4",
                 "--optimizer", "sam", "--out", str(out)]) == 0
    assert main(["sharpness", str(out), "--k", "1", "--trace-samples", "4", "--avg-samples", "4",
                 "--max-steps", "2"]) == 0
    runs = json.loads((out / "sharpness.json").read_text())["runs"]
    summary = pd.read_parquet(out / "summary.parquet").set_index("seed")
    for row in runs:
        assert row["loss"] == pytest.approx(summary.train_loss[row["seed"]], rel=1e-10)
    assert runs[0]["loss"] != pytest.approx(runs[1]["loss"], rel=1e-6)   # two runs, not one read twice


def test_devices_this_machine_lacks_are_refused_up_front(tmp_path, capsys):
    refused(capsys, ["simulate", *TINY, "--device", "mps", "--out", str(tmp_path / "s")],
            "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'mps'")
    assert SimConfig(device="cpu").device == "cpu"
    cifar = ["cifar", "--dataset", "digits", "--n-train", "64", "--n-test", "32", "--batch-size", "32",
             "--depth", "10", "--width", "1", "--epochs", "1", "--out", str(tmp_path / "c")]
    if not torch.backends.mps.is_available():
        refused(capsys, [*cifar, "--device", "mps"], "'mps' requested but MPS is not available")
    if not torch.cuda.is_available():
        refused(capsys, [*cifar, "--device", "cuda"], "'cuda' requested but CUDA is not available")
    assert not (tmp_path / "c").exists()


def test_the_version_comes_from_the_installed_metadata(monkeypatch):
    """Run from a folder holding a checkout named theory_sim, ``import theory_sim`` finds that folder (a namespace
    package without __version__): the version lookup must not import it."""
    from theory_sim.cli import version
    from theory_sim.io import provenance

    installed = dist_version("theory_sim")
    monkeypatch.setitem(sys.modules, "theory_sim", types.ModuleType("theory_sim"))   # the folder's namespace
    assert version() == installed
    assert provenance()["versions"]["theory_sim"] == installed


# ---- refused before the work, not after it ---------------------------------------------------------------------------
def test_sweep_dpi_is_checked_first(faults_sweep, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(faults_sweep)
    refused(capsys, ["sweep", str(spec), "--out", str(tmp_path / "o"), "--executor", "inline", "--dpi", "0"],
            "dpi must be an integer in [10, 2000], got 0")
    assert not (tmp_path / "o").exists()   # nothing trained


@pytest.fixture(scope="module")
def sweep_dir(faults_sweep, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "s.toml").write_text(faults_sweep)
    assert main(["sweep", str(root / "s.toml"), "--out", str(root / "out"), "--executor", "inline",
                 "--no-figures", "--no-progress"]) == 0
    return root


def test_figures_refuses_a_gallery_file_before_drawing(sweep_dir, tmp_path, capsys):
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    refused(capsys, ["figures", str(sweep_dir / "out"), "--gallery", str(tmp_path / "file")],
            f"gallery must be a directory (new or existing), but {tmp_path / 'file'} is an existing file")
    assert not (sweep_dir / "out" / "figures").exists()


@pytest.mark.slow
def test_sigterm_during_the_figures_is_one_line_and_143(sweep_dir):
    code = ("import os, signal, sys; import theory_sim.sweeps.figures as f; "
            "f.draw_figures = lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM); "
            "from theory_sim.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "sweep", str(sweep_dir / "s.toml"), "--out",
                           str(sweep_dir / "out"), "--executor", "inline", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip() == "terminated: the finished chunks are kept; run the same command to resume"


# ---- accepted but without effect: refused alike everywhere ------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--depth", "3"], "depth only applies to --model deep, not c23"),
    (["--preset", "kou2023", "--width", "5"], "width only applies to --model deep, not kou2023"),
    (["--model", "deep", "--width", "5"], "width only applies to --depth >= 3, not 2"),
    (["--optimizer", "msam", "--ascent-steps", "1", "--ascent-step", "0.5"],
     "ascent_step only applies to --ascent-steps >= 2, not 1"),
    (["--lr-warmup", "0.1"], "lr_warmup only applies to --lr-schedule linear_warmup_cosine, not constant"),
])
def test_simulate_refuses_options_without_effect(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        simulate_config(argv)


def test_simulate_accepts_the_same_options_where_they_act():
    cfg = simulate_config(["--model", "deep", "--depth", "3", "--width", "5", "--optimizer", "msam",
                           "--ascent-steps", "3", "--ascent-step", "0.5", "--lr-schedule", "linear_warmup_cosine",
                           "--lr-warmup", "0.1"])
    assert (cfg.depth, cfg.width, cfg.ascent_step, cfg.lr_warmup) == (3, 5, 0.5, 0.1)
    assert simulate_config(["--depth", "2", "--width", "10"]).model == "c23"   # the defaults: no effect either way


VARIANT = '[[optimizers]]\nlabel = "v"\noptimizer = "sam"\n'


@pytest.mark.parametrize("extra,message", [
    ("[grid.depth]\nvalues = [2, 3]\n", "grid.depth has no effect in any optimizer variant: depth only applies to "
                                        "model deep, not c23"),
    (VARIANT + "lr_step_gamma = 0.5\n", "optimizers[1].lr_step_gamma (label 'v') has no effect: lr_step_gamma only "
                                        "applies to lr_schedule step, not constant"),
    (VARIANT + 'lr_schedule = "cosine"\nlr_step_every = 0.2\n', "lr_step_every only applies to lr_schedule step, "
                                                                "not cosine"),
    (VARIANT + "ascent_steps = 1\nascent_step = 0.5\n", "optimizers[1].ascent_step (label 'v') has no effect: "
                                                        "ascent_step only applies to optimizer msam, not sam"),
    ('[[optimizers]]\nlabel = "m"\noptimizer = "msam"\nascent_steps = 1\nascent_step = 0.5\n',
     "ascent_step only applies to ascent_steps >= 2, not 1"),
])
def test_sweep_specs_refuse_options_without_effect(faults_sweep, extra, message):
    text = faults_sweep.replace("[[optimizers]]", extra + "[[optimizers]]", 1) if extra.startswith("[grid") else faults_sweep + extra
    with pytest.raises(ConfigError, match=None) as info:
        spec_of(text)
    assert message in str(info.value), str(info.value)


def test_base_lr_warmup_under_a_constant_schedule_is_refused_as_simulate_refuses_it(faults_sweep):
    """Issue 27: the same rule and the same words in a spec's [base] as on simulate's command line."""
    with pytest.raises(ConfigError) as sweep:
        spec_of(faults_sweep.replace("n_mc = 200", "n_mc = 200\nlr_warmup = 0.1"))
    with pytest.raises(ConfigError) as simulate:
        simulate_config(["--lr-warmup", "0.1"])
    assert str(simulate.value).replace("--lr-schedule", "lr_schedule") in str(sweep.value)
    with pytest.raises(ConfigError, match="lr_warmup only applies to lr_schedule linear_warmup_cosine"):
        check_effective(SimConfig(lr_warmup=0.1), {"lr_warmup": 0.1})          # the Python API's check
    ok = faults_sweep.replace("n_mc = 200", "n_mc = 200\nlr_warmup = 0.1") + VARIANT + 'lr_schedule = "linear_warmup_cosine"\n'
    assert {cfg.lr_warmup for _, cfg in spec_of(ok).runs} == {0.1}              # acts for one variant: allowed


def test_sweep_specs_accept_the_same_options_where_they_act(faults_sweep):
    deep = faults_sweep.replace("[[optimizers]]", "[grid.depth]\nvalues = [2, 3]\n[[optimizers]]", 1).replace(
        "n_mc = 200", 'n_mc = 200\nmodel = "deep"\nwidth = 4')
    assert {cfg.depth for _, cfg in spec_of(deep).runs} == {2, 3}
    step = faults_sweep + VARIANT + 'lr_schedule = "step"\nlr_step_gamma = 0.5\n'
    assert {cfg.lr_step_gamma for _, cfg in spec_of(step).runs} == {0.1, 0.5}
    msam = faults_sweep + '[[optimizers]]\nlabel = "m"\noptimizer = "msam"\nascent_step = 0.5\n'
    assert {cfg.ascent_step for _, cfg in spec_of(msam + "ascent_steps = 3\n").runs} == {1.0, 0.5}
    on_axis = msam.replace("[[optimizers]]", "[grid.ascent_steps]\nvalues = [1, 3]\n[[optimizers]]", 1)
    assert {cfg.ascent_steps for _, cfg in spec_of(on_axis).runs} == {1, 3}   # acts in some cells: allowed


def test_dtype_range_is_a_simconfig_rule(faults_sweep):
    """Issue 27: a float32 spec with c_tau = 1e30 trained and exited 0 while simulate refused it; SimConfig now
    refuses it for every caller."""
    with pytest.raises(ConfigError, match="c_tau must give a SAM radius .* of at most 1.845e\\+19"):
        SimConfig(optimizer="sam", dtype="float32", c_tau=1e30)
    with pytest.raises(ConfigError, match="mu_norm must be at most 3.403e\\+38"):
        SimConfig(dtype="float32", mu_norm=1e39)
    with pytest.raises(ConfigError, match="c_tau must give a SAM radius"):
        spec_of(faults_sweep.replace("n_mc = 200", 'n_mc = 200\ndtype = "float32"\nc_tau = 1e30') + VARIANT)
    assert SimConfig(optimizer="sam", dtype="float64", c_tau=1e30).c_tau == 1e30
    assert SimConfig(optimizer="sgd", dtype="float32", c_tau=1e30).dtype == "float32"   # sgd: no radius


@pytest.mark.parametrize("extra,message", [
    (["--timeout-min", "5"], "--timeout-min has no effect with --executor process (it is a submitit option)"),
    (["--executor", "inline", "--partition", "p"], "--partition has no effect with --executor inline"),
    (["--executor", "inline", "--workers", "2"], "--workers has no effect with --executor inline"),
    (["--no-figures", "--format", "pdf"], "--format has no effect with --no-figures"),
    (["--no-figures", "--dpi", "200"], "--dpi has no effect with --no-figures"),
])
def test_sweep_refuses_executor_and_figure_options_without_effect(faults_sweep, extra, message, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(faults_sweep)
    refused(capsys, ["sweep", str(spec), "--out", str(tmp_path / "o"), *extra], message)
    assert not (tmp_path / "o").exists()


def test_simulate_and_sweep_refuse_each_others_directories(sweep_dir, tmp_path, capsys):
    capsys.readouterr()
    refused(capsys, ["simulate", *TINY, "--out", str(sweep_dir / "out")], "holds a sweep (spec.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.parquet").write_bytes(b"")   # what marks a simulate run (its config.json: also a sweep's name)
    refused(capsys, ["sweep", str(sweep_dir / "s.toml"), "--out", str(run), "--executor", "inline"],
            f"out must be a sweep directory (new or resumed), but {run} holds a simulate run")
    from theory_sim.cnn.simulate_verb import check_out

    assert check_out(str(tmp_path / "new"), False) == tmp_path / "new"   # a new directory: fine


CIFAR = ["cifar", "--dataset", "digits", "--n-train", "64", "--n-test", "32", "--batch-size", "32", "--depth", "10",
         "--width", "1", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize("extra,message", [
    (["--optimizer", "sgd", "--rho", "0.1"], "rho only applies to a SAM-family optimizer, not sgd"),
    (["--optimizer", "sam", "--asam-eta", "0.2"], "asam_eta only applies to optimizer 'asam', not 'sam'"),
    (["--data-dir", "somewhere"], "data_dir has no effect with dataset 'digits'"),
    (["--optimizer", "msam", "--steps-k", "3", "--ascent-steps", "4"], "both --steps-k (deprecated) and "
                                                                       "--ascent-steps given"),
    (["--optimizer", "msam", "--ascent-steps", "4", "--steps-k", "3"], "both --steps-k (deprecated) and "
                                                                       "--ascent-steps given"),
    (["--optimizer", "sam", "--m-sharpness", "5"], "m_sharpness must be 0 (the whole batch) or divide "
                                                   "batch_size=32"),
    (["--optimizer", "msam", "--ascent-steps", "1", "--ascent-step", "0.5"], "ascent_step only applies to "
                                                                             "ascent_steps >= 2, not 1"),
])
def test_cifar_refuses_options_without_effect(extra, message, tmp_path, capsys):
    with pytest.warns(FutureWarning) if "--steps-k" in extra else contextlib.nullcontext():
        refused(capsys, [*CIFAR, *extra, "--out", str(tmp_path / "c")], message)
    assert not (tmp_path / "c").exists()


def test_cifar_accepts_the_same_options_where_they_act():
    from theory_sim.cifar.config import CifarConfig

    assert CifarConfig(optimizer="sgd", rho=0.0).rho == 0.0                    # a stored sgd run's resolved radius
    assert CifarConfig(optimizer="asam", asam_eta=0.2).asam_eta == 0.2
    assert CifarConfig(optimizer="sam", batch_size=32, m_sharpness=16).m_sharpness == 16
    assert CifarConfig(optimizer="msam", ascent_steps=3, ascent_step=0.5).ascent_step == 0.5
    assert CifarConfig(dataset="cifar10", data_dir="somewhere").data_dir == "somewhere"


def test_cifar_sharpness_pass_is_opt_in():
    from theory_sim.cifar.config import CifarConfig
    from theory_sim.cifar.train import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert CifarConfig().sharpness is False
    assert config_from_args(p.parse_args(["--out", "x"])).sharpness is False
    assert config_from_args(p.parse_args(["--out", "x", "--sharpness"])).sharpness is True


# ---- misleading messages ---------------------------------------------------------------------------------------------
def test_messages_name_the_real_conflict(faults_sweep):
    with pytest.raises(ConfigError, match=r"optimizers\[0\].optimizer must be one of .*got 'adam'"):
        spec_of(faults_sweep.replace('optimizer = "sgd"', 'optimizer = "adam"\nsam_steps = 3'))
    with pytest.raises(ConfigError, match="base.d is also the grid axis grid.d: set d in one of them"):
        spec_of(faults_sweep.replace("n_mc = 200", "n_mc = 200\nd = 30"))
    with pytest.raises(ConfigError, match=r"optimizers\[0\].mu_norm \(label 'sgd'\) is also the grid axis "
                                          r"grid.mu_norm"):
        spec_of(faults_sweep + "mu_norm = 3.0\n")
    with pytest.raises(ConfigError, match="base.not_a_field is not a SimConfig field"):
        spec_of(faults_sweep.replace("n_mc = 200", "n_mc = 200\nnot_a_field = 1"))


# ---- simulate's flags are SimConfig's fields ---------------------------------------------------------------------------
def test_every_simconfig_field_is_a_simulate_flag_with_its_help(capsys):
    from dataclasses import fields

    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(SimConfig):
        if f.name in ("seed", "data_seed"):   # simulate's --seeds
            assert "help" not in f.metadata
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        assert (f" {flag} " in text or f" {flag}," in text) and " ".join(f.metadata["help"].split()) in text, f.name
    cfg = simulate_config(["--P", "3", "--sigma-p", "2", "--no-project-noise", "--sam-steps", "none", "--tau", "0.5",
                           "--optimizer", "sam", "--norm", "inf", "--dtype", "float32"])
    assert (cfg.P, cfg.sigma_p, cfg.project_noise, cfg.sam_steps, cfg.tau, cfg.norm) == (3, 2.0, False, None, 0.5,
                                                                                         "inf")
    with pytest.raises(SystemExit):   # tau and c_tau stay mutually exclusive
        simulate_config(["--tau", "0.5", "--c-tau", "2"])
    assert "not allowed with argument" in capsys.readouterr().err
