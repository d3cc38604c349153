"""Sweeps and CIFAR runs on a real Slurm cluster (sbatch job arrays through submitit).

Marked ``slurm``: not in the default run; ``python -m pytest -q -m slurm`` after ``.ci/slurm_cluster.sh start``
(CONTRIBUTING.md). Each test skips, saying why, where ``sbatch`` is absent or no node is idle. The sweeps run the
command a user types (``python -m theory_sim sweep ... --executor submitit --cluster slurm``) in a subprocess; the
jobs import this checkout (PYTHONPATH, exported to them by sbatch).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from theory_sim.sweeps.runner import run_sweep
from theory_sim.sweeps.slurm import failure_line, job_states
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.store import shard_path

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[1]

# 16 runs in 4 chunks of 4: a few seconds per chunk job
SPEC = """
name = "slurm_tiny"
seeds = 2
chunk_runs = 4
[base]
n = 8
batch_size = 4
epochs = 3
n_test = 0
n_mc = 200
[grid.d]
values = [20, 30]
[grid.mu_norm]
values = [0.5, 2.0]
[[optimizers]]
label = "sgd"
optimizer = "sgd"
[[optimizers]]
label = "sam"
optimizer = "sam"
sam_steps = 4
"""


def _cluster_reason() -> str | None:
    """Why the Slurm tests cannot run here (None: they can)."""
    if shutil.which("sbatch") is None:
        return "sbatch not found (start a test cluster: sudo .ci/slurm_cluster.sh start)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install -e '.[cluster]')"
    try:
        nodes = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if nodes.returncode != 0:
        return f"sinfo failed: {' '.join(nodes.stderr.split())}"
    if not any(state.startswith(("idle", "mix")) for state in nodes.stdout.split()):
        return f"no idle Slurm node (sinfo: {' '.join(nodes.stdout.split()) or 'no nodes'})"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    reason = _cluster_reason()
    if reason:
        pytest.skip(reason)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}


def _sweep_cmd(spec_path: Path, out: Path, *extra: str, timeout_min: int = 5) -> list[str]:
    return [sys.executable, "-m", "theory_sim", "sweep", str(spec_path), "--out", str(out), "--executor", "submitit",
            "--cluster", "slurm", "--partition", "debug", "--cpus-per-task", "1", "--timeout-min", str(timeout_min),
            "--no-figures", *extra]


def _sweep_while(cmd: list[str], during, seconds: float) -> tuple[int, list[str], str]:
    """Run the sweep command, call ``during()`` while it waits for its jobs; its exit status, its ``error:`` lines
    and its whole stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        during()
        _, stderr = proc.communicate(timeout=seconds)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, [line for line in stderr.splitlines() if line.startswith("error:")], stderr


def _sweep(spec_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_sweep_cmd(spec_path, out, *extra), capture_output=True, text=True, env=_env(),
                          timeout=300)


def _submitted(out: Path) -> dict:
    return json.loads((out / "submitted.json").read_text())


def _wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"waited {seconds} s for {what}")
        time.sleep(0.2)


