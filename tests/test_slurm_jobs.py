"""How a sweep reads its chunk jobs' states (theory_sim.sweeps.slurm) and reports a failed chunk, against stand-in
``squeue``/``sacct`` scripts on PATH that print fixed answers (the real cluster: tests/test_slurm.py)."""
import json
import time

import pytest

from theory_sim.cli import main
from theory_sim.sweeps.runner import MAX_FAILURE_LINES, ChunksFailed, _wait_for_chunks, check_submitit_options
from theory_sim.sweeps.slurm import failure_line, job_states
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.store import pending_chunks

SPEC = {"name": "jobs", "seeds": 1, "chunk_runs": 1,
        "base": {"n": 8, "batch_size": 4, "epochs": 1, "n_test": 0, "n_mc": 100},
        "grid": {"d": {"values": [20, 30, 40]}, "mu_norm": {"values": [1.0]}},
        "optimizers": [{"label": "sgd", "optimizer": "sgd"}]}


@pytest.fixture
def slurm_answers(tmp_path, monkeypatch):
    """Stand-ins for squeue and sacct: each prints the text set for it (``answers(squeue=..., sacct=...)``, None:
    the command fails as when no controller answers) and logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cmd in ("squeue", "sacct"):
        script = bin_dir / cmd
        script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/{cmd}.calls\n'
                          f'[ -f {tmp_path}/{cmd}.out ] || exit 1\ncat {tmp_path}/{cmd}.out\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    def answers(squeue=None, sacct=None):
        for cmd, text in (("squeue", squeue), ("sacct", sacct)):
            path = tmp_path / f"{cmd}.out"
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)

    def calls(cmd):
        path = tmp_path / f"{cmd}.calls"
        return path.read_text().splitlines() if path.exists() else []

    answers.calls = calls
    return answers


def test_states_from_squeue_then_sacct(slurm_answers):
    slurm_answers(squeue="7_0|RUNNING\n7_1|COMPLETED\n7_[3-4]|PENDING\n", sacct="9|CANCELLED by 0\n7_5|TIMEOUT\n")
    states = job_states(["7_0", "7_1", "7_2", "9", "7_5"])
    # 7_2: neither knows it; the folded pending range is not read as a job; sacct's "CANCELLED by 0" is CANCELLED
    assert states == {"7_0": "RUNNING", "7_1": "COMPLETED", "9": "CANCELLED", "7_5": "TIMEOUT"}
    assert slurm_answers.calls("squeue")[0].split()[-1] == "--jobs=7,9"   # one call for all arrays
    assert slurm_answers.calls("sacct")[0].split()[-1] == "--jobs=7,9"    # only the jobs squeue did not list


def test_no_controller_is_told_apart_from_unknown_jobs(slurm_answers):
    slurm_answers(squeue=None, sacct=None)
    assert job_states(["7_0"]) is None                       # Slurm cannot be asked
    assert job_states([]) == {}
    slurm_answers(squeue="", sacct=None)                     # it answers, and knows no such job
    assert job_states(["7_0"]) == {}


def _submitted(out, entries):
    out.mkdir(parents=True, exist_ok=True)
    (out / "submitted.json").write_text(json.dumps({str(i): e for i, e in entries.items()}))


def test_pending_chunks_ask_slurm_and_fall_back_to_the_time_limit(slurm_answers, tmp_path):
    out = tmp_path / "sweep"
    later, past = time.time() + 3600, time.time() - 1
    _submitted(out, {0: {"job_id": "5_0", "cluster": "slurm", "deadline": later},
                     1: {"job_id": "5_1", "cluster": "slurm", "deadline": later},
                     2: {"job_id": "5_2", "cluster": "slurm", "deadline": later},
                     3: {"job_id": "123", "cluster": "local", "deadline": later},
                     4: {"job_id": "124", "cluster": "local", "deadline": past}})
    slurm_answers(squeue="5_0|PENDING\n5_1|CANCELLED\n", sacct="")
    # a cancelled or vanished job frees its chunk at once, though its time limit is hours away
    assert pending_chunks(out, [0, 1, 2, 3, 4]) == [0, 3]
    slurm_answers(squeue=None)   # no controller: the time limits decide
    assert pending_chunks(out, [0, 1, 2, 3, 4]) == [0, 1, 2, 3]


def test_failure_lines_name_the_chunk_state_log_and_remedy(tmp_path):
    line = failure_line(tmp_path, 3, "8_3", "TIMEOUT", 30)
    assert line == (f"chunk 3 (job 8_3) ended TIMEOUT without writing its shard; "
                    f"log: {tmp_path}/submitit/8_3_0_log.err; it ran past --timeout-min (was 30): "
                    f"re-run the same command with a larger --timeout-min")
    assert "\n" not in failure_line(tmp_path, 3, "8_3", "FAILED", 30)
    assert "--timeout-min" not in failure_line(tmp_path, 3, "8_3", "FAILED", 30)
    assert "no longer listed by Slurm" in failure_line(tmp_path, 3, "8_3", None)
    assert "re-run the same command to resubmit it" in failure_line(tmp_path, 3, "8_3", "CANCELLED")


def test_waiting_reports_each_chunk_whose_job_ended_without_a_shard(tmp_path):
    """The loop ends once no job is active; chunks whose job ended without a shard are named, at most
    MAX_FAILURE_LINES lines then one with the rest."""
    grid = {**SPEC["grid"], "d": {"values": list(range(20, 20 + 2 * MAX_FAILURE_LINES))}}
    spec = SweepSpec.from_dict({**SPEC, "grid": grid})
    n = len(spec.chunks())
    out = tmp_path / "sweep"
    _submitted(out, {i: {"job_id": f"4_{i}", "cluster": "slurm", "deadline": time.time() + 60, "timeout_min": 1}
                     for i in range(n)})
    answers = iter([{f"4_{i}": "RUNNING" for i in range(n)}, {f"4_{i}": "TIMEOUT" for i in range(n)}])

    class Bar:
        def update(self, k):
            raise AssertionError("no chunk has a shard")

    with pytest.raises(ChunksFailed) as err:
        _wait_for_chunks(spec, out, list(range(n)), lambda ids: next(answers), Bar())
    lines = err.value.lines
    assert len(lines) == MAX_FAILURE_LINES + 1 and lines[0].startswith("chunk 0 (job 4_0) ended TIMEOUT")
    assert lines[-1] == f"... and {n - MAX_FAILURE_LINES} more chunks without a shard: " \
                        f"{list(range(MAX_FAILURE_LINES, n))}"


def test_bad_job_array_options_are_refused_before_any_work(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\nseeds = 1\n[base]\nn = 8\nbatch_size = 4\nepochs = 1\nn_test = 0\n'
                    'n_mc = 100\n[grid.d]\nvalues = [20]\n[grid.mu_norm]\nvalues = [1.0]\n'
                    '[[optimizers]]\nlabel = "sgd"\noptimizer = "sgd"\n')
    for flag, name in (("--timeout-min", "timeout_min"), ("--array-parallelism", "array_parallelism"),
                       ("--cpus-per-task", "cpus_per_task")):
        out = tmp_path / name
        assert main(["sweep", str(path), "--out", str(out), "--executor", "submitit", "--cluster", "local", flag,
                     "0", "--no-figures"]) == 2
        assert name in capsys.readouterr().err and not out.exists()
    check_submitit_options(timeout_min=1, cpus_per_task=1, gpus_per_node=0, array_parallelism=1)   # the bounds pass
