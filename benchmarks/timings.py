"""Measure the timings the docs quote (the quick start, the test suite) and write them, with the machine's load, to
benchmarks/timings.json: the one place every timing in README.md and docs/ comes from (docs/usage.md, "Timings").

    python benchmarks/timings.py [quick_start tests tests_slow ...] [--out benchmarks/timings.json]

Each named job runs once as a subprocess from the repository root with ``PYTHONPATH`` = this checkout; its entry
records the command, wall time, CPU time of the job's processes (those its processes waited for), exit status, the
line of its output that sums it up, ``os.getloadavg()`` before and after, the number of CPUs, the time and the git
commit (read before the job; "-dirty" on a later job of one call, whose earlier job wrote the timings file),
replacing that job's previous entry (the others are kept). The machine is often shared: read a wall time
together with its load average.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the jobs run this checkout's code (PYTHONPATH below); so does this script, whose git_commit names the checkout
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "timings.json"

# job -> (what it measures, command with "{tmp}" a fresh temporary directory, the output line worth keeping)
JOBS: dict[str, tuple[str, list[str], str]] = {
    "quick_start": ("README's main job with its defaults: the sweep, its figures and verify",
                    ["python", "-m", "theory_sim", "sweep", "studies/phase_diagram_quick.toml", "--out",
                     "{tmp}/quick", "--no-progress"], r" runs in "),
    "tests": ("the default test run (the slow tests left out), as .ci/run runs it", ["python", "-m", "pytest", "-q"],
              r" (passed|failed)"),
    "tests_slow": ("the tests marked slow", ["python", "-m", "pytest", "-q", "-m", "slow"], r" (passed|failed)"),
}


def measure(command: list[str], what: str = "", summary: str = "$") -> dict:
    """Run ``command`` once from the repository root (``python`` = this interpreter) and return its entry, with the
    last output line that matches the regex ``summary``."""
    from theory_sim.io import git_commit

    commit = git_commit()   # before the job: what it measured, not the timings file a previous job just wrote
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable if a == "python" else a.format(tmp=tmp) for a in command]
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)

    return {
        "what": what,
        "command": " ".join(command).replace("{tmp}", "TMP"),
        "wall_s": round(wall, 1),
        "cpu_s": round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 1),
        "exit_status": proc.returncode,
        "summary": next((line for line in reversed(proc.stdout.splitlines()) if re.search(summary, line)), "")[:300],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "nproc": os.cpu_count(),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
    }


def record(jobs: list[str], out: Path) -> dict:
    """Measure ``jobs`` and write them into ``out`` (atomically), keeping the entries of the jobs not measured."""
    from theory_sim.io import write_json

    timings = json.loads(out.read_text()) if out.exists() else {}
    for name in jobs:
        what, command, summary = JOBS[name]
        timings[name] = measure(command, what, summary)
        print(f"{name}: {timings[name]['wall_s']} s wall, {timings[name]['cpu_s']} s CPU, exit "
              f"{timings[name]['exit_status']}, load {timings[name]['loadavg_before']} on {timings[name]['nproc']} "
              f"CPUs")
        write_json(out, timings)   # after every job: a long run's first results are kept if a later job is stopped
    return timings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobs", nargs="*", default=["quick_start", "tests"],
                    help=f"the jobs to measure, of {', '.join(JOBS)} (default: quick_start tests)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.jobs) - set(JOBS))
    if unknown:
        ap.error(f"jobs must be among {', '.join(JOBS)}, got {', '.join(unknown)}")
    record(args.jobs, args.out)


if __name__ == "__main__":
    main()
