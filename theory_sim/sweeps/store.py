"""The sweep directory on disk: its spec, its shards and their completeness, chunk claims, and the validated
tables (read by the runner, status, figures and verify; it imports none of them).

Layout of a sweep directory::

    DIR/spec.json                          the normalised spec and its digest (a different spec in DIR is refused)
    DIR/shards/chunk-NNNNN.parquet         one row per trained run of chunk NNNNN (written last: the done-marker)
    DIR/shards/chunk-NNNNN.traj.parquet    the chunk's coefficient trajectories, one row per (logged step, run)
    DIR/shards/chunk-NNNNN.lock            held while a process computes the chunk (concurrent sweeps share work)
    DIR/results.parquet, results.json      every results shard, concatenated and sorted; spec and provenance
    DIR/trajectories.parquet               every trajectory shard, concatenated and sorted

A shard counts as done only if it reads back with the full schema, holds exactly the chunk's runs and has valid
values (a finite test error in [0, 1] for every run that did not diverge); anything else is recomputed.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.config import ConfigError, SimConfig
from theory_sim.io import provenance, write_json
from theory_sim.sweeps.cells import RUN_KEY
from theory_sim.sweeps.slurm import is_active, job_states
from theory_sim.sweeps.spec import SweepSpec

# columns every results row carries besides the SimConfig fields (theory_sim.cnn.train.evaluate writes them)
RESULT_COLUMNS = ("label", "tau_effective", "train_loss", "train_acc", "test_error", "test_error_se", "bayes_error",
                  "steps", "diverged", "chunk")
# the trajectory columns the claims of verify read (theory_sim.cnn.train.TrajectoryLog writes them)
TRAJECTORY_COLUMNS = (*RUN_KEY, "step", "epoch", "optimizer", "train_loss", "train_acc", "test_error",
                      "update_noise_active_frac", "gamma_mean", "rhobar_mean", "gamma_max", "rhobar_max",
                      "rhounder_min", "rhobar_min", "rhounder_max", "noise_active_frac", "rho_monotone_violations")


# chunks hold the distinct runs (SweepSpec.trained_runs); directories without this mark in spec.json hold one run
# per cell, which differs only for specs with joined runs (SweepSpec.joined_runs)
LAYOUT = "trained-runs"


def shard_path(out: Path, chunk_id: int, kind: str = "results") -> Path:
    suffix = {"results": ".parquet", "trajectories": ".traj.parquet", "lock": ".lock"}[kind]
    return Path(out) / "shards" / f"chunk-{chunk_id:05d}{suffix}"


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is unreadable or not JSON ({exc.__class__.__name__}); restore it or re-run the "
                          f"sweep into a new --out directory") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def load_spec(out: Path) -> SweepSpec:
    """The spec of a sweep directory: spec.json, or the copy in results.json (so results alone suffice). Cached per
    process by the file's identity: a pool worker computes many chunks, and expanding a spec of 100,000 runs into
    validated configs takes seconds."""
    for name in ("spec.json", "results.json"):
        path = Path(out) / name
        if path.exists():
            st = path.stat()
            ident = (str(path.resolve()), st.st_mtime_ns, st.st_size)
            return _PREPARED.get(ident) or _load_spec_file(*ident)
    raise ConfigError(f"DIR must be a sweep directory holding spec.json or results.json; neither is in {out}")


# spec.json -> the spec ``prepare`` wrote or checked it against, in this process: the sweep's own verify and figures
# then reuse the expanded spec instead of expanding it again (identity as in load_spec: a rewrite is a miss)
_PREPARED: dict[tuple, SweepSpec] = {}


@functools.lru_cache(maxsize=8)
def _load_spec_file(path_text: str, mtime_ns: int, size: int) -> SweepSpec:
    path = Path(path_text)
    stored = _read_json(path)
    if not isinstance(stored.get("spec"), dict):
        raise ConfigError(f"{path} holds no sweep spec (key 'spec'); restore it from the sweep's TOML")
    try:
        return SweepSpec.from_dict(stored["spec"], expand=False)   # it was expanded (validated) when written
    except ConfigError as exc:
        raise ConfigError(f"{path} holds an invalid spec: {exc}") from None


# what marks a directory as a sweep's (simulate refuses to write into one), and as a simulate run's (its
# theory_sim.cnn.simulate_verb.OUTPUT_FILES that a sweep never writes: a sweep refuses to write into one)
SWEEP_FILES = ("spec.json", "results.json", "results.parquet", "shards")
SIMULATE_FILES = ("summary.parquet", "final_state.pt", "coefficients.npz")


def sweep_files(out: Path) -> list[str]:
    """The files of ``SWEEP_FILES`` in ``out``."""
    return [name for name in SWEEP_FILES if (Path(out) / name).exists()]


def prepare(spec: SweepSpec, out: Path) -> None:
    """Create DIR with spec.json, or check that DIR's results came from this very spec (whatever file records it),
    with the same chunking; remove temp files that killed writers left behind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out must be a directory, but {out} is a file")
    simulate = [name for name in SIMULATE_FILES if (out / name).exists()]
    if simulate:
        raise ConfigError(f"out must be a sweep directory (new or resumed), but {out} holds a simulate run "
                          f"({', '.join(simulate)}); use a new --out directory")
    path = out / "spec.json"
    if path.exists():
        stored = _read_json(path)
        _check_same_spec(stored, spec, path)
        if stored.get("layout") != LAYOUT and spec.joined_runs and any((out / "shards").glob("chunk-*.parquet")):
            raise ConfigError(f"the shards in {out} hold one run per cell, written before sweeps trained a run "
                              f"once for all the cells it serves ({len(spec.joined_runs)} of this spec's runs "
                              f"repeat: theory_sim.config.ignored_parameters); use a new --out directory (the "
                              f"numbers are the same), or delete {out / 'shards'} to start over")
        chunking = (stored.get("spec") or {}).get("chunk_runs")
        if chunking != spec.chunk_runs and any((out / "shards").glob("chunk-*.parquet")):
            raise ConfigError(f"chunk_runs changed from {chunking} to {spec.chunk_runs}, but the shards in {out} "
                              f"are chunked by {chunking}: set chunk_runs = {chunking} to resume, or use a new --out")
    else:
        found = sweep_files(out) + [name for name in ("trajectories.parquet",) if (out / name).exists()]
        if (out / "results.json").exists():
            _check_same_spec(_read_json(out / "results.json"), spec, out / "results.json")
        elif found:
            raise ConfigError(f"{out} already holds sweep output ({', '.join(found)}) but no spec.json or "
                              f"results.json saying which spec made it; use a new --out directory")
        write_json(path, {"spec": spec.to_dict(), "digest": spec.digest(), "layout": LAYOUT, **provenance()})
    if _read_json(path).get("spec") == json.loads(json.dumps(spec.to_dict())):  # spec.json holds exactly this spec
        st = path.stat()
        _PREPARED[(str(path.resolve()), st.st_mtime_ns, st.st_size)] = spec
    remove_stale_temp_files(out)


