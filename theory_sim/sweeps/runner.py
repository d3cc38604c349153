"""Resumable phase-diagram sweeps: chunks of runs trained as batched ensembles, one parquet shard per chunk.

The directory layout is described in ``theory_sim.sweeps.store``.

A killed sweep loses at most the chunks that were running; re-running the same command recomputes only the shards
that are missing or unreadable or hold the wrong runs. Executors: ``inline`` (this process), ``process`` (a local
process pool), ``submitit`` (Slurm job arrays, or submitit's local executor with ``--cluster local``).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

from theory_sim.config import ConfigError, check_choice, check_int
from theory_sim.io import provenance, save_table, write_json, write_parquet
from theory_sim.sweeps.spec import RUN_KEY, SweepSpec
from theory_sim.sweeps.store import (
    load_spec,
    missing_chunks,
    pending_chunks,
    prepare,
    shard_path,
)

EXECUTORS = ("inline", "process", "submitit")


def run_chunk(out: str, chunk_id: int, threads: int | None = None) -> str:
    """Train one chunk and write its shard atomically. Top-level so process pools and submitit can pickle it."""
    import torch

    from theory_sim.cnn.train import train_ensemble

    if threads:
        torch.set_num_threads(threads)
    spec = load_spec(Path(out))
    chunk = spec.chunks()[chunk_id]
    configs = [cfg for _, cfg in chunk]
    t0 = time.perf_counter()
    res = train_ensemble(configs, track=False, log=False, progress=False, heldout=configs[0].n_test > 0)
    df = res.summary
    df.insert(0, "label", [key[0] for key, _ in chunk])
    df["chunk"] = chunk_id
    df["chunk_seconds"] = time.perf_counter() - t0
    path = shard_path(Path(out), chunk_id)
    write_parquet(df, path)
    return str(path)




def aggregate(spec: SweepSpec, out: Path) -> pd.DataFrame:
    """Concatenate every shard into DIR/results.parquet (one row per cell x seed x optimizer)."""
    frames = [pd.read_parquet(shard_path(out, i)) for i in range(len(spec.chunks()))]
    df = pd.concat(frames, ignore_index=True).sort_values(list(RUN_KEY)).reset_index(drop=True)
    df = df.drop(columns=["chunk_seconds"])
    save_table(df, Path(out) / "results.parquet",
               {"spec": spec.to_dict(), "digest": spec.digest(), "rows": len(df), **provenance()})
    return df


def run_sweep(spec: SweepSpec, out: Path, executor: str = "inline", workers: int = 1, progress: bool | None = None,
              submitit_options: dict | None = None) -> pd.DataFrame | None:
    """Run every missing chunk and aggregate. Returns the results table (None if submitit jobs were left queued)."""
    from tqdm.auto import tqdm

    check_choice("executor", executor, EXECUTORS)
    check_int("workers", workers, 1)
    out = Path(out)
    prepare(spec, out)
    todo = missing_chunks(spec, out)
    write_json(out / "run.json", {"executor": executor, "workers": workers, "started": time.time(),
                                  "chunks_total": len(spec.chunks()), "chunks_todo": len(todo)})
    bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="chunk", disable=(not progress)
               if progress is not None else None)
    if executor == "inline":
        for i in todo:
            run_chunk(str(out), i)
            bar.update(1)
    elif executor == "process":
        import concurrent.futures as cf
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // workers)  # small tensors: processes beat threads
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_chunk, str(out), i, threads) for i in todo]
            for fut in cf.as_completed(futures):
                fut.result()
                bar.update(1)
    else:
        opts = dict(submitit_options or {})
        in_flight = [] if opts.pop("resubmit", False) else pending_chunks(out, todo)
        if in_flight:  # submitted earlier and still within their time limit: do not queue them twice
            print(f"{len(in_flight)} chunks were submitted earlier and may still be running; not resubmitting them "
                  f"(--resubmit to force)")
            todo = [i for i in todo if i not in set(in_flight)]
        jobs = submit_chunks(out, todo, **opts)
        if not opts.get("wait", True) or in_flight:
            bar.close()
            print(f"submitted {len(jobs)} chunk jobs; re-run the same command (or `sweep-status {out}`) later")
            return None
        for job in jobs:
            job.result()
            bar.update(1)
    bar.close()
    still = missing_chunks(spec, out)
    if still:
        raise RuntimeError(f"{len(still)} chunks did not produce a shard: {still[:10]}")
    return aggregate(spec, out)


def submit_chunks(out: Path, chunk_ids: list[int], cluster: str | None = None, partition: str | None = None,
                  timeout_min: int = 60, cpus_per_task: int = 2, gpus_per_node: int = 0, array_parallelism: int = 64,
                  wait: bool = True, **extra):
    """One job-array task per chunk through submitit (Slurm; ``cluster='local'`` runs them as local processes)."""
    try:
        import submitit
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("executor=submitit needs the cluster extra: pip install -e '.[cluster]'") from exc
    ex = submitit.AutoExecutor(folder=str(Path(out) / "submitit"), cluster=cluster)
    params = dict(timeout_min=timeout_min, cpus_per_task=cpus_per_task)
    if ex.cluster == "slurm":
        params.update(slurm_array_parallelism=array_parallelism, gpus_per_node=gpus_per_node)
        if partition:
            params["slurm_partition"] = partition
    ex.update_parameters(name=f"theory_sim-{Path(out).name}", **params, **extra)
    if not chunk_ids:
        return []
    jobs = ex.map_array(run_chunk, [str(out)] * len(chunk_ids), chunk_ids, [cpus_per_task] * len(chunk_ids))
    record = Path(out) / "submitted.json"
    submitted = json.loads(record.read_text()) if record.exists() else {}
    deadline = time.time() + 60 * timeout_min
    submitted.update({str(i): {"job_id": job.job_id, "deadline": deadline} for i, job in zip(chunk_ids, jobs)})
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
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for --executor process (default: the number of cores)")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="submitit backend (default: slurm when available)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--timeout-min", type=int, default=60, help="Slurm time limit per chunk job")
    p.add_argument("--cpus-per-task", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--array-parallelism", type=int, default=64)
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="wait for submitit jobs and aggregate (--no-wait: submit and return)")
    p.add_argument("--resubmit", action="store_true",
                   help="submit missing chunks even if earlier jobs for them may still be running")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the figures and run verify once the results are complete")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def run(args: argparse.Namespace) -> int:
    spec = SweepSpec.from_toml(args.spec)
    check_int("workers", args.workers, 1)
    opts = dict(cluster=args.cluster, partition=args.partition, timeout_min=args.timeout_min,
                cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node,
                array_parallelism=args.array_parallelism, wait=args.wait, resubmit=args.resubmit)
    t0 = time.perf_counter()
    df = run_sweep(spec, args.out, args.executor, args.workers, args.progress, opts)
    if df is None:
        return 0
    print(f"{spec.name}: {len(df)} runs in {args.out / 'results.parquet'} ({time.perf_counter() - t0:.1f} s)")
    if args.figures:
        from theory_sim.sweeps.figures import draw_figures
        from theory_sim.sweeps.verify import verify

        report = verify(args.out)
        for path in draw_figures(args.out):
            print(f"figure: {path}")
        print(report["markdown"])
    return 0
