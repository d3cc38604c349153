"""``python -m theory_sim sweep-status DIR``: chunks and runs done, and an ETA from the finished chunks' times while a
process computes a chunk (a live lock holder) or Slurm jobs are pending; otherwise "idle" (nothing to wait for)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from theory_sim.config import ConfigError
from theory_sim.sweeps.store import (
    load_spec,
    lock_holder_alive,
    pending_chunks,
    read_results,
    read_trajectories,
    shard_is_complete,
    shard_path,
)


def status(out: Path) -> dict:
    spec = load_spec(Path(out))
    chunks = spec.chunks()
    done = [i for i, c in enumerate(chunks) if shard_is_complete(out, spec, i, c)]
    runs_done = sum(len(chunks[i]) for i in done)
    seconds = []
    for i in done:
        try:
            seconds.append(float(pd.read_parquet(shard_path(out, i), columns=["chunk_seconds"]).iloc[0, 0]))
        except Exception:  # noqa: BLE001
            pass
    try:
        run_info = json.loads((Path(out) / "run.json").read_text())
    except (OSError, ValueError):
        run_info = {}
    workers = run_info.get("workers", 1) if run_info.get("executor") != "inline" else 1
    remaining = len(chunks) - len(done)
    eta = (sum(seconds) / len(seconds)) * remaining / workers if seconds and remaining else 0.0
    missing = [i for i in range(len(chunks)) if i not in set(done)]
    pending = pending_chunks(Path(out), missing)
    computing = [i for i in missing if lock_holder_alive(out, i)]
    return {"name": spec.name, "chunks_done": len(done), "chunks_total": len(chunks), "runs_done": runs_done,
            "runs_total": len(spec.runs), "eta_seconds": eta, "chunks_submitted_pending": len(pending),
            "chunks_computing": len(computing), "running": bool(computing or pending),
            "results": _table_state(out, read_results),
            "trajectories": _table_state(out, read_trajectories) if spec.trajectories else "not kept"}


def _table_state(out: Path, reader) -> str:
    try:
        return "written" if reader(out) is not None else "not yet written"
    except ConfigError as exc:
        return "not yet written" if "does not exist" in str(exc) else f"UNUSABLE ({exc})"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="sweep directory")


def run(args: argparse.Namespace) -> int:
    s = status(args.dir)
    if s["running"]:
        state = f"running, ETA {s['eta_seconds'] / 60:.1f} min"
    elif s["chunks_done"] == s["chunks_total"]:
        state = "idle (complete)"
    else:  # nothing computes the missing chunks: an ETA would be a promise nobody keeps
        state = "idle (re-run the sweep command to compute the missing chunks)"
    print(f"{s['name']}: {s['chunks_done']}/{s['chunks_total']} chunks, {s['runs_done']}/{s['runs_total']} runs "
          f"done; {state}; {s['chunks_computing']} chunks computing, {s['chunks_submitted_pending']} submitted and "
          f"pending; results.parquet {s['results']}; trajectories.parquet {s['trajectories']}")
    return 0
