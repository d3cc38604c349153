"""What Slurm says about a sweep's chunk jobs, and the one line that names a chunk whose job ended without its shard.

States come from ``squeue`` (every job the controller still holds, finished ones for ``MinJobAge`` seconds) and, for
older jobs, ``sacct`` where the cluster keeps accounting. submitit's own job states come from ``sacct`` alone, so on
a cluster without accounting a cancelled or timed-out job would look queued forever; asking ``squeue`` first avoids
that. How an operator uses this: docs/slurm.md.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

# states of a job that may still write its shard (PREEMPTED and REQUEUED jobs are normally run again)
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
                    "STAGE_OUT", "RESIZING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "PREEMPTED"})

# what to do about a chunk whose job ended in this state without writing its shard
_ADVICE = {
    "TIMEOUT": "it ran past --timeout-min: re-run the same command with a larger --timeout-min",
    "CANCELLED": "re-run the same command to resubmit it",
    "OUT_OF_MEMORY": "re-run the same command on nodes with more memory (--partition), or with --executor process",
    "DEADLINE": "re-run the same command with a larger --timeout-min",
}
_DEFAULT_ADVICE = "see its log, then re-run the same command to resubmit it (or --executor process to compute it here)"


def _query(cmd: list[str]) -> str | None:
    """The command's output; None when it is not installed or fails outright (no controller to answer)."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 or res.stdout.strip() else None


def job_states(job_ids) -> dict[str, str] | None:
    """Each job's state, by job id as submitit names it (``"123_4"`` for task 4 of array job 123, or ``"123"``);
    a job neither squeue nor sacct knows is left out. None: Slurm could not be asked (no squeue, no controller)."""
    job_ids = {str(j) for j in job_ids}
    if not job_ids:
        return {}
    arrays = ",".join(sorted({j.split("_")[0] for j in job_ids}))
    # -r: one line per array task (pending tasks are otherwise folded into "123_[5-9]"); -t all: finished ones too
    out = _query(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", f"--jobs={arrays}"])
    if out is None:
        # squeue exits 1 when none of the jobs is known any more: then only sacct can tell
        if _query(["squeue", "--noheader", "--format=%i", "--states=PENDING"]) is None:
            return None
        out = ""
    states = _parse(out)
    rest = sorted({j.split("_")[0] for j in job_ids if j not in states})
    if rest:
        states.update({k: v for k, v in _parse(_query(["sacct", "--noheader", "--parsable2", "--allocations",
                                                       "--format=JobID,State", f"--jobs={','.join(rest)}"]) or "")
                       .items() if k not in states})
    return {j: states[j] for j in job_ids if j in states}


def _parse(text: str) -> dict[str, str]:
    """``ID|STATE`` lines; sacct writes e.g. ``CANCELLED by 0``: the first word is the state."""
    states = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        if job and state and "[" not in job:
            states[job] = state.split()[0].rstrip("+").upper()
    return states


def is_active(state: str | None) -> bool:
    return state in ACTIVE


def log_file(out: Path, job_id: str) -> Path:
    """The job's stderr log as submitit names it (DIR/submitit/JOBID_TASK_log.err)."""
    found = sorted((Path(out) / "submitit").glob(f"{job_id}_*_log.err"))
    return found[0] if found else Path(out) / "submitit" / f"{job_id}_0_log.err"


def failure_line(out: Path, chunk_id: int, job_id: str, state: str | None, timeout_min: int | None = None) -> str:
    """One line naming the chunk, its job, how it ended, its log, and what to do next. ``state`` None: Slurm lists
    the job no more (a task cancelled before it started leaves no record on a cluster without accounting)."""
    how = f"ended {state}" if state else "is no longer listed by Slurm (cancelled before it started, or long over)"
    advice = _ADVICE.get(state, _DEFAULT_ADVICE if state else _ADVICE["CANCELLED"])
    if state == "TIMEOUT" and timeout_min:
        advice = advice.replace("--timeout-min", f"--timeout-min (was {timeout_min})", 1)
    return f"chunk {chunk_id} (job {job_id}) {how} without writing its shard; log: {log_file(out, job_id)}; {advice}"
