"""Nothing lost, every failure one line: diverging runs, bad --out and --seeds, malformed sweep specs, a full disk.

Every failing command must print exactly one line on stderr (no traceback) and exit with its status: 2 for a bad
parameter (before any work), 1 for a result that could not be written, 0 for a run that diverged (it is recorded
as diverged). A result already on disk must be byte-identical afterwards.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from theory_sim.cli import main
from theory_sim.config import ConfigError

TINY = ["--d", "50", "--n", "8", "--batch-size", "4", "--epochs", "2", "--n-test", "0", "--n-mc", "200",
        "--seeds", "1", "--no-progress"]


def one_line(capsys) -> str:
    """stderr of the last command, asserted to be one line without a traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    return err.strip()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or ".drawing" in p.name]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["simulate", *TINY, "--out", str(out)]) == 0
    return out


# --------------------------------------------------------------------------------------------------------------------
# 1. non-finite or overflowing weights: recorded as diverged, never a crash
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [["--eta", "1e300"], ["--dtype", "float32", "--eta", "1e20"],
                                   ["--mu-norm", "1e200"]], ids=["eta1e300", "float32-eta1e20", "mu1e200"])
@pytest.mark.slow
def test_diverging_runs_are_flagged_not_crashed(extra, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["simulate", *TINY, "--seeds", "2", "--n-test", "50", *extra, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err and err.count("\n") <= 1, err
    s = pd.read_parquet(out / "summary.parquet")
    t = pd.read_parquet(out / "trajectory.parquet")
    assert s.diverged.any() and len(t) > 0 and set(t.seed) == {0, 1} and t.step.max() >= 1
    for _, row in s.iterrows():   # diverged <=> NaN results; a run that is not diverged is complete and finite
        cols = ("test_error", "test_error_se", "test_error_heldout", "train_loss")
        if row.diverged:
            assert all(np.isnan(row[c]) for c in cols), row
        else:
            assert all(np.isfinite(row[c]) for c in cols), row
            assert np.isfinite(t[t.seed == row.seed].test_error).all()
    assert (out / "config.json").exists() and not leftovers(out)


# --------------------------------------------------------------------------------------------------------------------
# 2. --out and --seeds: refused before any training
# --------------------------------------------------------------------------------------------------------------------
def test_out_must_not_be_a_file_or_empty(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("keep me")
    for out, msg in ((str(f), "is an existing file"), (str(f / "sub"), "is a file"), ("", "empty string"),
                     ("   ", "empty string")):
        assert main(["simulate", *TINY, "--out", out]) == 2
        line = one_line(capsys)
        assert line.startswith("error: out must be") and msg in line, line
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("inside", [False, True], ids=["dir", "inside"])
def test_out_must_be_writable(inside, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod does not make a directory read-only")
        out = ro / "sub" if inside else ro
        assert main(["simulate", *TINY, "--out", str(out)]) == 2
        line = one_line(capsys)
        assert line.startswith("error: out must be a writable directory") and str(ro) in line
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_out_read_only_emulated(tmp_path, capsys, monkeypatch):
    """The same check where chmod cannot help (root): os.access reports the directory read-only."""
    import theory_sim.cnn.simulate_verb as simulate

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(simulate.os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    assert main(["simulate", *TINY, "--out", str(ro / "a" / "b")]) == 2
    line = one_line(capsys)
    assert line.startswith("error: out must be a writable directory") and f"{ro} is not writable" in line
    assert list(ro.iterdir()) == []


def test_existing_run_is_refused_without_overwrite(finished_run, capsys):
    before = snapshot(finished_run)
    assert main(["simulate", *TINY, "--eta", "0.2", "--out", str(finished_run)]) == 2
    line = one_line(capsys)
    assert "already holds a finished simulate run" in line and "--overwrite" in line
    assert snapshot(finished_run) == before


@pytest.mark.slow
def test_overwrite_replaces_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--out", str(out)]) == 0
    first = pd.read_parquet(out / "summary.parquet")
    assert main(["simulate", *TINY, "--eta", "0.2", "--out", str(out), "--overwrite"]) == 0
    second = pd.read_parquet(out / "summary.parquet")
    assert (first.eta == 0.1).all() and (second.eta == 0.2).all() and not leftovers(out)


@pytest.mark.parametrize("seeds", ["1,2,", ",", "3-1", "-1", "0", "", "1,,2", "1-2-3", "2,2", "x"])
def test_malformed_seeds(seeds, tmp_path, capsys):
    assert main(["simulate", *TINY, "--seeds", seeds, "--out", str(tmp_path / "x")]) == 2
    line = one_line(capsys)
    assert line.startswith("error: seeds must be") and "A-B" in line and "A,B,C" in line
    assert not (tmp_path / "x").exists()


def test_well_formed_seeds():
    from theory_sim.cnn.simulate_verb import parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("2-4") == [2, 3, 4] and parse_seeds("5-5") == [5]
    assert parse_seeds("7,1, 4") == [7, 1, 4]


@pytest.mark.parametrize("extra,msg", [
    (["--optimizer", "msam", "--ascent-step", "0"], "ascent_step must be in (0.0, inf], got 0"),
    (["--optimizer", "msam", "--ascent-step", "nan"], "ascent_step must be a finite number"),
    (["--optimizer", "sam", "--ascent-step", "0.5"], "ascent_step only applies to --optimizer msam, not sam"),
    (["--lr-schedule", "cosine", "--lr-step-gamma", "0.5"], "lr_step_gamma only applies to --lr-schedule step"),
    (["--lr-schedule", "linear_warmup_cosine", "--lr-warmup", "1.5"], "lr_warmup must be in [0.0, 1.0)"),
    (["--lr-schedule", "step", "--lr-step-gamma", "0"], "lr_step_gamma must be in (0.0, 1.0]"),
    (["--dtype", "float32", "--optimizer", "msam", "--ascent-step", "1e39"], "ascent_step must be at most"),
])
def test_bad_new_options_are_one_line(extra, msg, tmp_path, capsys):
    assert main(["simulate", *TINY, *extra, "--out", str(tmp_path / "x")]) == 2
    line = one_line(capsys)
    assert line.startswith("error: ") and msg in line, line
    assert not (tmp_path / "x").exists()


def test_parameter_beyond_the_dtype_range(tmp_path, capsys):
    assert main(["simulate", *TINY, "--dtype", "float32", "--mu-norm", "1e39", "--out", str(tmp_path / "x")]) == 2
    assert "mu_norm must be at most" in one_line(capsys) and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------------------------
# 2b. sizes that cannot fit, counts that would hang, options that do nothing: refused before any work (issue 19)
# --------------------------------------------------------------------------------------------------------------------
CANNOT_FIT = {   # argv -> the start of the one error line
    "d-1e12": (["--d", "1000000000000"], "simulate (1 seeds) needs about"),
    "d-past-int64": (["--d", "99999999999999999999"], "d must fit a 64-bit integer"),
    "n-1e8": (["--n", "100000001", "--batch-size", "100000001"], "simulate (1 seeds) needs about"),
    "m-1e8": (["--m", "100000000"], "simulate (1 seeds) needs about"),
    "epochs-1e12": (["--epochs", "1000000000000"], "simulate (1 seeds): epochs x n / batch_size = 1000000000000 x 8"),
    "n-mc-1e12": (["--n-mc", "1000000000000"], "simulate (1 seeds) needs about"),
    "n-test-1e10": (["--n-test", "10000000000"], "simulate (1 seeds) needs about"),
    "seeds-count-1e9": (["--seeds", "1000000000"], "seeds must be at most 100000 runs"),
    "seeds-range-1e9": (["--seeds", "5-1000000005"], "seeds must be at most 100000 runs"),
    "seeds-count-past-int64": (["--seeds", "99999999999999999999999"], "seeds must be at most 100000 runs"),
    "seeds-past-int64": (["--seeds", "1,99999999999999999999999"], "seeds must be integers in [0, 2^63 - 1]"),
    "P-huge": (["--P", "100000000000"], "P must be at most 2^24"),
    "tau-with-sgd": (["--optimizer", "sgd", "--tau", "0.1"], "tau only applies to --optimizer sam / usam"),
    "c-tau-with-sgd": (["--c-tau", "2"], "c_tau only applies to --optimizer sam / usam"),
    "log-every-with-log-points": (["--log-every", "2", "--log-points", "10"],
                                  "--log-every has no effect with --log-points 10"),
    "c-tau-float32": (["--optimizer", "sam", "--dtype", "float32", "--c-tau", "1e30"],
                      "c_tau must give a SAM radius (tau, or c_tau m sqrt(B) / (P sigma_p sqrt(d))) of at most "
                      "1.845e+19"),
    "tau-float64": (["--optimizer", "sam", "--tau", "1e200"], "tau must give a SAM radius"),
}


@pytest.mark.parametrize("case", list(CANNOT_FIT))
def test_sizes_that_cannot_fit_and_options_that_do_nothing(case, tmp_path, capsys):
    extra, msg = CANNOT_FIT[case]
    assert main(["simulate", *TINY, *extra, "--out", str(tmp_path / "x")]) == 2
    line = one_line(capsys)
    assert line.startswith(f"error: {msg}"), line
    assert not (tmp_path / "x").exists()


def test_a_memory_refusal_names_the_parameters_and_can_be_forced(tmp_path, capsys, monkeypatch):
    """The refusal compares the estimate with the memory available; pretending the machine has less than a tiny
    run needs must refuse it, naming the dominant term's parameters, and --force-memory must run it anyway."""
    import theory_sim.resources as resources

    monkeypatch.setattr(resources, "available_memory_bytes", lambda: (1000, "a test's pretend machine"))
    assert main(["simulate", *TINY, "--out", str(tmp_path / "x")]) == 2
    line = one_line(capsys)
    assert "more than the 1000 B available (a test's pretend machine)" in line and "--force-memory" in line
    assert "d=50" in line or "n_mc=200" in line, line
    assert main(["simulate", *TINY, "--out", str(tmp_path / "x"), "--force-memory"]) == 0
    assert (tmp_path / "x" / "config.json").exists()


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                                               "tried to allocate 87960930222080 bytes")])
def test_running_out_of_memory_anyway_is_one_line(exc, tmp_path, capsys, monkeypatch):
    import theory_sim.cnn.train as train

    def out_of_memory(*args, **kwargs):
        raise exc

    monkeypatch.setattr(train, "train_ensemble", out_of_memory)
    assert main(["simulate", *TINY, "--out", str(tmp_path / "x"), "--force-memory"]) == 1
    assert one_line(capsys).startswith("error: out of memory")
    monkeypatch.setattr(train, "train_ensemble", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):   # any other RuntimeError is not hidden
        main(["simulate", *TINY, "--out", str(tmp_path / "x")])


def test_out_is_resolved_and_printed(tmp_path, capsys, monkeypatch):
    """``--out ../..``-style paths: the run says where it went, as an absolute path."""
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    assert main(["simulate", *TINY, "--out", "../run"]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(f"-> {tmp_path / 'a' / 'run'}"), printed
    assert (tmp_path / "a" / "run" / "config.json").exists()


@pytest.mark.parametrize("threads", ["0", "100000000"])
def test_threads_are_bounded(threads, tmp_path, capsys):
    assert main(["--threads", threads, "simulate", *TINY, "--out", str(tmp_path / "x")]) == 2
    assert one_line(capsys).startswith("error: threads must be in [1, ")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("verb", ["simulate", "sweep"])
def test_threads_apply_where_the_verb_runs_torch(verb, tmp_path):
    """--threads sets torch's threads of the process that trains: simulate's, and an inline sweep's (sweep sets
    them itself, so that with a process pool its parent never loads torch)."""
    import torch

    before = torch.get_num_threads()
    spec = tmp_path / "tiny.toml"
    spec.write_text('name = "tiny"\nseeds = 1\n[base]\nn = 6\nbatch_size = 6\nm = 2\nepochs = 1\nn_mc = 100\n'
                    '[grid.d]\nvalues = [20]\n[grid.mu_norm]\nvalues = [1.0]\n'
                    '[[optimizers]]\nlabel = "sgd"\noptimizer = "sgd"\n')
    args = [*TINY, "--out", str(tmp_path / "x")] if verb == "simulate" else \
        [str(spec), "--out", str(tmp_path / "x"), "--executor", "inline", "--no-figures"]
    try:
        assert main(["--threads", "2", verb, *args]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_options_of_a_variant_may_be_shared_through_base_or_the_grid(faults_sweep):
    """A [base] value (c_tau for every variant, sgd included), a c_tau axis with an sgd variant, and a variant
    overriding a [base] value are not errors: only an option set where it can have no effect is."""
    import tomllib

    from theory_sim.sweeps.spec import SweepSpec

    sam = '[[optimizers]]\nlabel = "sam"\noptimizer = "sam"\ntau = 0.05\nsam_steps = 2\n'
    in_base = faults_sweep.replace("epochs = 2", "epochs = 2\nc_tau = 2.0\nlog_every = 2") + sam
    on_axis = faults_sweep.replace("[[optimizers]]", "[grid.c_tau]\nvalues = [1.0, 3.0]\n[[optimizers]]") \
        + sam.replace("tau = 0.05\n", "")
    for text in (in_base, on_axis):
        spec = SweepSpec.from_dict({**tomllib.loads(text), "trajectories": False})
        assert "sgd" in {cfg.optimizer for _, cfg in spec.runs}
        spec.check_resources()
    with pytest.raises(ConfigError, match=r"optimizers\[0\].sam_steps \(label 'sgd'\) has no effect"):
        SweepSpec.from_dict(tomllib.loads(on_axis.replace('optimizer = "sgd"', 'optimizer = "sgd"\nsam_steps = 3')))


def test_sweep_workers_share_the_memory(faults_sweep, tmp_path):
    """A chunk that fits alone may not fit twice: --workers 2 halves the memory each chunk may take."""
    from theory_sim.cnn.memory import estimate_memory_bytes
    from theory_sim.sweeps.spec import SweepSpec

    spec = SweepSpec.from_toml(_spec(tmp_path, faults_sweep))
    need = max(estimate_memory_bytes([c for _, c in chunk]).total for chunk in spec.chunks())
    spec.check_resources(available=(need, "test"), workers=1)
    with pytest.raises(ConfigError, match=r"^chunk \d+ \(2 runs, chunk_runs = 8\) needs about .* shared by 2 workers"):
        spec.check_resources(available=(need, "test"), workers=2)


# --------------------------------------------------------------------------------------------------------------------
# 3. sweep specs: every malformed value is one ConfigError line naming its key path
# --------------------------------------------------------------------------------------------------------------------
def _before_optimizers(text: str) -> str:
    return text[:text.index("[[optimizers]]")]


BAD_SPECS = {
    "values-string": (lambda t: t.replace("values = [20, 40]", 'values = [20, "40"]'), "grid.d.values[1] must be"),
    "values-bool": (lambda t: t.replace("values = [20, 40]", "values = [20, 40, true]"), "grid.d.values[2] must be"),
    "values-scalar": (lambda t: t.replace("values = [20, 40]", "values = 3"), "grid.d.values must be an array"),
    "axis-scalar": (lambda t: t.replace("[grid.d]\nvalues = [20, 40]", "[grid]\nd = 3"), "grid.d must be an array"),
    "values-unknown-key": (lambda t: t.replace("values = [20, 40]", "values = [20, 40]\nstep = 2"), "unknown keys ['step']"),
    "values-round-together": (lambda t: t.replace("values = [20, 40]", "values = [100.2, 100.4]"),
                              "100.2 and grid.d.values[1] = 100.4 both give d = 100"),
    "log-grid-repeats": (lambda t: t.replace("[grid.d]\nvalues = [20, 40]", '[grid.d]\nstart = 10\nstop = 12\nnum = 5\n'
                                                                    'spacing = "log"'), "lower num or widen"),
    "start-string": (lambda t: t.replace("start = 0.5", 'start = "0.5"'), "grid.mu_norm.start must be a finite number"),
    "stop-bool": (lambda t: t.replace("stop = 2.0", "stop = true"), "grid.mu_norm.stop must be a finite number"),
    "num-string": (lambda t: t.replace("num = 2", 'num = "2"'), "grid.mu_norm.num must be an integer"),
    "num-bool": (lambda t: t.replace("num = 2", "num = true"), "grid.mu_norm.num must be an integer"),
    "num-float": (lambda t: t.replace("num = 2", "num = 2.5"), "grid.mu_norm.num must be an integer"),
    "spacing-number": (lambda t: t.replace('spacing = "log"', "spacing = 1"), "grid.mu_norm.spacing must be a string"),
    "seeds-string": (lambda t: t.replace("seeds = 1", 'seeds = "1"'), "seeds must be an integer"),
    "seeds-bool": (lambda t: t.replace("seeds = 1", "seeds = true"), "seeds must be an integer"),
    "chunk-runs-bool": (lambda t: t.replace("chunk_runs = 8", "chunk_runs = true"), "chunk_runs must be an integer"),
    "benign-margin-string": (lambda t: t.replace("seeds = 1", 'seeds = 1\nbenign_margin = "0.1"'), "benign_margin must be"),
    "seed-offset-bool": (lambda t: t.replace("seeds = 1", "seeds = 1\nseed_offset = false"), "seed_offset must be"),
    "base-bool-for-int": (lambda t: t.replace("epochs = 2", "epochs = true"), "base.epochs must be an integer"),
    "base-string-for-float": (lambda t: t.replace("epochs = 2", 'epochs = 2\neta = "0.1"'), "base.eta must be a finite"),
    "base-int-for-bool": (lambda t: t.replace("epochs = 2", "epochs = 2\nproject_noise = 1"), "base.project_noise must be"),
    "base-not-a-table": (lambda t: "base = 3\n" + t.replace("[base]\n", "").replace("n = 8\nbatch_size = 4\nepochs = 2\n"
                                                                             "n_test = 0\nn_mc = 200\n", ""),
                         "base must be a table"),
    "optimizer-override-bool": (lambda t: t + "c_tau = true\n", "optimizers[0].c_tau must be a finite number"),
    "optimizers-a-table": (lambda t: _before_optimizers(t) + '[optimizers]\nlabel = "sgd"\n', "optimizers must be an array"),
    "optimizers-not-tables": (lambda t: "optimizers = [1, 2]\n" + _before_optimizers(t), "optimizers[0] must be a table"),
    "name-number": (lambda t: "name = 3\n" + t.replace('name = "faults"', ""), "name must be a non-empty string"),
    "preset-number": (lambda t: "preset = 3\n" + t, "preset must be a string"),
    # sizes that cannot fit and options that do nothing (issue 19)
    "seeds-too-many": (lambda t: t.replace("seeds = 1", "seeds = 1000000000"), "seeds must be in [1, 100000]"),
    "seed-offset-past-int64": (lambda t: t.replace("seeds = 1", "seeds = 2\nseed_offset = 9223372036854775807"),
                               "seed_offset must be in [0, 9223372036854775806]"),
    "chunk-cannot-fit": (lambda t: t.replace("n_mc = 200", "n_mc = 1000000000000"),
                         "most of it is the Monte-Carlo draws (873.1 TiB: base.n_mc=1000000000000"),
    "chunk-too-long": (lambda t: t.replace("epochs = 2", "epochs = 100000000"), "chunk 0 (2 runs, chunk_runs = 8): "
                                                                                "epochs x n / batch_size"),
    "variant-option-without-effect": (lambda t: t + "c_tau = 2.0\n",
                                      "optimizers[0].c_tau (label 'sgd') has no effect: c_tau only applies"),
    "variant-tau-without-effect": (lambda t: t + "tau = 0.1\n", "optimizers[0].tau (label 'sgd') has no effect"),
    "base-log-every-under-trajectories": (lambda t: t.replace("epochs = 2", "epochs = 2\nlog_every = 2"),
                                          "base.log_every has no effect with trajectories = true (log_points = 30)"),
    "variant-log-every-under-log-points": (lambda t: t.replace("epochs = 2", "epochs = 2\nlog_points = 5")
                                           + "log_every = 3\n", "optimizers[0].log_every has no effect with "
                                                                 "base.log_points"),
    "c-tau-axis-under-tau": (lambda t: t.replace("epochs = 2", "epochs = 2\ntau = 0.1").replace(
        "[[optimizers]]", "[grid.c_tau]\nvalues = [1.0, 2.0]\n[[optimizers]]"),
        "grid.c_tau has no effect with base.tau"),
    "string-axis": (lambda t: t.replace("[grid.d]", '[grid.lr_schedule]\nvalues = ["constant", "cosine"]\n[grid.d]'),
                    "grid.lr_schedule: lr_schedule is a string option, set per optimizer variant"),
    "bad-schedule": (lambda t: t + 'lr_schedule = "linear"\n', "lr_schedule must be one of"),
    "ascent-step-zero": (lambda t: t.replace('optimizer = "sgd"', 'optimizer = "msam"\nascent_step = 0.0'),
                         "ascent_step must be in (0.0, inf]"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_malformed_spec_is_one_line(faults_sweep, case, tmp_path, capsys):
    edit, msg = BAD_SPECS[case]
    text = edit(faults_sweep)
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--executor", "inline"]) == 2
    line = one_line(capsys)
    assert line.startswith("error: ") and msg in line, line
    assert not (tmp_path / "out").exists()


def test_binary_spec_is_one_line(tmp_path, capsys):
    spec = tmp_path / "binary.toml"
    spec.write_bytes(bytes(range(256)) * 4)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--executor", "inline"]) == 2
    line = one_line(capsys)
    assert "UTF-8" in line and str(spec) in line


@pytest.mark.slow
def test_committed_presets_still_load():
    from theory_sim.sweeps.spec import SweepSpec

    from theory_sim.sweeps.search import load
    from theory_sim.sweeps.spec_toml import read_toml

    presets = sorted(Path(__file__).resolve().parent.parent.glob("studies/*.toml"))
    assert presets
    for path in presets:   # a boundary search's spec (a [search] table) loads through the search verb
        assert (load(path)[0] if "search" in read_toml(path) else SweepSpec.from_toml(path)).runs


# --------------------------------------------------------------------------------------------------------------------
# 4. a full disk: one line naming the file, exit 1, the previous result intact, no temp file
# --------------------------------------------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["fsync", "replace", "chmod"])
@pytest.mark.slow
def test_disk_full_while_overwriting_a_run(where, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    before = snapshot(out)
    monkeypatch.setattr(os, where, _disk_full)
    rc = main(["simulate", *TINY, "--eta", "0.2", "--out", str(out), "--overwrite"])
    monkeypatch.undo()
    line = one_line(capsys)
    assert rc == 1 and line == f"error: could not write {out / 'summary.parquet'}: No space left on device"
    assert snapshot(out) == before and not leftovers(out)


def test_disk_full_in_a_new_directory(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", _disk_full)
    assert main(["simulate", *TINY, "--out", str(out)]) == 1
    monkeypatch.undo()
    assert "could not write" in one_line(capsys)
    assert not (out / "config.json").exists() and not leftovers(out)


@pytest.mark.slow
def test_disk_full_while_drawing_the_figure(tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    before = snapshot(out)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _disk_full)
    assert main(["simulate", *TINY, "--eta", "0.2", "--out", str(out), "--overwrite"]) == 1
    monkeypatch.undo()
    assert one_line(capsys) == f"error: could not write {out / 'trajectory.png'}: No space left on device"
    assert snapshot(out) == before and not leftovers(out)


def test_disk_full_in_a_sweep(faults_sweep, tmp_path, capsys, monkeypatch):
    spec = tmp_path / "s.toml"
    spec.write_text(faults_sweep)
    out = tmp_path / "sweep"
    argv = ["sweep", str(spec), "--out", str(out), "--executor", "inline", "--no-figures", "--no-progress"]
    monkeypatch.setattr(os, "fsync", _disk_full)
    assert main(argv) == 1                     # a new sweep: its first file cannot be written
    monkeypatch.undo()
    line = one_line(capsys)
    assert line.startswith(f"error: could not write {out}") and line.endswith(": No space left on device")
    assert not leftovers(out) and not (out / "results.parquet").exists()
    assert main(argv) == 0                     # the same command, once there is space, finishes the sweep
    capsys.readouterr()
    before = snapshot(out)
    monkeypatch.setattr(os, "replace", _disk_full)
    rc = main(argv)                            # re-running a finished sweep: whatever it rewrites fails
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert (rc == 1 and err.count("\n") == 1 and "could not write" in err) or (rc == 0 and not err), err
    assert snapshot(out) == before and not leftovers(out)


def test_atomic_write_cleans_up_on_every_failure(tmp_path, monkeypatch):
    from theory_sim.io import ResultWriteError, atomic_write_bytes

    target = tmp_path / "result.bin"
    target.write_bytes(b"old")
    for where in ("fsync", "chmod", "replace"):
        monkeypatch.setattr(os, where, _disk_full)
        with pytest.raises(ResultWriteError) as info:
            atomic_write_bytes(target, b"new")
        monkeypatch.undo()
        assert info.value.errno == errno.ENOSPC and str(info.value) == \
            f"could not write {target}: No space left on device"
        assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.bin"]
    with pytest.raises(ResultWriteError, match="could not write"):
        atomic_write_bytes(target / "inside_a_file", b"x")   # the parent is a file
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.bin"]


def test_keyboard_interrupt_is_one_line(tmp_path, capsys, monkeypatch):
    import theory_sim.cnn.train as train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_ensemble", interrupted)
    assert main(["simulate", *TINY, "--out", str(tmp_path / "x")]) == 130
    assert one_line(capsys) == "interrupted"


def test_a_figure_matplotlib_cannot_draw_is_skipped_with_one_line(tmp_path, capsys, monkeypatch):
    """A run without a positive training loss (exactly 0 or NaN throughout) is drawn quietly on linear axes (a log
    axis is only taken where every value is positive); a figure matplotlib cannot draw is skipped with a one-line
    warning, the tables are unaffected, nothing is left behind."""
    import theory_sim.cnn.plotting as plotting
    from theory_sim.cnn.simulate_verb import write_trajectory_figure
    from theory_sim.config import SimConfig

    traj = pd.DataFrame({"step": [0, 1, 2] * 2, "seed": [0] * 3 + [1] * 3, "optimizer": "sgd",
                         "train_loss": [np.nan] * 6, "test_error": [0.3, np.inf, np.nan] * 2})
    for loss in (np.nan, 0.0):
        traj["train_loss"] = loss
        assert write_trajectory_figure(traj, tmp_path / "trajectory.png", SimConfig(), [0, 1])
        assert capsys.readouterr().err == "" and [p.name for p in tmp_path.iterdir()] == ["trajectory.png"]
        (tmp_path / "trajectory.png").unlink()

    def cannot_draw(*args, **kwargs):
        raise ValueError("Axis limits cannot be\nNaN or Inf")

    monkeypatch.setattr(plotting, "plot_trajectory", cannot_draw)
    assert not write_trajectory_figure(traj, tmp_path / "trajectory.png", SimConfig(), [0, 1])
    assert one_line(capsys) == "warning: trajectory.png not drawn: Axis limits cannot be NaN or Inf"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# 6. sweeps: foreign results, interrupts, bad shards, a changed chunking, concurrent sweeps, broken tables
# --------------------------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def slow_sweep(faults_sweep):
    """The faults sweep made long enough to interrupt: 300 epochs at d = 400, 800, 1600, 2 seeds, chunks of 2."""
    return faults_sweep.replace("epochs = 2", "epochs = 300").replace("values = [20, 40]",
                                                                     "values = [400, 800, 1600]") \
        .replace("chunk_runs = 8", "chunk_runs = 2").replace("seeds = 1", "seeds = 2")


def _spec(tmp_path, text: str, name: str = "faults.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _sweep(spec: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", str(spec), "--out", str(out), "--executor", "inline", "--no-figures", "--no-progress", *extra]


def test_sweep_refuses_a_directory_of_foreign_results(faults_sweep, tmp_path, capsys):
    """A copy of a committed results directory (results.parquet + results.json, no spec.json) is never replaced."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(ROOT / "figures" / "results" / "phase_diagram_quick", out)
    before = snapshot(out)
    assert main(_sweep(_spec(tmp_path, faults_sweep), out)) == 2
    assert "spec differs" in one_line(capsys)
    assert snapshot(out) == before
    (out / "results.json").unlink()   # no record at all of which spec made them: refused too
    before = snapshot(out)
    assert main(_sweep(_spec(tmp_path, faults_sweep), out)) == 2
    assert "no spec.json or results.json" in one_line(capsys)
    assert snapshot(out) == before


def test_sweep_refuses_a_changed_chunking(faults_sweep, tmp_path, capsys):
    spec = _spec(tmp_path, faults_sweep)
    out = tmp_path / "out"
    assert main(_sweep(spec, out)) == 0
    capsys.readouterr()
    before = snapshot(out / "shards")
    other = _spec(tmp_path, faults_sweep.replace("chunk_runs = 8", "chunk_runs = 2"), "other.toml")
    assert main(_sweep(other, out)) == 2
    assert "chunk_runs changed from 8 to 2" in one_line(capsys)
    assert snapshot(out / "shards") == before


@pytest.mark.parametrize("damage", ["drop_column", "nan_test_error", "drop_trajectory_column", "missing_run"])
def test_a_damaged_shard_is_recomputed_not_trusted(faults_sweep, damage, tmp_path):
    from theory_sim.sweeps.spec import SweepSpec
    from theory_sim.sweeps.store import missing_chunks, shard_path

    spec_path = _spec(tmp_path, faults_sweep.replace("chunk_runs = 8", "chunk_runs = 2"))
    out = tmp_path / "out"
    assert main(_sweep(spec_path, out)) == 0
    results = pd.read_parquet(out / "results.parquet")
    spec = SweepSpec.from_toml(spec_path)
    kind = "trajectories" if damage == "drop_trajectory_column" else "results"
    path = shard_path(out, 1, kind)
    df = pd.read_parquet(path)
    if damage == "drop_column":
        df = df.drop(columns=["train_loss"])
    elif damage == "nan_test_error":
        df["test_error"] = np.nan
    elif damage == "drop_trajectory_column":
        df = df.drop(columns=["rhobar_mean"])
    else:
        df = df.iloc[1:]
    df.to_parquet(path)
    assert missing_chunks(spec, out) == [1]
    assert main(_sweep(spec_path, out)) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), results)


def _wait_for(predicate, timeout: float) -> bool:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _workers_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == pid and b"spawn_main" in cmd and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see the workers")
@pytest.mark.parametrize("how", ["ctrl_c", "ctrl_c_twice", "sigterm"])
@pytest.mark.slow
def test_an_interrupted_sweep_stops_promptly_and_resumes(slow_sweep, how, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or Slurm's SIGTERM: the sweep ends its
    workers within seconds, prints one line saying how to resume, keeps every finished shard; the same command
    then finishes the work."""
    import signal
    import subprocess
    import sys
    import time

    spec = _spec(tmp_path, slow_sweep)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "theory_sim", "sweep", str(spec), "--out", str(out), "--workers", "2",
           "--no-figures"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert _wait_for(lambda: list((out / "shards").glob("chunk-*[0-9].parquet")), 120), "no shard appeared"
    workers = _workers_of(proc.pid)
    assert workers
    done = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("chunk-*.parquet")}
    t0 = time.time()
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
        if how == "ctrl_c_twice":
            time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=30)[1]
    assert time.time() - t0 < 15, "the sweep did not stop promptly"
    assert proc.returncode == (143 if how == "sigterm" else 130)   # 128 + the signal, as a shell reports it
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "re-run the same command" in lines[0], err
    assert _wait_for(lambda: all(_gone(w) for w in workers), 10), "workers outlived the interrupted sweep"
    for p, mtime in done.items():   # finished shards are kept, untouched
        assert p.stat().st_mtime_ns == mtime
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "results.parquet").exists()


@pytest.mark.slow
def test_two_concurrent_sweeps_share_the_work(slow_sweep, tmp_path):
    """Two sweeps into one DIR claim chunks through lock files: together they compute every chunk once."""
    import re
    import subprocess
    import sys

    spec = _spec(tmp_path, slow_sweep)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "theory_sim", "sweep", str(spec), "--out", str(out), "--executor", "inline",
           "--no-figures"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    counts = [int(re.search(r"(\d+) of (\d+) chunks computed", o[0]).group(1)) for o in outs]
    total = int(re.search(r"of (\d+) chunks computed", outs[0][0]).group(1))
    assert sum(counts) == total and min(counts) >= 1, counts
    assert not list((out / "shards").glob("*.lock"))
    straight = tmp_path / "straight"
    assert subprocess.run(cmd[:6] + [str(straight)] + cmd[7:], capture_output=True).returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet").drop(columns="chunk"),
                                  pd.read_parquet(straight / "results.parquet").drop(columns="chunk"))


@pytest.fixture(scope="module")
def finished_sweep(faults_sweep, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "out"
    assert main(_sweep(_spec(tmp, faults_sweep), out)) == 0
    return out


@pytest.mark.parametrize("damage", ["missing_column", "garbage", "empty", "broken_spec_json", "spec_not_a_spec"])
@pytest.mark.parametrize("verb", ["verify", "figures", "sweep-status"])
def test_post_processing_of_a_broken_directory_is_one_line(damage, verb, finished_sweep, tmp_path, capsys):
    import shutil

    out = tmp_path / "broken"
    shutil.copytree(finished_sweep, out)
    capsys.readouterr()
    if damage == "missing_column":
        pd.read_parquet(out / "results.parquet").drop(columns=["test_error"]).to_parquet(out / "results.parquet")
    elif damage == "garbage":
        (out / "results.parquet").write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        pd.read_parquet(out / "results.parquet").iloc[:0].to_parquet(out / "results.parquet")
    elif damage == "broken_spec_json":
        (out / "spec.json").write_text("{not json")
    else:
        (out / "spec.json").write_text('{"spec": {"grid": 3}}')
    before = snapshot(out)
    rc = main([verb, str(out)])
    if verb == "sweep-status" and damage in ("missing_column", "garbage", "empty"):
        assert rc == 0   # status reports the table as unusable instead of "written"
        assert "results.parquet UNUSABLE" in capsys.readouterr().out
    else:
        assert rc == 2
        assert str(out) in one_line(capsys)
    for name in ("results.parquet", "results.json", "spec.json", "trajectories.parquet"):
        assert snapshot(out).get(name) == before.get(name)


def test_sharpness_of_a_corrupt_final_state_is_one_line(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = run / "final_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    assert main(["sharpness", str(run)]) == 2
    assert "final_state.pt is not a readable simulate state" in one_line(capsys)
