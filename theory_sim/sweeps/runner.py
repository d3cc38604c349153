"""Resumable phase-diagram sweeps: chunks of runs trained as batched ensembles, one parquet shard per chunk.

The directory layout is described in ``theory_sim.sweeps.store``.

A killed sweep loses at most the chunks that were running; re-running the same command recomputes only the shards
that are missing or unreadable or hold the wrong runs. Executors: ``inline`` (this process), ``process`` (a local
process pool), ``submitit`` (Slurm job arrays, or submitit's local executor with ``--cluster local``).
"""
from __future__ import annotations

import argparse
import atexit
import concurrent.futures as cf
import contextlib
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from theory_sim.config import ConfigError, check_choice, check_dpi, check_int
from theory_sim.io import provenance, save_table, write_json, write_parquet
from theory_sim.resources import add_force_arguments
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.store import (
    claim_chunk,
    load_spec,
    lock_holder_alive,
    missing_chunks,
    pending_chunks,
    prepare,
    read_results_shard,
    release_chunk,
    remove_stale_temp_files,
    shard_is_complete,
    shard_path,
    submitted_jobs,
)
from theory_sim.sweeps.slurm import failure_line, is_active, job_states

EXECUTORS = ("inline", "process", "submitit")
MAX_WORKERS = 4 * (os.cpu_count() or 1)   # as --threads: more than 4 processes per CPU only oversubscribes


def run_chunk(out: str, chunk_id: int, threads: int | None = None, claim: bool = True,
              spec: SweepSpec | None = None, chunk: list | None = None) -> str | None:
    """Train one chunk and write its shards atomically (trajectories first, results last: the results shard marks
    the chunk done). Top-level so process pools and submitit can pickle it. With ``claim`` the chunk's lock is taken
    first; None means another process holds it or has just finished it (a concurrent sweep into the same DIR).
    ``spec`` and ``chunk`` (its runs): as the parent process has them (a local pool sends them with the task, so a
    worker never re-expands the spec); else read from DIR's spec.json (a cluster job)."""
    import torch

    from theory_sim.cnn.train import train_ensemble

    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    out_dir = Path(out)
    if spec is None or chunk is None:
        spec = load_spec(out_dir)
        chunk = spec.chunks()[chunk_id]
    if claim and not claim_chunk(out_dir, chunk_id):
        return None
    try:
        if shard_is_complete(out_dir, spec, chunk_id, chunk):  # another process just finished it
            return None
        configs = [cfg for _, cfg in chunk]
        t0 = time.perf_counter()
        res = train_ensemble(configs, track=spec.trajectories, log=spec.trajectories, progress=False,
                             heldout=configs[0].n_test > 0, reconstruct=False)
        if spec.trajectories:
            keys = pd.DataFrame([key for key, _ in chunk], columns=list(spec.run_key))
            traj = res.trajectory.drop(columns=["seed"]).reset_index(drop=True)
            traj = pd.concat([keys.iloc[traj.run.to_numpy()].reset_index(drop=True), traj], axis=1)
            traj["chunk"] = chunk_id
            write_parquet(traj, shard_path(out_dir, chunk_id, "trajectories"))
        df = res.summary
        df.insert(0, "label", [key[0] for key, _ in chunk])
        df["chunk"] = chunk_id
        df["chunk_seconds"] = time.perf_counter() - t0
        path = shard_path(out_dir, chunk_id)
        write_parquet(df, path)
        return str(path)
    finally:
        if claim:
            release_chunk(out_dir, chunk_id)


_MALLOC_TUNED = False


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for re-use instead of returning it to the kernel (once per process).

    A chunk allocates and frees tensors of MBs at every step; by default glibc returns freed memory to the kernel
    and page-faults it back in on the next step (about an eighth of a [K23] sweep's CPU time was kernel time).
    Raising the mmap and trim thresholds and the heap's top pad keeps the pages (kernel time per [K23] chunk
    0.2 s -> 0.06 s, benchmarks/bench_sweep.py). Numbers are unaffected; peak memory is what the chunk uses
    anyway. A no-op off glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)   # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
        # and no mmap at all: a chunk's largest tensors (the data basis, W: ~50 MB at d = 1000) exceed any threshold,
        # so each chunk would map them afresh and fault every page in again
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(M_TOP_PAD, 64 << 20)          # grow the heap in large steps: fewer page faults
    except (OSError, AttributeError):
        pass