def _check_same_spec(stored: dict, spec: SweepSpec, path: Path) -> None:
    if stored.get("digest") != spec.digest():
        raise ConfigError(f"spec differs from the one that produced the results in {path.parent} (digest "
                          f"{stored.get('digest')} in {path.name} vs {spec.digest()}); use a new --out directory, "
                          f"or delete {path.parent} to start over")


# ---------------------------------------------------------------------------------------------------------------------
# Shards: completeness and validation
# ---------------------------------------------------------------------------------------------------------------------
def _keys(df: pd.DataFrame, key: tuple) -> list[tuple]:
    return sorted(map(tuple, df[list(key)].itertuples(index=False, name=None)))


def _valid_results(df: pd.DataFrame, chunk, key: tuple) -> bool:
    required = set(RESULT_COLUMNS) | set(SimConfig.field_names())
    if not required <= set(df.columns) or len(df) != len(chunk):
        return False
    if df[list(key)].isna().any().any() or _keys(df, key) != sorted(tuple(k) for k, _ in chunk):
        return False
    if df.diverged.dtype != bool:
        return False
    err = df.test_error[~df.diverged].to_numpy(dtype=float)
    return bool(np.all(np.isfinite(err)) and np.all((err >= 0) & (err <= 1)) and (df.steps >= 0).all())