def _jobs_ended(job_ids) -> bool:
    states = job_states(job_ids)
    return states is not None and all(states.get(j) in (None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                                      for j in job_ids)


def _assert_same_table(got: pd.DataFrame, want: pd.DataFrame, key) -> None:
    """Bit for bit, after sorting by the run key."""
    def norm(df):
        return df.sort_values(list(key)).reset_index(drop=True)
    pd.testing.assert_frame_equal(norm(got), norm(want), check_exact=True)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The spec file, its SweepSpec, and its results table from the local process pool (the reference)."""
    root = tmp_path_factory.mktemp("slurm_sweep")
    path = root / "slurm_tiny.toml"
    path.write_text(SPEC)
    spec = SweepSpec.from_toml(path)
    assert len(spec.chunks()) == 4
    pool = run_sweep(spec, root / "pool", executor="process", workers=2, progress=False)
    return path, spec, pool


def test_job_array_matches_the_process_pool_bit_for_bit(sweep, tmp_path):
    path, spec, pool = sweep
    out = tmp_path / "arr"
    res = _sweep(path, out, "--array-parallelism", "2")
    assert res.returncode == 0, res.stderr
    assert "submitted 4 chunk jobs" in res.stdout and "4 of 4 chunks computed by this command" in res.stdout
    table = pd.read_parquet(out / "results.parquet")
    _assert_same_table(table, pool, spec.run_key)
    wrong = table.copy()   # the comparison is exact: one value off by one ulp must fail it
    wrong.loc[0, "test_error"] = float(wrong.loc[0, "test_error"]) * (1 + 2 ** -52) + 2 ** -1074
    with pytest.raises(AssertionError):
        _assert_same_table(wrong, pool, spec.run_key)
    # it really went through one sbatch job array, in the partition asked for, at most 2 tasks at once, logs in DIR
    jobs = {v["job_id"] for v in _submitted(out).values()}
    array = {j.split("_")[0] for j in jobs}
    assert len(array) == 1 and sorted(jobs) == [f"{next(iter(array))}_{i}" for i in range(4)]
    script = (out / "submitit" / f"{next(iter(array))}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --partition=debug" in script
    assert all((out / "submitit" / f"{j}_0_log.out").exists() for j in jobs)


def test_cancelled_array_tasks_are_recomputed_alone(sweep, tmp_path):
    """scancel of array tasks mid-sweep: the command names each cancelled chunk and exits 1; the same command again
    submits those chunks only, and the table equals the process pool's."""
    path, spec, pool = sweep
    out = tmp_path / "cancel"
    cancelled = []

    def cancel_two():
        _wait_until(lambda: shard_path(out, 0).exists(), 120, "the first chunk's shard")
        cancelled.extend([i for i in range(4) if not shard_path(out, i).exists()][-2:])
        assert len(cancelled) == 2
        subprocess.run(["scancel", *(_submitted(out)[str(i)]["job_id"] for i in cancelled)], check=True)

    first_rc, errors, stderr = _sweep_while(_sweep_cmd(path, out, "--array-parallelism", "1"), cancel_two, 180)
    first = _submitted(out)
    assert first_rc == 1, stderr
    assert [int(line.split()[2]) for line in errors] == cancelled, stderr
    # squeue lists a cancelled task that had not started no more; sacct, where there is accounting, says CANCELLED
    assert all(("CANCELLED" in line or "no longer listed" in line) and "_log.err" in line
               and "re-run the same command to resubmit it" in line
               for line in errors), stderr
    kept = {i: shard_path(out, i).stat().st_mtime_ns for i in range(4) if i not in cancelled}

    res = _sweep(path, out)
    assert res.returncode == 0, res.stderr
    assert "submitted 2 chunk jobs" in res.stdout and "2 of 4 chunks computed by this command" in res.stdout
    again = _submitted(out)
    assert {i for i in range(4) if again[str(i)]["job_id"] != first[str(i)]["job_id"]} == set(cancelled)
    assert {i: shard_path(out, i).stat().st_mtime_ns for i in kept} == kept   # the finished shards untouched
    _assert_same_table(pd.read_parquet(out / "results.parquet"), pool, spec.run_key)


def test_no_wait_then_the_same_command_aggregates_without_resubmitting(sweep, tmp_path):
    path, spec, pool = sweep
    out = tmp_path / "nowait"
    res = _sweep(path, out, "--no-wait")
    assert res.returncode == 0 and "submitted 4 chunk jobs" in res.stdout, res.stderr
    first = _submitted(out)
    jobs = [v["job_id"] for v in first.values()]
    # at once: the jobs are queued or running, so nothing is submitted again and nothing aggregated
    res = _sweep(path, out, "--no-wait")
    assert res.returncode == 0 and "not resubmitting" in res.stdout and "submitted" not in res.stdout.replace(
        "were submitted earlier", ""), res.stdout
    assert not (out / "results.parquet").exists() or all(shard_path(out, i).exists() for i in range(4))
    _wait_until(lambda: _jobs_ended(jobs), 180, "the chunk jobs to end")
    res = _sweep(path, out, "--no-wait")
    assert res.returncode == 0, res.stderr
    assert "0 of 4 chunks computed by this command" in res.stdout and "submitted" not in res.stdout, res.stdout
    assert _submitted(out) == first
    _assert_same_table(pd.read_parquet(out / "results.parquet"), pool, spec.run_key)


def test_a_chunk_past_its_time_limit_is_named_in_one_line(sweep, tmp_path):
    """Chunk 1's job is stopped (SIGSTOP) so it runs past --timeout-min 1; Slurm ends it; the command names it,
    TIMEOUT and the option to raise, in one line, and not chunk 0 (which finished)."""
    path, spec, _ = sweep
    out = tmp_path / "timeout"
    short = SPEC.replace("chunk_runs = 4", "chunk_runs = 8")   # 2 chunks
    spec_path = tmp_path / "two.toml"
    spec_path.write_text(short)

    def stop_chunk_1():
        _wait_until(lambda: (out / "submitted.json").exists(), 60, "the submission")
        folder = str(out / "submitit")

        def chunk_process():
            # the python of array task 1 (anchored: srun's own command line holds the same words); its environment
            # names the task
            found = subprocess.run(["pgrep", "-f", f"^[^ ]*python[^ ]* -u -m submitit.core._submit {folder}$"],
                                   capture_output=True, text=True).stdout.split()
            for pid in found:
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"SLURM_ARRAY_TASK_ID=1" in env:
                    return int(pid)
            return None

        _wait_until(lambda: chunk_process() is not None, 60, "chunk 1's job to start")
        os.kill(chunk_process(), signal.SIGSTOP)

    cmd = _sweep_cmd(spec_path, out, "--array-parallelism", "2", timeout_min=1)
    rc, errors, stderr = _sweep_while(cmd, stop_chunk_1, 240)
    job = _submitted(out)["1"]["job_id"]
    assert rc == 1 and len(errors) == 1, stderr
    assert errors[0].startswith(f"error: chunk 1 (job {job}) ended TIMEOUT") and "--timeout-min (was 1)" in errors[0]
    assert shard_path(out, 0).exists() and not shard_path(out, 1).exists()
    # the line for a chunk that failed otherwise says so, without the time-limit advice
    other = failure_line(out, 1, job, "FAILED", 1)
    assert "FAILED" in other and "--timeout-min" not in other


def _cifar_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "theory_sim", "cifar", "--dataset", "digits", "--depth", "10", "--width", "1",
            "--epochs", "3", "--batch-size", "64", "--n-train", "192", "--n-test", "128", "--no-sharpness",
            "--device", "cpu", "--out", str(out), "--slurm", "--slurm-gpus", "0", "--slurm-cpus", "1",
            "--slurm-time", "5"]