def join_shared_runs(spec: SweepSpec, table: pd.DataFrame) -> pd.DataFrame:
    """Add, for every run the spec did not train itself (``spec.joined_runs``: it equals a trained run, see
    theory_sim.sweeps.spec), a copy of that trained run's rows carrying the run's own key (e.g. its c_tau)."""
    if not spec.joined_runs:
        return table
    key = list(spec.run_key)
    source = pd.DataFrame([s for _, s in spec.joined_runs], columns=key).astype(table[key].dtypes.to_dict())
    source["_join"] = range(len(source))
    copies = table.merge(source, on=key, how="inner")
    target = pd.DataFrame([k for k, _ in spec.joined_runs], columns=key)
    for k in key:
        copies[k] = target[k].to_numpy()[copies._join.to_numpy()]
    return pd.concat([table, copies.drop(columns="_join")[table.columns]], ignore_index=True)


def aggregate(spec: SweepSpec, out: Path) -> pd.DataFrame:
    """Concatenate every shard into DIR/results.parquet (one row per cell x seed x optimizer, a run trained once for
    several cells joined to each) and, when the sweep keeps them, DIR/trajectories.parquet (one row per logged step x
    run)."""
    sidecar = {"spec": spec.to_dict(), "digest": spec.digest(), **provenance()}
    ids = range(len(spec.chunks()))
    if spec.trajectories:
        traj = pd.concat([pd.read_parquet(shard_path(out, i, "trajectories")) for i in ids], ignore_index=True)
        traj = join_shared_runs(spec, traj).sort_values([*spec.run_key, "step"]).reset_index(drop=True)
        save_table(traj, Path(out) / "trajectories.parquet", {**sidecar, "rows": len(traj)})
    df = join_shared_runs(spec, pd.concat([read_results_shard(out, spec, i) for i in ids], ignore_index=True))
    df = df.sort_values(list(spec.run_key)).reset_index(drop=True).drop(columns=["chunk_seconds"])
    save_table(df, Path(out) / "results.parquet", {**sidecar, "rows": len(df)})
    return df


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the sweep stopped; the message says how far it got and how to resume. The command exits
    with ``exit_status``: 130 after Ctrl-C, 143 (128 + SIGTERM) after SIGTERM, as a shell reports them."""
    exit_status = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, Slurm), raised like Ctrl-C's KeyboardInterrupt; the command exits with 143."""
    exit_status = 143


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Slurm and kill send SIGTERM: treat it like Ctrl-C (stop promptly, end the workers, say how to resume)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated: the finished chunks are kept; run the same command to resume")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _ignoring_sigint():
    """Drop Ctrl-C while cleaning up (an ignored signal is discarded, not queued); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _worker_init(parent_pid: int) -> None:
    """In each pool worker: leave Ctrl-C to the parent (it ends the workers), and exit as soon as the parent is
    gone, even after a SIGKILL that gave it no chance to clean up (no orphans holding memory)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    # a worker's clean exit skips the interpreter's teardown (freeing every object of torch and a chunk's heap took
    # ~0.3 s per worker, at the end of a sweep: while the parent waits for it). Registered last, it runs first among
    # the exit handlers; a worker has no children to join and its results went out synchronously (SimpleQueue).
    atexit.register(_exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _end_pool(pool) -> None:
    """Cancel queued chunks and end the workers now (a chunk in flight is lost; its lock and temp files are stale
    and the next run removes them)."""
    with _ignoring_sigint():  # a second Ctrl-C must not interrupt the clean-up
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        deadline = time.time() + 3
        for proc in processes:
            proc.join(max(0.0, deadline - time.time()))
            if proc.is_alive():
                proc.kill()
                proc.join(1)
        pool.shutdown(wait=True)  # the workers are gone: the pool's manager thread winds down at once


def _warm_up() -> None:
    """A pool task that only loads the trainer (torch among it), so a worker is ready before the first chunk."""
    import theory_sim.cnn.train  # noqa: F401


def start_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A local process pool whose ``workers`` processes start now and load torch and the trainer (about 2 s each)
    while the caller goes on, e.g. expanding the spec: the pool spawns a worker per pending task, so one warm-up
    task per worker starts them all."""
    check_int("workers", workers, 1, MAX_WORKERS)
    # after an interrupt the workers are killed; multiprocessing's resource tracker then unlinks the pool's
    # semaphores itself and would print a warning about them: the clean-up is right, the warning is noise
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    if quiet not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                  initargs=(os.getpid(),))
    for _ in range(workers):
        pool.submit(_warm_up)
    return pool


def _chunk_cost(chunk: list) -> int:
    """A chunk's rough cost: runs x (d, for data and evaluation, + steps x n, for training)."""
    cfg = chunk[0][1]
    return len(chunk) * (cfg.d + cfg.total_steps * cfg.n)


def _execute(spec: SweepSpec, out: Path, ids: list[int], executor: str, workers: int, bar,
             pool: cf.ProcessPoolExecutor | None = None) -> list[int]:
    """Run the chunks ``ids`` here (inline) or in a process pool (``pool``, started by the caller, or one of this
    call's own); return those this call computed (the others were claimed by a concurrent sweep)."""
    done = []
    if executor == "inline":
        for i in ids:
            chunk = spec.chunks()[i]
            if run_chunk(str(out), i, spec=spec, chunk=chunk) is not None:
                shard_is_complete(out, spec, i, chunk, keep=True)   # read back once (see below)
                done.append(i)
                bar.update(1)
        return done
    threads = max(1, (os.cpu_count() or 1) // workers)  # small tensors: processes beat threads
    own = pool is None
    if own:
        pool = start_pool(min(workers, len(ids)))
    try:
        chunks = spec.chunks()
        # the costliest chunks first, so the pool does not end on one large chunk while the other workers idle
        ids = sorted(ids, key=lambda i: -_chunk_cost(chunks[i]))
        futures = {pool.submit(run_chunk, str(out), i, threads, True, spec, chunks[i]): i for i in ids}
        for fut in cf.as_completed(futures):
            if fut.result() is not None:
                i = futures[fut]
                # read back now, while the workers compute the other chunks: the checks after the last chunk and
                # the aggregation then find this table instead of reading every shard in a row (~1 s for 100)
                shard_is_complete(out, spec, i, chunks[i], keep=True)
                done.append(i)
                bar.update(1)
    except BaseException:
        _end_pool(pool)
        raise
    if own:
        pool.shutdown(wait=True)
    return done


def _run_local(spec: SweepSpec, out: Path, executor: str, workers: int, bar, pool=None) -> set[int]:
    """Compute every missing chunk, sharing the work with any concurrent sweep into DIR: chunks another live
    process holds are waited for, and taken over if that process dies."""
    computed: set[int] = set()
    waiting_said = False
    while True:
        todo = missing_chunks(spec, out)
        free = [i for i in todo if i not in computed and not lock_holder_alive(out, i)]
        if free:
            computed |= set(_execute(spec, out, free, executor, workers, bar, pool))
            continue
        busy = [i for i in todo if lock_holder_alive(out, i)]
        if not busy:
            return computed  # nothing left, or chunks that failed here: the caller reports them
        if not waiting_said:
            print(f"waiting for {len(busy)} chunks another process is computing in {out}", file=sys.stderr)
            waiting_said = True
        time.sleep(0.5)


def run_sweep(spec: SweepSpec, out: Path, executor: str = "inline", workers: int = 1, progress: bool | None = None,
              submitit_options: dict | None = None, pool: cf.ProcessPoolExecutor | None = None) -> pd.DataFrame | None:
    """Run every missing chunk and aggregate. Returns the results table (None if submitit jobs were left queued).
    Ctrl-C / SIGTERM raise ``SweepInterrupted`` after ending the workers; the finished shards stay. ``pool``: a
    ``start_pool`` for executor "process", started earlier by the caller (it shuts it down)."""
    from tqdm.auto import tqdm

    check_choice("executor", executor, EXECUTORS)
    check_int("workers", workers, 1, MAX_WORKERS)
    if executor == "submitit":
        check_submitit_options(**(submitit_options or {}))
    out = Path(out)
    prepare(spec, out)
    todo = missing_chunks(spec, out)
    write_json(out / "run.json", {"executor": executor, "workers": workers, "started": time.time(),
                                  "chunks_total": len(spec.chunks()), "chunks_todo": len(todo)})
    bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="chunk", disable=(not progress)
               if progress is not None else None)
    computed: set[int] = set(todo)
    try:
        with _sigterm_as_interrupt():
            if executor == "submitit":
                if not _run_submitit(spec, out, todo, bar, dict(submitit_options or {})):
                    return None
            else:
                computed = _run_local(spec, out, executor, workers, bar, pool)
    except KeyboardInterrupt as exc:
        with _ignoring_sigint():  # a second Ctrl-C while we count what is done is dropped, not a traceback
            left = len(missing_chunks(spec, out))
        stop = SweepInterrupted(f"{'terminated' if isinstance(exc, Terminated) else 'interrupted'}: "
                                f"{len(spec.chunks()) - left} of {len(spec.chunks())} chunks are done and kept in "
                                f"{out}; re-run the same command to compute the other {left}")
        stop.exit_status = getattr(exc, "exit_status", 130)
        raise stop from None
    finally:
        bar.close()
    still = missing_chunks(spec, out)
    if still:
        raise RuntimeError(f"{len(still)} chunks did not produce a shard: {still[:10]}")
    df = aggregate(spec, out)
    remove_stale_temp_files(out)  # also those of an orphaned worker of a killed sweep that outlived our start
    df.attrs["chunks_computed"] = len(computed)  # by this call (a concurrent sweep may have done the others)
    return df


class ChunksFailed(RuntimeError):
    """Chunk jobs ended without writing their shards; ``lines``: one per chunk, naming it and what to do next."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


MAX_FAILURE_LINES = 20  # a sweep of thousands of chunks whose jobs all failed must not flood the terminal


def _run_submitit(spec: SweepSpec, out: Path, todo: list[int], bar, opts: dict) -> bool:
    """Submit the missing chunks as a job array and wait for them and for the chunks submitted earlier that are
    still queued or running; True once every chunk has its shard, False when left queued (``wait=False``, or jobs
    this process cannot watch). Raises ``ChunksFailed`` for chunks whose jobs ended without their shard."""
    wait = opts.pop("wait", True)
    in_flight = set() if opts.pop("resubmit", False) else set(pending_chunks(out, todo))
    if in_flight:
        print(f"{len(in_flight)} chunks were submitted earlier and are still queued or running; not resubmitting "
              f"them (--resubmit to force)")
    new = [i for i in todo if i not in in_flight]
    jobs = submit_chunks(out, new, **opts)
    if jobs:
        print(f"submitted {len(jobs)} chunk jobs (job {jobs[0].job_id.split('_')[0]}; logs in {out / 'submitit'})")
    if not todo:
        return True
    states = _state_reader(out, todo, jobs)
    if not wait or states is None:
        print(f"re-run the same command (or `sweep-status {out}`) later to aggregate")
        return False
    _wait_for_chunks(spec, out, todo, states, bar)
    return True


def _state_reader(out: Path, todo: list[int], jobs: list):
    """A function job ids -> states (None: Slurm cannot be asked) for the chunks' jobs; None when this process
    cannot watch them (submitit's local jobs of an earlier command)."""
    submitted = submitted_jobs(out)
    if all(submitted[i].get("cluster") == "slurm" for i in todo):
        return job_states
    mine = {job.job_id: job for job in jobs}
    if any(str(submitted[i]["job_id"]) not in mine for i in todo):
        return None
    return lambda ids: {j: mine[j].state if mine[j].done() else "RUNNING" for j in ids}


def _wait_for_chunks(spec: SweepSpec, out: Path, todo: list[int], states_of, bar) -> None:
    """Poll until each chunk has its shard or its job has ended; one ``ChunksFailed`` line per chunk without one.
    One squeue call per poll for all the jobs, polls spaced out to 30 s (the controller serves a whole cluster)."""
    chunks = spec.chunks()
    submitted = submitted_jobs(out)
    left = {i: submitted[i] for i in todo}
    failed: dict[int, str | None] = {}
    delay = 1.0
    while left:
        states = states_of([str(job["job_id"]) for job in left.values()])
        for i, job in list(left.items()):
            if states is not None:
                state = states.get(str(job["job_id"]))
                ended = not is_active(state)
            else:  # Slurm did not answer: a job is over once past its time limit
                state, ended = None, job["deadline"] < time.time()
            # the shard is checked after the state, so a job that wrote it and then ended counts as done
            if shard_is_complete(out, spec, i, chunks[i], keep=True):
                bar.update(1)
            elif ended:
                failed[i] = state
            else:
                continue
            del left[i]
        if left:
            time.sleep(delay)
            delay = min(1.5 * delay, 30.0)
    if failed:
        lines = [failure_line(out, i, str(submitted[i]["job_id"]), state, submitted[i].get("timeout_min"))
                 for i, state in sorted(failed.items())]
        if len(lines) > MAX_FAILURE_LINES:
            rest = sorted(failed)[MAX_FAILURE_LINES:]
            lines = lines[:MAX_FAILURE_LINES] + [f"... and {len(rest)} more chunks without a shard: {rest}"]
        raise ChunksFailed(lines)


def check_submitit_options(timeout_min: int = 60, cpus_per_task: int = 2, gpus_per_node: int = 0,
                           array_parallelism: int = 64, **_) -> None:
    """The job-array options, before anything is submitted (ConfigError naming the option)."""
    check_int("timeout_min", timeout_min, 1)
    check_int("cpus_per_task", cpus_per_task, 1)
    check_int("gpus_per_node", gpus_per_node, 0)
    check_int("array_parallelism", array_parallelism, 1)


def submit_chunks(out: Path, chunk_ids: list[int], cluster: str | None = None, partition: str | None = None,
                  timeout_min: int = 60, cpus_per_task: int = 2, gpus_per_node: int = 0, array_parallelism: int = 64,
                  **extra):
    """One job-array task per chunk through submitit (Slurm; ``cluster='local'`` runs them as local processes), at
    most ``array_parallelism`` running at once; logs in DIR/submitit/, job ids in DIR/submitted.json."""
    try:
        import submitit
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("executor=submitit needs the cluster extra: pip install -e '.[cluster]'") from exc
    ex = submitit.AutoExecutor(folder=str(Path(out) / "submitit"), cluster=cluster)
    params = dict(timeout_min=timeout_min, cpus_per_task=cpus_per_task)
    if ex.cluster == "slurm":
        params["slurm_array_parallelism"] = array_parallelism
        # no warning signal before the time limit (submitit asks for USR2 90 s before it, for a checkpoint): a chunk
        # has nothing to save, and submitit's handler would end it at the warning as FAILED (at once when the limit
        # is under 90 s). Without it the chunk may still finish in time; else Slurm ends it, state TIMEOUT.
        params["slurm_signal_delay_s"] = 0
        if gpus_per_node:  # asked only when wanted: a CPU partition may refuse any GPU request
            params["gpus_per_node"] = gpus_per_node
        if partition:
            params["slurm_partition"] = partition
    ex.update_parameters(name=f"theory_sim-{Path(out).name}", **params, **extra)
    if not chunk_ids:
        return []
    # cluster jobs take no lock files (their pids cannot be checked across nodes): submitted.json keeps a chunk
    # from being queued twice while its job is active (theory_sim.sweeps.store.pending_chunks)
    n = len(chunk_ids)
    jobs = ex.map_array(run_chunk, [str(out)] * n, chunk_ids, [cpus_per_task] * n, [False] * n)
    record = Path(out) / "submitted.json"
    submitted = json.loads(record.read_text()) if record.exists() else {}
    deadline = time.time() + 60 * timeout_min
    submitted.update({str(i): {"job_id": job.job_id, "cluster": ex.cluster, "deadline": deadline,
                               "timeout_min": timeout_min} for i, job in zip(chunk_ids, jobs)})
    write_json(record, submitted)
    return jobs


# ---------------------------------------------------------------------------------------------------------------------
# CLI verbs: sweep, sweep-status
# ---------------------------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="sweep spec (TOML), e.g. studies/phase_diagram_quick.toml")
    p.add_argument("--out", type=Path, required=True, help="sweep directory (created, or resumed)")
    p.add_argument("--executor", choices=EXECUTORS, default="process",
                   help="process (default: a local pool, one torch thread per worker), inline, or submitit")
    # the executor's own options: None = not given (refused with another executor: it would have no effect)
    p.add_argument("--workers", type=int, default=None,
                   help="processes for --executor process (default: the number of cores)")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="submitit backend (default: slurm when available)")
    p.add_argument("--partition", help="submitit: Slurm partition")
    p.add_argument("--timeout-min", type=int, default=None, help="submitit: Slurm time limit per chunk job (default 60)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="submitit: CPUs per chunk job (default 2)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="submitit: GPUs per chunk job (default 0)")
    p.add_argument("--array-parallelism", type=int, default=None,
                   help="submitit: chunk jobs of the Slurm array running at once (default 64)")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="submitit: wait for the jobs and aggregate (default; --no-wait: submit and return)")
    p.add_argument("--resubmit", action="store_true", default=None,
                   help="submitit: submit missing chunks even if earlier jobs for them may still be running")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the figures and run verify once the results are complete")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm bar over chunks (default: only on a terminal)")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False,
                   help="after the sweep print verify's one-line summary, not the whole report (it is in "
                        "DIR/verify.md)")
    p.add_argument("--format", dest="fmt", choices=("png", "pdf", "svg"), default=None,
                   help="file format of the figures (default png)")
    p.add_argument("--dpi", type=int, default=None, help="resolution of the figures (default 100)")
    add_force_arguments(p)