def _valid_trajectories(df: pd.DataFrame, chunk, key: tuple) -> bool:
    columns = set(TRAJECTORY_COLUMNS) | set(key)
    if not columns <= set(df.columns) or df[["step", *key]].isna().any().any():
        return False
    per_run = df.groupby(list(key), sort=True)
    if sorted(per_run.groups) != sorted(tuple(k) for k, _ in chunk):
        return False
    return bool((per_run.step.min() == 0).all())


# shards this process has read back and found valid, by (file identity, spec digest, chunk): a sweep checks every
# shard before, between and after its rounds of work, and reading 100 shards back costs about a second each time;
# a rewritten file (new mtime or size) is read again
_VALID_SHARDS: set[tuple] = set()
# results shards read back with ``keep``, by path (with the identity of the file they were read from), until
# ``read_results_shard`` takes them: a sweep checks each chunk's shard as the chunk finishes (while the other chunks
# compute) and aggregates the tables it read, not a second read
_KEPT_RESULTS: dict[str, tuple[tuple, pd.DataFrame]] = {}


def _shard_identity(out: Path, spec: SweepSpec, chunk_id: int, n_runs: int, kind: str) -> tuple | None:
    """What names one version of a shard file (None: no such file)."""
    path = shard_path(out, chunk_id, kind)
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, st.st_ino, spec.digest(), spec.chunk_runs, chunk_id,
            n_runs)


def shard_is_complete(out: Path, spec: SweepSpec, chunk_id: int, chunk=None, keep: bool = False) -> bool:
    """The chunk's shards read back with the full schema, exactly the chunk's runs and valid values. ``keep``: hold
    the results table read here for ``read_results_shard``."""
    chunk = spec.chunks()[chunk_id] if chunk is None else chunk
    kinds = ("results", "trajectories") if spec.trajectories else ("results",)
    for kind in kinds:
        ident = _shard_identity(out, spec, chunk_id, len(chunk), kind)
        if ident is None:
            return False
        if ident in _VALID_SHARDS:
            continue
        try:
            df = pd.read_parquet(ident[0])
        except Exception:  # noqa: BLE001 - any unreadable file (truncated, corrupt, not parquet) is recomputed
            return False
        if not (_valid_results if kind == "results" else _valid_trajectories)(df, chunk, spec.run_key):
            return False
        _VALID_SHARDS.add(ident)
        if keep and kind == "results":
            _KEPT_RESULTS[ident[0]] = (ident, df)
    return True


def read_results_shard(out: Path, spec: SweepSpec, chunk_id: int) -> pd.DataFrame:
    """The chunk's results shard: the table ``shard_is_complete(..., keep=True)`` read from this very file, if it
    did (handed over once), else read now."""
    ident = _shard_identity(out, spec, chunk_id, len(spec.chunks()[chunk_id]), "results")
    kept = _KEPT_RESULTS.pop(ident[0], None) if ident is not None else None
    return kept[1] if kept is not None and kept[0] == ident else pd.read_parquet(shard_path(out, chunk_id))


def missing_chunks(spec: SweepSpec, out: Path) -> list[int]:
    return [i for i, chunk in enumerate(spec.chunks()) if not shard_is_complete(out, spec, i, chunk)]


