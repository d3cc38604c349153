"""Sweeps never lose a finished result: kill and resume, corrupt shards, executors, figures and verify."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from theory_sim.cli import main
from theory_sim.config import ConfigError
from theory_sim.sweeps.runner import run_sweep
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.status import status
from theory_sim.sweeps.store import missing_chunks, shard_path
from theory_sim.sweeps.verify import verify_table

def write_spec(tmp_path, text, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def reference(tiny_sweep, tmp_path_factory):
    """An uninterrupted inline run of the tiny spec."""
    tmp = tmp_path_factory.mktemp("ref")
    spec = SweepSpec.from_toml(write_spec(tmp, tiny_sweep()))
    return spec, run_sweep(spec, tmp / "out", progress=False), tmp / "out"


def test_spec_expansion_and_validation(tiny_sweep, tmp_path):
    spec = SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep()))
    assert len(spec.runs) == 2 * 2 * 3 * 2 and len(spec.chunks()) == 6
    assert all(len({c.d for _, c in chunk}) == 1 for chunk in spec.chunks())
    bad = [("[grid.d]\nvalues = [20, 40]", "[grid.x]\nvalues = [1]", "grid axis"),
           ('values = [20, 40]', 'values = [0, 40]', "d must"),
           ("seeds = 2", "seeds = 0", "seeds must"),
           ("epochs = 3", "epochs = 3\nbogus = 1", "base.bogus"),
           ("sam_steps = 4", "sam_steps = -4", "sam_steps must"),
           ('label = "sam"', 'label = "sgd"', "labels must be distinct"),
           ("stop = 2.0", "stop = -2.0", "stop must")]
    for old, new, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep().replace(old, new), "bad.toml"))
    with pytest.raises(ConfigError, match="must include the axis 'd'"):
        SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep().replace("[grid.d]\nvalues = [20, 40]", ""), "bad.toml"))


def test_ascent_step_is_a_sweep_axis(tiny_sweep, tmp_path):
    """msam's step length as a grid axis: in every run key and cell, each value reaching its runs, bad values
    refused with their key path; verify reads the table (one boundary per ascent_step)."""
    text = tiny_sweep().replace('label = "sam"\noptimizer = "sam"',
                                'label = "msam3"\noptimizer = "msam"\nascent_steps = 3')
    text = text.replace("[[optimizers]]", "[grid.ascent_step]\nvalues = [0.2, 1.0]\n[[optimizers]]", 1)
    spec = SweepSpec.from_toml(write_spec(tmp_path, text, "steps.toml"))
    assert "ascent_step" in spec.extra_axes and "ascent_step" in spec.run_key and "ascent_step" in spec.cell_dims
    assert {c.ascent_step for _, c in spec.runs} == {0.2, 1.0} and len(spec.runs) == 2 * 2 * 2 * 3 * 2
    df = run_sweep(spec, tmp_path / "out", progress=False)
    msam = df[df.label == "msam3"].set_index(["d", "mu_norm", "seed", "ascent_step"]).test_error.unstack()
    assert not np.allclose(msam[0.2], msam[1.0])            # the step length changes the runs
    report = verify_table(df, spec)
    assert {b["ascent_step"] for b in report["boundaries"]} == {0.2, 1.0}
    for bad, msg in (("values = [0.2, 1.0]", "ascent_step must be in (0.0, inf]"),):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            SweepSpec.from_toml(write_spec(tmp_path, text.replace(bad, "values = [0.0, 1.0]"), "bad.toml"))


def test_results_table_has_a_row_per_cell_seed_optimizer(reference):
    spec, df, out = reference
    assert len(df) == 24 and not df.duplicated(["label", "d", "mu_norm", "seed"]).any()
    for col in ("label", "optimizer", "d", "mu_norm", "n", "P", "sigma_p", "flip_p", "seed", "eta", "tau_effective",
                "train_loss", "test_error", "diverged"):
        assert col in df.columns
    assert (out / "results.json").exists()
    again = run_sweep(spec, out, progress=False)  # nothing missing: nothing recomputed, same table
    pd.testing.assert_frame_equal(again, df)


def test_changed_spec_in_existing_directory_is_refused(tiny_sweep, reference, tmp_path):
    _, _, out = reference
    other = SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep(base={"epochs": 4}), "other.toml"))
    with pytest.raises(ConfigError, match="spec differs"):
        run_sweep(other, out, progress=False)
    rechunked = SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep(chunk_runs=3), "r.toml"))
    assert rechunked.digest() == reference[0].digest()  # chunking does not change the results


def test_corrupt_partial_and_wrong_shards_are_recomputed(reference, tmp_path):
    spec, df, _ = reference
    out = tmp_path / "out"
    run_sweep(spec, out, progress=False)
    shard_path(out, 0).write_bytes(b"not a parquet file")                       # corrupt
    data = shard_path(out, 1).read_bytes()
    shard_path(out, 1).write_bytes(data[: len(data) // 2])                       # truncated
    shard_path(out, 3).write_bytes(shard_path(out, 2).read_bytes())              # the wrong chunk's runs
    os.remove(shard_path(out, 4))                                                # missing
    assert missing_chunks(spec, out) == [0, 1, 3, 4]
    assert status(out)["chunks_done"] == 2
    untouched = shard_path(out, 5).stat().st_mtime_ns
    pd.testing.assert_frame_equal(run_sweep(spec, out, progress=False), df)
    assert shard_path(out, 5).stat().st_mtime_ns == untouched  # only the missing work was redone


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_results(tiny_sweep, tmp_path):
    """A real subprocess, killed with SIGKILL after its first shard, then the same command again."""
    slow = tiny_sweep(base={"epochs": 150}).replace("values = [20, 40]", "values = [800, 1600]")
    spec_path = write_spec(tmp_path, slow, "slow.toml")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "theory_sim", "sweep", str(spec_path), "--out", str(out), "--no-figures"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "shards").glob("chunk-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    spec = SweepSpec.from_toml(spec_path)
    done_before = len(spec.chunks()) - len(missing_chunks(spec, out))
    assert 1 <= done_before < len(spec.chunks()), "the kill must land mid-way"
    assert not (out / "results.parquet").exists()
    # a killed writer may leave a temp file (never a half-written shard): plant one as a dead writer would
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    planted = out / "shards" / f".chunk-00099.parquet.{dead.pid}.abc123.tmp"
    planted.write_bytes(b"half a shard")
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("chunk-*.parquet")}
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    for p, t in mtimes.items():
        assert p.stat().st_mtime_ns == t
    assert not list((out / "shards").glob(".*.tmp")) and not list(out.glob(".*.tmp")), "stale temp files remain"
    resumed = pd.read_parquet(out / "results.parquet")
    straight = run_sweep(spec, tmp_path / "straight", progress=False)
    pd.testing.assert_frame_equal(resumed, straight)


@pytest.mark.slow
def test_process_pool_executor_matches_inline(reference, tmp_path):
    spec, df, _ = reference
    pd.testing.assert_frame_equal(run_sweep(spec, tmp_path / "pool", executor="process", workers=2,
                                            progress=False), df)


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_submitit_local_executor_two_chunks(tiny_sweep, tmp_path):
    pytest.importorskip("submitit")
    spec = SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep(chunk_runs=12)))
    assert len(spec.chunks()) == 2
    df = run_sweep(spec, tmp_path / "sub", executor="submitit", progress=False,
                   submitit_options={"cluster": "local", "timeout_min": 4, "cpus_per_task": 1})
    inline = run_sweep(spec, tmp_path / "inline", progress=False)
    pd.testing.assert_frame_equal(df, inline)
    assert list((tmp_path / "sub" / "submitit").glob("*_0_log.out"))  # ran as real submitit jobs


def test_figures_and_verify_from_results_alone(reference, tmp_path, capsys):
    import shutil

    _, _, src = reference
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("results.parquet", "results.json"):   # no shards, no spec.json: nothing to retrain from
        shutil.copy(src / name, out / name)
    assert main(["figures", str(out)]) == 0
    png = out / "figures" / "phase_diagram.png"
    assert png.stat().st_size > 20_000
    assert main(["verify", str(out)]) == 0
    assert (out / "verify.json").exists() and "## Claims" in (out / "verify.md").read_text()
    assert main(["sweep-status", str(src)]) == 0
    assert "6/6 chunks" in capsys.readouterr().out


# run parameters that put every cell of synthetic_table inside the theorems' domain (theory_sim.claims.DOMAIN):
# d >= n^2 log(n m / 0.1) = 96, init scale <= 0.12, one step's noise memorisation <= 0.4
IN_DOMAIN = dict(m=10, sigma_0=0.001, eta=0.01, batch_size=4, c_tau=1.0, model="c23", depth=2,
                 lr_schedule="constant", norm="2", m_sharpness=0)


def synthetic_table(slopes: dict, seeds=6, noise=0.01, rng=np.random.default_rng(0)):
    """Test errors of a known boundary mu*(d) = 0.6 d^slope: err = p + (0.5 - p) / (1 + (mu / mu*)^6) + noise."""
    p = 0.1
    rows = []
    for label, slope in slopes.items():
        for d in (100, 200, 400, 800, 1600, 3200):
            mu_star = 0.6 * d ** slope
            for mu in np.geomspace(0.3, 12, 49):
                for s in range(seeds):
                    err = p + (0.5 - p) / (1 + (mu / mu_star) ** 6) + noise * rng.standard_normal()
                    rows.append(dict(label=label, optimizer=label, d=d, mu_norm=mu, n=4, P=2, sigma_p=1.0, seed=s,
                                     flip_p=p, test_error=err, diverged=False, **IN_DOMAIN))
    return pd.DataFrame(rows)


SYNTHETIC_SPEC = {"name": "synthetic", "seeds": 6,
                  "grid": {"d": [100, 200, 400, 800, 1600, 3200],
                           "mu_norm": {"start": 0.3, "stop": 12, "num": 49, "spacing": "log"}},
                  "optimizers": [{"label": "sgd"}, {"label": "sam", "optimizer": "sam"}],
                  "base": {"epochs": 1, "n": 4, "batch_size": 4}}


def _line(report, claim, variant):
    rows = [c for c in report["claims"] if c["claim"] == claim and c["variant"] == variant]
    assert len(rows) == 1, rows
    return rows[0]


def test_verify_recovers_a_known_slope():
    spec = SweepSpec.from_dict(SYNTHETIC_SPEC)
    report = verify_table(synthetic_table({"sgd": 0.25, "sam": 0.02}), spec)
    sgd, sam = _line(report, "sgd_boundary_slope", "sgd"), _line(report, "sam_boundary_slope", "sam")
    assert abs(sgd["estimate"] - 0.25) < 0.02 and sgd["ci_low"] <= 0.25 <= sgd["ci_high"]
    assert sgd["verdict"] == "consistent" and sgd["cells_in_domain"] == 6 and sgd["seeds"] == 6
    assert sgd["ci_high"] - sgd["ci_low"] < 0.05
    assert sam["verdict"] == "consistent" and abs(sam["estimate"] - 0.02) < 0.02
    assert _line(report, "sam_below_sgd", "sam vs sgd")["verdict"] == "consistent"
    wrong = verify_table(synthetic_table({"sgd": 0.36, "sam": 0.3}), spec)   # located on the grid up to d = 3200
    assert _line(wrong, "sgd_boundary_slope", "sgd")["verdict"] == "contradicted"
    assert _line(wrong, "sam_boundary_slope", "sam")["verdict"] == "contradicted"
    # one verdict per claim line, no per-cell counts; verify.md opens with them
    assert report["summary"]["counts"]["consistent"] == 3 and not report["summary"]["counts"]["contradicted"]
    line = wrong["markdown"].splitlines()[2]
    assert line.startswith("**Verdicts:** claims:") and "contradicted: sgd_boundary_slope (sgd, d)" in line
    # the same sweep with its cells outside the domain (init scale > 1): not applicable, the fit exploratory
    outside = verify_table(synthetic_table({"sgd": 0.25, "sam": 0.02}).assign(sigma_0=0.1), spec)
    assert _line(outside, "sgd_boundary_slope", "sgd")["verdict"] == "not applicable"
    explore = [c for c in outside["claims"] if c["claim"] == "slope_outside_domain" and c["variant"] == "sgd"]
    assert len(explore) == 1 and explore[0]["verdict"] == "exploratory" and abs(explore[0]["estimate"] - 0.25) < 0.02


def test_verify_strict_exits_1_on_a_contradiction_and_quiet_prints_one_line(tmp_path, capsys):
    import json

    from theory_sim.io import save_table

    spec = SweepSpec.from_dict(SYNTHETIC_SPEC)
    for name, slopes, rc in (("good", {"sgd": 0.25, "sam": 0.02}, 0), ("bad", {"sgd": 0.36, "sam": 0.3}, 1)):
        out = tmp_path / name
        out.mkdir()
        save_table(synthetic_table(slopes).assign(train_loss=0.0), out / "results.parquet",
                   {"spec": spec.to_dict(), "digest": spec.digest()})
        assert main(["verify", str(out), "--strict", "--quiet"]) == rc
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == 1 and "claims:" in printed[0] and "trajectory claims not run" in printed[0]
        assert main(["verify", str(out)]) == 0             # without --strict: 0
        assert capsys.readouterr().out.startswith("# verify: synthetic")
        summary = json.loads((out / "verify.json").read_text())["summary"]
        assert bool(summary["counts"]["contradicted"]) == bool(rc)


def test_full_batch_over_an_n_grid_and_data_sharing_chunks(tiny_sweep, tmp_path):
    text = tiny_sweep().replace("batch_size = 4", 'batch_size = "full"').replace("n = 8\n", "") \
        + "\n[grid.n]\nvalues = [6, 12]\n"
    spec = SweepSpec.from_toml(write_spec(tmp_path, text, "full.toml"))
    assert all(cfg.batch_size == cfg.n for _, cfg in spec.runs)
    for chunk in spec.chunks():  # runs of one seed are consecutive: they share a data set and its matmul
        seeds = [cfg.seed for _, cfg in chunk]
        assert seeds == sorted(seeds)


@pytest.mark.timeout(300)
def test_submitit_no_wait_does_not_queue_chunks_twice(tiny_sweep, tmp_path, capsys):
    pytest.importorskip("submitit")
    import json

    spec = SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep(chunk_runs=12)))
    out = tmp_path / "nowait"
    opts = {"cluster": "local", "timeout_min": 4, "cpus_per_task": 1, "wait": False}
    assert run_sweep(spec, out, executor="submitit", progress=False, submitit_options=dict(opts)) is None
    first = json.loads((out / "submitted.json").read_text())
    assert sorted(first) == ["0", "1"]
    assert run_sweep(spec, out, executor="submitit", progress=False, submitit_options=dict(opts)) is None
    assert json.loads((out / "submitted.json").read_text()) == first  # nothing queued twice
    assert "not resubmitting" in capsys.readouterr().out
    deadline = time.time() + 240
    while missing_chunks(spec, out) and time.time() < deadline:
        time.sleep(0.5)
    df = run_sweep(spec, out, executor="inline", progress=False)  # the jobs' shards are aggregated, not recomputed
    assert len(df) == len(spec.runs) and status(out)["chunks_submitted_pending"] == 0


def axis_spec(text: str) -> str:
    return text.replace("[grid.d]\nvalues = [20, 40]", "[grid.d]\nvalues = [20, 40]\n[grid.c_tau]\nvalues = [0.5, 2.0]")


@pytest.mark.slow
def test_any_numeric_parameter_is_an_axis_that_resumes_and_draws(tiny_sweep, tmp_path):
    """A c_tau axis: it enters the run key, the shards, the boundaries (one per cell of the other axes) and the
    figures (a heatmap over any two axes); a killed-and-resumed sweep equals a straight one."""
    spec = SweepSpec.from_toml(write_spec(tmp_path, axis_spec(tiny_sweep())))
    assert spec.extra_axes == ("c_tau",) and "c_tau" in spec.run_key
    sam = [cfg for key, cfg in spec.runs if key[0] == "sam"]
    assert {cfg.c_tau for cfg in sam} == {0.5, 2.0}
    radius = {cfg.c_tau: cfg.sam_radius for cfg in sam if cfg.d == 20}
    assert radius[2.0] == pytest.approx(4 * radius[0.5])
    out = tmp_path / "out"
    straight = run_sweep(spec, out, progress=False)
    assert len(straight) == len(spec.runs) and set(straight.c_tau) == {0.5, 2.0}
    os.remove(shard_path(out, 1))                    # lose a chunk, as a killed sweep would
    os.remove(out / "results.parquet")
    assert missing_chunks(spec, out) == [1]
    pd.testing.assert_frame_equal(run_sweep(spec, out, progress=False), straight)
    report = main(["verify", str(out)])
    assert report == 0
    import json

    bnd = pd.DataFrame(json.loads((out / "verify.json").read_text())["boundaries"])
    assert set(bnd.c_tau) == {0.5, 2.0} and len(bnd) == 2 * 2 * 2   # label x d x c_tau
    assert main(["figures", str(out), "--x", "d", "--y", "c_tau"]) == 0
    assert list((out / "figures").glob("phase_c_tau_vs_d_*.png"))
    assert main(["figures", str(out), "--x", "c_tau"]) == 0
    assert main(["figures", str(out), "--x", "eta"]) == 2   # not a swept axis: one line, exit 2


def test_cell_seeding_independent_draws_every_cell_afresh(tiny_sweep, tmp_path):
    shared = SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep()))
    fresh = SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep().replace('name = "tiny"',
                                                                  'name = "tiny"\ncell_seeding = "independent"'),
                                           "fresh.toml"))
    assert fresh.digest() != shared.digest()
    assert all(cfg.data_seed is None for _, cfg in shared.runs)
    by_cell = {}
    for key, cfg in fresh.runs:
        by_cell.setdefault((cfg.d, cfg.mu_norm, cfg.seed), set()).add(cfg.rng_seed)
    assert all(len(v) == 1 for v in by_cell.values())          # every optimizer of a cell: the same data (paired)
    seeds0 = [next(iter(v)) for (d, mu, s), v in by_cell.items() if s == 0]
    assert len(set(seeds0)) == len(seeds0)                      # every cell: its own data
    again = SweepSpec.from_toml(tmp_path / "fresh.toml")
    assert [c.rng_seed for _, c in again.runs] == [c.rng_seed for _, c in fresh.runs]   # same spec, same numbers
    df = run_sweep(fresh, tmp_path / "fresh_out", progress=False)
    ref = run_sweep(shared, tmp_path / "shared_out", progress=False)
    assert not np.allclose(df.train_loss, ref.train_loss)
    assert set(df.seed) == set(ref.seed)                        # the replicate index is still 0..seeds-1


def shared_spec(text: str) -> str:
    return text.replace("[grid.d]\nvalues = [20, 40]",
                        "[grid.d]\nvalues = [20, 40, 80]\n[grid.c_tau]\nvalues = [0.5, 1.0, 2.0]")


@pytest.mark.slow
def test_a_run_is_trained_once_for_every_cell_it_serves(tiny_sweep, tmp_path, capsys):
    """A c_tau axis: sgd does not read c_tau, so each (d, ||mu||, seed) sgd run is trained once and joined to the
    three c_tau cells; the table still has a row per cell x seed x variant, the joined rows equal a run trained at
    that c_tau by itself, and verify fits no sgd slope in c_tau (nor sgd's d-slope once per c_tau)."""
    import json

    from theory_sim.cnn.train import train_ensemble
    from theory_sim.sweeps.store import prepare

    spec = SweepSpec.from_toml(write_spec(tmp_path, shared_spec(tiny_sweep())))
    trained = [key for key, _ in spec.trained_runs]
    assert sum(k[0] == "sgd" for k in trained) == 3 * 3 * 2              # d x mu x seed, not x c_tau
    assert sum(k[0] == "sam" for k in trained) == 3 * 3 * 3 * 2
    assert len(spec.runs) == len(trained) + len(spec.joined_runs) == 2 * 3 * 3 * 3 * 2
    assert sum(len(c) for c in spec.chunks()) == len(trained)
    assert spec.ignored_axes("sgd") == ("c_tau",) and spec.ignored_axes("sam") == ()
    out = tmp_path / "out"
    df = run_sweep(spec, out, progress=False)
    assert len(df) == len(spec.runs) and not df.duplicated(list(spec.run_key)).any()
    sgd = df[df.label == "sgd"]
    per_ctau = sgd.groupby("c_tau").train_loss.apply(lambda s: s.to_numpy())
    assert np.array_equal(per_ctau[0.5], per_ctau[2.0]) and set(sgd.c_tau) == {0.5, 1.0, 2.0}
    alone = [cfg for key, cfg in spec.runs if key[0] == "sgd" and cfg.c_tau == 2.0]   # as the old layout trained it
    ref = pd.concat([train_ensemble([c for c in alone if c.d == d], track=False, log=False, progress=False,
                                    heldout=False, reconstruct=False).summary for d in (20, 40, 80)])
    ours = sgd[sgd.c_tau == 2.0].set_index(["d", "mu_norm", "seed"]).sort_index()
    ref = ref.set_index(["d", "mu_norm", "seed"]).sort_index()
    assert np.array_equal(ours.train_loss.to_numpy(), ref.train_loss.to_numpy())
    assert np.array_equal(ours.test_error.to_numpy(), ref.test_error.to_numpy())
    traj = pd.read_parquet(out / "trajectories.parquet")
    assert traj.groupby(list(spec.run_key)).ngroups == len(spec.runs)
    assert main(["verify", str(out)]) == 0
    claims = json.loads((out / "verify.json").read_text())["claims"]
    slopes = [c for c in claims if c["scope"] == "all cells"]   # the fits over every located cell
    assert not [c for c in slopes if c["variant"] == "sgd" and c["dim"] == "c_tau"]
    assert [c for c in slopes if c["variant"] == "sam" and c["dim"] == "c_tau"]
    assert len([c for c in slopes if c["variant"] == "sgd" and c["dim"] == "d"]) == 1     # not once per c_tau
    assert len([c for c in slopes if c["variant"] == "sam" and c["dim"] == "d"]) == 3
    assert all(c["fixed"]["c_tau"] == "any" for c in slopes if c["variant"] == "sgd")
    # the shards of the deduped layout validate: a resume computes nothing
    assert missing_chunks(spec, out) == []
    assert run_sweep(spec, out, progress=False).attrs["chunks_computed"] == 0
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--out", str(out), "--executor", "inline", "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()   # the run line and verify's one-line summary
    assert len(printed) == 2 and "claims:" in printed[1] and "figures in" in printed[1]
    # a directory whose spec.json predates the layout (one run per cell) is refused with one clear line
    stored = json.loads((out / "spec.json").read_text())
    stored.pop("layout")
    (out / "spec.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="new --out"):
        prepare(spec, out)
    plain = SweepSpec.from_toml(write_spec(tmp_path, tiny_sweep(), "plain.toml"))  # no joined runs: the same layout
    assert plain.joined_runs == [] and plain.trained_runs == plain.runs


def test_independent_cell_seeding_shares_no_runs(tiny_sweep, tmp_path):
    spec = SweepSpec.from_toml(write_spec(tmp_path, shared_spec(tiny_sweep()).replace('name = "tiny"',
                                                                        'name = "tiny"\ncell_seeding = "independent"')))
    assert spec.joined_runs == []   # every c_tau cell draws its own data: no two runs are the same


def test_ignored_parameters_do_not_change_a_run():
    """Oracle for theory_sim.config.ignored_parameters: changing a parameter an optimizer ignores leaves its run
    bitwise the same; changing one it reads (the wrong input) does not."""
    from theory_sim.cnn.train import train_ensemble
    from theory_sim.config import OPTIMIZERS, SimConfig, ignored_parameters

    other = {"tau": 0.3, "c_tau": 3.0, "sam_steps": 2, "ascent_steps": 3, "ascent_step": 0.5, "m_sharpness": 2,
             "norm": "inf", "asam_eta": 0.2}
    for opt in OPTIMIZERS:
        base = SimConfig(optimizer=opt, d=30, n=8, batch_size=4, epochs=2, n_test=0, n_mc=200, sigma_0=0.1,
                         ascent_steps=2, sam_steps=None)
        cfgs = [base] + [base.replace(**{p: other[p]}) for p in ignored_parameters(opt)]
        if opt != "sgd":
            cfgs.append(base.replace(c_tau=3.0))   # read by every SAM-family rule
        res = train_ensemble(cfgs, track=False, log=False, progress=False, heldout=False, reconstruct=False).summary
        same = res.train_loss.to_numpy()[:1 + len(ignored_parameters(opt))]
        assert np.all(same == same[0]), opt
        if opt != "sgd":
            assert res.train_loss.iloc[-1] != same[0], opt


def test_with_seeds_is_replace_with_the_seed_checks():
    """A sweep builds each cell's replicates with SimConfig.with_seeds (checks seed and data_seed only): the same
    config as replace(), which re-validates everything; a seed out of range is still refused."""
    from theory_sim.config import SimConfig

    proto = SimConfig.preset("kou2023", d=300, mu_norm=2.5, n_test=0)
    for seed, data_seed in ((0, None), (7, 123), (2**63 - 1, 0)):
        new = proto.with_seeds(seed, data_seed)
        assert new == proto.replace(seed=seed, data_seed=data_seed)
        assert new.to_dict() == proto.replace(seed=seed, data_seed=data_seed).to_dict()
    assert proto.with_seeds(3, None) != proto.with_seeds(4, None)
    assert proto.seed == 0 and proto.data_seed is None   # the prototype is unchanged
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(ConfigError, match="seed"):
            proto.with_seeds(bad, None)
        with pytest.raises(ConfigError, match="data_seed"):
            proto.with_seeds(0, bad)