# options that only act with one executor, or with the figures: option -> (the setting they need, how to say it)
SUBMITIT_OPTIONS = ("cluster", "partition", "timeout_min", "cpus_per_task", "gpus_per_node", "array_parallelism",
                    "wait", "resubmit")
SUBMITIT_DEFAULTS = dict(timeout_min=60, cpus_per_task=2, gpus_per_node=0, array_parallelism=64, wait=True,
                         resubmit=False)
FIGURE_OPTIONS = ("fmt", "dpi", "quiet")


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before any work, an option that would have no effect (a submitit option with another executor,
    --workers without the process pool, a figure option with --no-figures) or a value out of range; fill in the
    defaults of the others."""
    def flag(name: str) -> str:
        return "--" + {"fmt": "format"}.get(name, name).replace("_", "-")

    given = [name for name in SUBMITIT_OPTIONS if getattr(args, name) is not None]
    if given and args.executor != "submitit":
        raise ConfigError(f"{flag(given[0])} has no effect with --executor {args.executor} (it is a submitit option); "
                          f"drop it or use --executor submitit")
    if args.workers is not None and args.executor != "process":
        raise ConfigError(f"--workers has no effect with --executor {args.executor} (it sizes the process pool); "
                          f"drop it or use --executor process")
    given = [name for name in FIGURE_OPTIONS if getattr(args, name) not in (None, False)]
    if given and not args.figures:
        raise ConfigError(f"{flag(given[0])} has no effect with --no-figures (no figure is drawn); drop one of them")
    for name, value in SUBMITIT_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    args.fmt = args.fmt or "png"
    check_int("workers", args.workers, 1, MAX_WORKERS)
    check_dpi(args.dpi)


def run(args: argparse.Namespace) -> int:
    check_options(args)
    if args.executor == "inline" and getattr(args, "threads", None) is not None:   # the chunks train right here
        import torch

        torch.set_num_threads(args.threads)
    # the workers start (and load torch) while this process expands and checks the spec
    pool = start_pool(args.workers) if args.executor == "process" else None
    try:
        with _sigterm_as_interrupt():   # also while verify and the figures run (Terminated: exit 143, cli.main)
            return _run_command(args, pool)
    except BaseException:
        if pool is not None:
            _end_pool(pool)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _run_command(args: argparse.Namespace, pool) -> int:
    spec = SweepSpec.from_toml(args.spec)
    # every chunk fits, before any work: `workers` processes share this machine's memory; a cluster's jobs run on
    # other nodes (their memory is not this one's: steps only)
    local = args.executor != "submitit" or args.cluster in ("local", "debug")
    spec.check_resources(args.force_memory or not local, args.force_steps,
                         workers=min(args.workers, len(spec.chunks())) if args.executor == "process" else 1)
    opts = dict(cluster=args.cluster, partition=args.partition, timeout_min=args.timeout_min,
                cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node,
                array_parallelism=args.array_parallelism, wait=args.wait, resubmit=args.resubmit)
    t0 = time.perf_counter()
    try:
        df = run_sweep(spec, args.out, args.executor, args.workers, args.progress, opts, pool)
    except ChunksFailed as exc:  # one line per chunk: which, how its job ended, its log, what to do
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return 1
    except SweepInterrupted as exc:
        # the command is ending: a further Ctrl-C (people press it twice) must not turn the exit into a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(exc, file=sys.stderr)
        return exc.exit_status
    if pool is not None:  # the workers' memory back before verify and the figures
        pool.shutdown(wait=True)
    if df is None:
        return 0
    print(f"{spec.name}: {len(df)} runs in {args.out / 'results.parquet'} ({time.perf_counter() - t0:.1f} s, "
          f"{df.attrs.get('chunks_computed', 0)} of {len(spec.chunks())} chunks computed by this command)")
    if args.figures:
        from theory_sim.sweeps.figures import draw_figures
        from theory_sim.sweeps.verify import verify

        from theory_sim.sweeps.verify import summary_sentence

        report = verify(args.out)
        figures = draw_figures(args.out, fmt=args.fmt, dpi=args.dpi)
        if args.quiet:
            print(f"{len(figures)} figures in {args.out / 'figures'}; verify: {summary_sentence(report['summary'])} "
                  f"({args.out / 'verify.md'})")
        else:
            for path in figures:
                print(f"figure: {path}")
            print(report["markdown"])
    return 0