def _submit_cifar(out: Path) -> str:
    res = subprocess.run(_cifar_cmd(out), capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("submitted Slurm job ")
    return res.stdout.split()[3].rstrip(";")


def test_cifar_on_slurm_writes_metrics_and_a_requeued_job_resumes(tmp_path):
    """Two runs of one config through sbatch: one straight, one requeued (scontrol requeue) after its first
    checkpoint. The requeued one resumes from its checkpoint and ends with the straight one's metrics, bit for bit."""
    straight, requeued = tmp_path / "straight", tmp_path / "requeued"
    job_s, job_r = _submit_cifar(straight), _submit_cifar(requeued)
    _wait_until(lambda: (requeued / "checkpoint.pt").exists(), 180, "the first checkpoint")
    # a requeue kills the job (SIGTERM, then SIGKILL) and queues it again (Slurm holds it ~2 min: start it now)
    subprocess.run(["scontrol", "requeue", job_r], check=True)
    _wait_until(lambda: job_states([job_r]).get(job_r) == "PENDING", 60, "the requeued job to be pending")
    subprocess.run(["scontrol", "update", f"JobId={job_r}", "StartTime=now"], check=True)
    _wait_until(lambda: _jobs_ended([job_s, job_r]), 240, "both CIFAR jobs to end")
    assert job_states([job_s, job_r]) == {job_s: "COMPLETED", job_r: "COMPLETED"}
    log = (requeued / "slurm" / f"{job_r}_0_log.out").read_text()
    assert "resume: no checkpoint" in log and f"resume: {requeued} after epoch" in log, log
    want = pd.read_parquet(straight / "metrics.parquet").drop(columns="epoch_time")
    got = pd.read_parquet(requeued / "metrics.parquet").drop(columns="epoch_time")
    assert got.epoch.tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert not want.train_loss.equals(want.train_loss.shift(1))   # a real, changing run