# ---------------------------------------------------------------------------------------------------------------------
# Claims: one process computes a chunk at a time, so two sweeps into one DIR share the work
# ---------------------------------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def lock_holder_alive(out: Path, chunk_id: int) -> bool:
    """Whether a live process on this host holds the chunk's lock (a lock from a dead process is stale)."""
    path = shard_path(out, chunk_id, "lock")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # being written right now, or garbage: treat as held only while fresh
        try:
            return time.time() - path.stat().st_mtime < 10
        except FileNotFoundError:
            return False
    if info.get("host") != socket.gethostname():
        return True  # another machine's claim: cannot check its pid (submitit chunks do not take locks)
    return _pid_alive(int(info.get("pid", -1)))


def claim_chunk(out: Path, chunk_id: int) -> bool:
    """Take the chunk's lock file (O_EXCL); a stale lock (its process died) is taken over. False: held by a live
    process."""
    path = shard_path(out, chunk_id, "lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock_holder_alive(out, chunk_id):
                return False
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, fh)
        return True
    return False


def release_chunk(out: Path, chunk_id: int) -> None:
    try:
        shard_path(out, chunk_id, "lock").unlink()
    except FileNotFoundError:
        pass


def remove_stale_temp_files(out: Path) -> list[Path]:
    """Delete the temp files (``.NAME.PID.XXXX.tmp``, theory_sim.io) whose writer on this host is dead."""
    removed = []
    for folder in (Path(out), Path(out) / "shards"):
        if not folder.is_dir():
            continue
        for tmp in folder.glob(".*.tmp"):
            parts = tmp.name.split(".")
            pid = next((int(p) for p in reversed(parts[:-2]) if p.isdigit()), None)
            if pid is None or pid == os.getpid() or _pid_alive(pid):
                continue
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def submitted_jobs(out: Path) -> dict[int, dict]:
    """DIR/submitted.json: per chunk its latest submitit job (``job_id``, ``cluster``, ``deadline``)."""
    record = Path(out) / "submitted.json"
    return {int(k): v for k, v in _read_json(record).items()} if record.exists() else {}


def pending_chunks(out: Path, chunk_ids: list[int]) -> list[int]:
    """Chunks submitted through submitit whose jobs may still be queued or running. A Slurm job counts while Slurm
    says it is active (so a cancelled or failed chunk is resubmitted at once); when Slurm cannot be asked, and for
    submitit's local jobs, while it is within its time limit."""
    submitted = submitted_jobs(out)
    now = time.time()
    mine = {i: submitted[i] for i in chunk_ids if i in submitted}
    on_slurm = [str(job["job_id"]) for job in mine.values() if job.get("cluster") == "slurm"]
    states = job_states(on_slurm) if on_slurm else None
    return [i for i, job in mine.items()
            if (is_active(states.get(str(job["job_id"])))
                if states is not None and job.get("cluster") == "slurm" else job.get("deadline", 0) > now)]


# ---------------------------------------------------------------------------------------------------------------------
# The aggregated tables, validated on read
# ---------------------------------------------------------------------------------------------------------------------
def _read_table(path: Path, required) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist (run or finish the sweep first)") from None
    except Exception as exc:  # noqa: BLE001 - truncated, garbage, not parquet
        raise ConfigError(f"{path} is not a readable parquet table ({exc.__class__.__name__}); re-run the sweep "
                          f"command to rebuild it from the shards") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ConfigError(f"{path} lacks the columns {missing}; re-run the sweep command to rebuild it")
    if df.empty:
        raise ConfigError(f"{path} holds no rows; re-run the sweep command to rebuild it")
    return df


def read_results(out: Path) -> pd.DataFrame:
    """DIR/results.parquet, with the columns figures and verify need (ConfigError naming what is wrong)."""
    return _read_table(Path(out) / "results.parquet",
                       (*RUN_KEY, "optimizer", "flip_p", "test_error", "diverged", "train_loss"))


def read_trajectories(out: Path) -> pd.DataFrame | None:
    """DIR/trajectories.parquet, or None for a sweep written before sweeps kept trajectories."""
    path = Path(out) / "trajectories.parquet"
    return _read_table(path, TRAJECTORY_COLUMNS) if path.exists() else None
