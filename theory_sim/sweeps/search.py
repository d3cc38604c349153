"""``python -m theory_sim search SPEC.toml --out DIR``: locate the benign boundary ||mu||* of every cell by bracketing
and bisection in log ||mu|| instead of a dense ||mu|| grid (docs/science.md §5.8).

The spec is a sweep spec (theory_sim.sweeps.spec) with ``trajectories = false`` plus a ``[search]`` table
(``SearchSpec``); its ``grid.mu_norm`` values are the first round's points in every cell of the other axes. Every
later round adds, per (variant, cell), from the seed-mean test errors so far (a point's mean over the seeds it
has; the boundary is verify's: the first crossing of the benign threshold, interpolated in log ||mu||):

- censored (benign at the smallest point, or never benign): one point ``expand`` times beyond it, within
  [``mu_min``, ``mu_max``] (at the limit the cell stays censored);
- a bracket wider than ``log_width`` in log ||mu||: ``points`` values evenly spaced in log inside it;
- else, a 95% seed-jackknife interval of log ||mu||* (theory_sim.intervals, docs/science.md §5.6) wider than
  ``ci_width`` (or none: a leave-one-seed-out boundary not located): ``seeds_step`` more seeds at the two
  bracket points, up to ``max_seeds`` (new seeds are the next integers after the spec's);
- else the cell is done.

A round's runs are a function of the earlier rounds alone, so the search is resumable like a grid sweep: each round
is trained as chunks (``theory_sim.sweeps.spec.make_chunks``) and written atomically as
``DIR/rounds/round-NNNNN.parquet`` once complete; re-running the command replays the stored rounds (each must hold
exactly the runs planned for it) and goes on from the first missing one. The outputs: ``results.parquet`` (one row
per run, the grid sweep's columns, ``chunk`` = the round; ``results.json`` holds the spec, so ``verify DIR`` fits
the boundaries exactly as a grid's), ``boundaries.parquet`` (per variant and cell: ``mu_star``, ``status``,
``relapse_mu``, the jackknife interval of ||mu||*, runs, seeds, the search's ``state``), ``slopes.parquet``
(verify's ``fit_slopes`` with seed-jackknife intervals: ``table_slopes``), ``search.json`` (the spec, the search
settings and their digest), ``verify.md``/``verify.json`` (verify's report of the table).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import time
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.config import ConfigError, check_float, check_int
from theory_sim.io import provenance, save_table, write_json, write_parquet
from theory_sim.intervals import Interval, jackknife_interval, leave_one_out
from theory_sim.sweeps.spec import SweepSpec, make_chunks
from theory_sim.sweeps.spec_toml import Axis, read_toml
from theory_sim.sweeps.verify import (
    boundaries,
    cell_arrays,
    crossing,
    fit_slopes,
    resampled_boundaries,
    resampled_slopes,
    verify_table,
)

STATES = ("extending", "bisecting", "adding seeds", "done", "censored", "unfinished")


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """The ``[search]`` table: how a cell's bracket is refined (module docstring)."""

    points: int = 1            # new ||mu|| values per bisection, evenly spaced in log inside the bracket
    log_width: float = 0.05    # target bracket width in log ||mu||
    ci_width: float = 0.2      # target width of the 95% seed-jackknife interval of log ||mu||*
    seeds_step: int = 0        # seeds added where the interval is too wide (0: the spec's seeds)
    max_seeds: int = 0         # at most this many seeds per point (0: the spec's seeds, never add)
    max_rounds: int = 20
    expand: float = 4.0        # a censored cell's next point: this factor beyond its last one
    mu_min: float = 1e-3
    mu_max: float = 1e4

    def __post_init__(self) -> None:
        check_int("search.points", self.points, 1, 64)
        check_float("search.log_width", self.log_width, 0.0, lo_open=True)
        check_float("search.ci_width", self.ci_width, 0.0, lo_open=True)
        check_int("search.seeds_step", self.seeds_step, 0, 10 ** 5)
        check_int("search.max_seeds", self.max_seeds, 0, 10 ** 5)
        check_int("search.max_rounds", self.max_rounds, 1, 1000)
        check_float("search.expand", self.expand, 1.0, lo_open=True)
        check_float("search.mu_min", self.mu_min, 0.0, lo_open=True)
        check_float("search.mu_max", self.mu_max, self.mu_min, lo_open=True)

    @classmethod
    def from_dict(cls, d) -> "SearchSpec":
        if not isinstance(d, dict):
            raise ConfigError(f"search must be a table ([search] with key = value lines), got {d!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"search has unknown keys {unknown}; allowed: {names}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load(path: str | Path) -> tuple[SweepSpec, SearchSpec]:
    """A search spec file: a sweep spec with ``trajectories = false`` and a ``[search]`` table."""
    d = read_toml(path)
    if "search" not in d:
        raise ConfigError(f"spec {path} has no [search] table: a grid sweep runs with `sweep`")
    search = SearchSpec.from_dict(d.pop("search"))
    if d.get("trajectories", True):
        raise ConfigError("trajectories must be false in a boundary search (its rounds keep final test errors only)")
    spec = SweepSpec.from_dict(d, name=Path(path).stem)
    if min(spec.axis("mu_norm").values) <= 0:
        raise ConfigError(f"grid.mu_norm values must be > 0 in a boundary search (it bisects in log ||mu||), got "
                          f"{list(spec.axis('mu_norm').values)}")
    return spec, _resolved(search, spec)


def _resolved(search: SearchSpec, spec: SweepSpec) -> SearchSpec:
    """The defaults that depend on the spec (seeds_step, max_seeds) filled in."""
    step = search.seeds_step or spec.seeds
    return dataclasses.replace(search, seeds_step=step, max_seeds=max(search.max_seeds or spec.seeds, spec.seeds))


def digest(spec: SweepSpec, search: SearchSpec) -> str:
    text = json.dumps({"spec": spec.digest(), "search": search.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Planning a round
# ----------------------------------------------------------------------------------------------------------------
def units(spec: SweepSpec) -> list[tuple]:
    """Every (label, *cell_dims values) the search locates a boundary in (a dimension not swept: its one value)."""
    first = {}
    for key, cfg in spec.runs:
        first.setdefault(key[0], cfg)
    out = []
    for o in spec.optimizers:
        values = [spec.axis(k).values if spec.axis(k) else (getattr(first[o.label], k),) for k in spec.cell_dims]
        out += [(o.label, *combo) for combo in product(*values)]
    return out


def unit_runs(spec: SweepSpec, unit: tuple, mus, seeds: range) -> list[tuple[tuple, object]]:
    """The (run key, config) of variant and cell ``unit`` at ``mus`` on ``seeds``: the runs a grid sweep of the same
    spec would hold at these ||mu|| (the same data seeds, also under independent cell seeding)."""
    axes = tuple(Axis(k, (v,)) for k, v in zip(spec.cell_dims, unit[1:]) if spec.axis(k)) + \
        (Axis("mu_norm", tuple(mus)),)
    sub = dataclasses.replace(spec, axes=axes, optimizers=tuple(o for o in spec.optimizers if o.label == unit[0]),
                              seeds=len(seeds), seed_offset=spec.seed_offset + seeds.start, _configs=None,
                              _trained=None, _chunks=None)
    return sub.runs


def log_interval(mus: np.ndarray, errs: np.ndarray, threshold: float) -> tuple[float, float]:
    """The 95% seed-jackknife interval of log ||mu||* of one cell (errs (M, S), NaN where a point lacks a seed);
    (-inf, inf) when the boundary is not located on all seeds or without one of them."""
    point = crossing(mus, np.nanmean(errs, axis=1), threshold)[0]
    loo = resampled_boundaries({0: (mus, errs)}, threshold, leave_one_out(errs.shape[1]))[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        interval = jackknife_interval(np.log(point), np.log(loo))
    return (interval.low, interval.high) if interval.finite else (-np.inf, np.inf)


def decide(mus: np.ndarray, errs: np.ndarray, threshold: float, search: SearchSpec) -> tuple[list, range | None, str]:
    """The next (||mu|| values, seeds) of one cell and its state (see the module docstring)."""
    seeds = range(errs.shape[1])
    mean = np.nanmean(errs, axis=1)
    _, status, _ = crossing(mus, mean, threshold)
    if status == "benign_everywhere":
        if mus[0] <= search.mu_min * (1 + 1e-9):
            return [], None, "censored"
        return [max(mus[0] / search.expand, search.mu_min)], seeds, "extending"
    if status == "never_benign":
        if mus[-1] >= search.mu_max * (1 - 1e-9):
            return [], None, "censored"
        return [min(mus[-1] * search.expand, search.mu_max)], seeds, "extending"
    k = int(np.argmax(mean <= threshold))
    a, b = mus[k - 1], mus[k]
    if np.log(b / a) > search.log_width:
        return [float(v) for v in np.geomspace(a, b, search.points + 2)[1:-1]], seeds, "bisecting"
    lo, hi = log_interval(mus, errs, threshold)
    S = errs.shape[1]
    if hi - lo > search.ci_width and S < search.max_seeds:
        return [float(a), float(b)], range(S, min(S + search.seeds_step, search.max_seeds)), "adding seeds"
    return [], None, "done"


def plan(spec: SweepSpec, search: SearchSpec, table: pd.DataFrame | None, threshold: float):
    """The next round's runs and every cell's state, from the runs so far (None: the first round, the spec's grid)."""
    first = sorted(spec.axis("mu_norm").values)
    cells = {} if table is None else cell_arrays(table, spec.cell_dims)
    runs, states = [], {}
    for unit in units(spec):
        if unit not in cells:
            mus, seeds, state = first, range(spec.seeds), "bisecting"
        else:
            mus, seeds, state = decide(*cells[unit], threshold, search)
        states[unit] = state
        if mus:
            runs += unit_runs(spec, unit, mus, seeds)
    return runs, states


# ----------------------------------------------------------------------------------------------------------------
# Training a round
# ----------------------------------------------------------------------------------------------------------------
def train_chunk(chunk: list[tuple[tuple, object]]) -> pd.DataFrame:
    """One chunk's results rows (label, the summary of ``train_ensemble``): what a grid sweep's shard holds. One
    torch thread, as the sweep's workers (parallelism comes from the processes)."""
    import torch

    from theory_sim.cnn.train import train_ensemble
    from theory_sim.sweeps.runner import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()
    configs = [cfg for _, cfg in chunk]
    df = train_ensemble(configs, track=False, log=False, progress=False, heldout=configs[0].n_test > 0,
                        reconstruct=False).summary
    df.insert(0, "label", [key[0] for key, _ in chunk])
    return df


def round_path(out: Path, r: int) -> Path:
    return Path(out) / "rounds" / f"round-{r:05d}.parquet"


def _stored_round(path: Path, runs, key: list[str]) -> pd.DataFrame | None:
    """The stored round if it holds exactly the planned runs, else None (recomputed)."""
    if not path.exists():
        return None
    try:
        df = pd.read_parquet(path)
    except Exception:  # noqa: BLE001 - a damaged file is recomputed
        return None
    want = sorted(tuple(k) for k, _ in runs)
    have = sorted(df[key].itertuples(index=False, name=None)) if set(key) <= set(df.columns) else None
    return df if have == want else None


def _prepare(spec: SweepSpec, search: SearchSpec, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "search.json"
    ident = digest(spec, search)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("digest") != ident:
            raise ConfigError(f"search spec differs from the one that produced {out} (digest {stored.get('digest')} "
                              f"vs {ident}); use a new --out directory")
        return
    write_json(path, {"spec": spec.to_dict(), "search": search.to_dict(), "digest": ident, **provenance()})


def run_search(spec: SweepSpec, search: SearchSpec, out: str | Path, executor: str = "inline", workers: int = 1,
               train=train_chunk, log=print) -> dict:
    """Run (or resume) the search; write the tables of the module docstring; return {results, boundaries,
    verify, rounds, seconds}. ``train``: chunk -> results rows (``train_chunk``; tests pass a synthetic law)."""
    from theory_sim.sweeps.runner import _end_pool, start_pool

    out = Path(out)
    search = _resolved(search, spec)   # a SearchSpec built in code, not by load(): seeds_step 0 would add none
    _prepare(spec, search, out)
    t0 = time.perf_counter()
    threshold = spec.benign_threshold(spec.flip_p)
    key = list(spec.run_key)
    pool = start_pool(workers) if executor == "process" and workers > 1 else None
    table, states, computed = None, {}, 0
    try:
        for r in range(search.max_rounds + 1):
            runs, states = plan(spec, search, table, threshold)
            if not runs or r == search.max_rounds:
                break
            df = _stored_round(round_path(out, r), runs, key)
            if df is None:
                chunks = make_chunks(runs, spec.chunk_runs)
                parts = list(pool.map(train, chunks)) if pool else [train(c) for c in chunks]
                df = pd.concat(parts, ignore_index=True)
                df["chunk"] = r
                write_parquet(df, round_path(out, r))
                computed += 1
            table = df if table is None else pd.concat([table, df], ignore_index=True)
            log(f"{spec.name}: round {r}: {len(df)} runs, {len(table)} in all; "
                + ", ".join(f"{s} {sum(v == s for v in states.values())}" for s in STATES
                            if any(v == s for v in states.values())))
    finally:
        if pool is not None:
            _end_pool(pool)
    states = {u: ("unfinished" if s in STATES[:3] else s) for u, s in states.items()}
    table = table.sort_values(key).reset_index(drop=True)
    sidecar = {"spec": spec.to_dict(), "digest": spec.digest(), "search": search.to_dict(), **provenance()}
    save_table(table, out / "results.parquet", {**sidecar, "rows": len(table)})
    bnd = boundary_table(table, spec, threshold, states)
    save_table(bnd, out / "boundaries.parquet", {**sidecar, "rows": len(bnd)})
    fits = table_slopes(table, spec)
    save_table(fits, out / "slopes.parquet", {**sidecar, "rows": len(fits)})
    verify_table(table, spec, out)   # verify.md / verify.json: the claims, as for a grid
    seconds = time.perf_counter() - t0
    log(f"{spec.name}: {len(table)} runs in {r} rounds ({computed} computed by this command, {seconds:.1f} s); "
        f"boundaries in {out / 'boundaries.parquet'}, slopes in {out / 'slopes.parquet'} and {out / 'verify.md'}")
    return {"results": table, "boundaries": bnd, "slopes": fits, "rounds": r, "seconds": seconds}


def table_slopes(table: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """The boundary slopes of a results table (a search's or a grid's) with their seed-jackknife intervals, as
    verify computes them (``boundaries``, ``resampled_boundaries`` on ``leave_one_out`` draws, ``fit_slopes``)."""
    threshold = spec.benign_threshold(float(table.flip_p.iloc[0]))
    cells = cell_arrays(table, spec.cell_dims)
    bnd = boundaries(cells, threshold, dims=spec.cell_dims)
    loo = resampled_boundaries(cells, threshold, leave_one_out(int(table.seed.nunique())))
    return slopes_with_intervals(bnd, loo, spec.cell_dims)


def slopes_with_intervals(bnd: pd.DataFrame, loo: np.ndarray, dims) -> pd.DataFrame:
    """verify's ``fit_slopes`` of the boundaries ``bnd`` with the 95% jackknife-t interval of each slope (``se``,
    ``seeds``: theory_sim.intervals.jackknife_interval): ``loo`` holds the leave-one-seed-out boundaries of bnd's
    cells (``resampled_boundaries`` on ``leave_one_out(S)``, rows aligned); NaN where a slope is not defined
    without one of the seeds."""
    bnd = bnd.reset_index(drop=True)
    fits = fit_slopes(bnd, dims)
    if fits.empty:
        return fits.assign(ci_low=[], ci_high=[], se=[], seeds=[])
    ci = [jackknife_interval(p, r) for p, r in zip(fits.slope, resampled_slopes(bnd, loo, dims))]
    return fits.assign(ci_low=[c.low for c in ci], ci_high=[c.high for c in ci], se=[c.se for c in ci],
                       seeds=[c.units for c in ci])


def slope_interval(row) -> Interval:
    """A row of ``slopes_with_intervals`` as the Interval a claim's verdict reads."""
    return Interval(float(row.slope), float(row.ci_low), float(row.ci_high), float(row.se), int(row.seeds))


def boundary_table(table: pd.DataFrame, spec: SweepSpec, threshold: float,
                   states: dict) -> pd.DataFrame:
    """verify's boundary of every cell (``boundaries``) with the search's jackknife interval of ||mu||*, the runs
    and seeds it took, and its final state."""
    dims = spec.cell_dims
    cells = cell_arrays(table, dims)
    bnd = boundaries(cells, threshold, dims=dims)
    ci = [log_interval(mus, errs, threshold) for mus, errs in cells.values()]
    bnd["mu_star_low"] = np.exp([c[0] for c in ci])
    bnd["mu_star_high"] = np.exp([c[1] for c in ci])
    counts = table.groupby(["label", *dims]).agg(runs=("seed", "size"), seeds=("seed", "nunique"),
                                                  points=("mu_norm", "nunique"))
    bnd = bnd.merge(counts.reset_index(), on=["label", *dims], how="left")
    bnd["state"] = [states.get(k, "done") for k in bnd[["label", *dims]].itertuples(index=False, name=None)]
    return bnd


# ----------------------------------------------------------------------------------------------------------------
# The verb
# ----------------------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="a sweep TOML spec with a [search] table (trajectories = false)")
    p.add_argument("--out", type=Path, required=True, help="output directory (resumable: re-run to continue)")
    p.add_argument("--executor", choices=("process", "inline"), default="process",
                   help="process: a local pool of --workers processes (default); inline: this process")
    p.add_argument("--workers", type=int, default=2, help="pool processes (default 2)")


def run(args: argparse.Namespace) -> int:
    import torch

    check_int("workers", args.workers, 1, 256)
    spec, search = load(args.spec)
    spec.check_resources(workers=args.workers if args.executor == "process" else 1)
    if args.executor == "inline":
        torch.set_num_threads(1)
    run_search(spec, search, args.out, executor=args.executor, workers=args.workers)
    return 0
