"""``python -m theory_sim simulate``: train SGD or SAM-family runs at one setting over several seeds, track gamma/rho.

Writes to ``--out DIR``:
  config.json          the base config, the seeds, git commit and versions
  summary.parquet      one row per seed: every config field, tau_effective, train_loss, train_acc, test_error
                       (+ test_error_se, Gaussian estimator), test_error_heldout, bayes_error, steps, diverged,
                       reconstruction_error (W rebuilt from gamma/rho vs the trained W, relative)
  trajectory.parquet   one row per (logged step, seed): step, epoch, seed, train_loss, train_acc, test_error,
                       gamma_max(_pos/_neg), rhobar_max, rhounder_min, rhobar_clean_mean, rhobar_flipped_mean,
                       noise_active_frac
  coefficients.npz     gamma (T, R, 2, m) and rho (T, R, 2, m, n, K) at every logged step, with labels y, yhat
  final_state.pt       initial and final weights and the training data (for ``sharpness RUN_DIR``)
  trajectory.png       the summaries over steps

Before any training: ``--out`` is resolved to an absolute path (printed at the end), the run's memory estimate and
step count are checked (``theory_sim.cnn.memory``; ``--force-memory``, ``--force-steps``), and an option with no
effect for ``--optimizer`` or switched off by another option is refused. ``--out`` must be a (new or existing)
directory that can be written, and one that already holds a simulate run is refused unless ``--overwrite``. The files are written to a staging directory
first and renamed into place at the end, config.json last, so a failed write leaves the previous run intact.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from theory_sim.config import (
    FIELD_KINDS,
    INT64_MAX,
    ConfigError,
    SimConfig,
    check_effective,
)
from theory_sim.io import (
    ResultWriteError,
    atomic_write_bytes,
    provenance,
    save_table,
    write_json,
)
from theory_sim.resources import add_force_arguments

SEEDS_FORMS = "a count N >= 1 (seeds 0..N-1), a range A-B with 0 <= A <= B, or a list A,B,C of distinct integers >= 0"
_SEEDS_RE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def parse_seeds(text: str) -> list[int]:
    """'8' -> 0..7 ; '3-6' -> 3,4,5,6 ; '1,5,9' -> 1,5,9. Anything else (an empty item as in '1,2,', a reversed
    range '3-1', a negative count '-1') is refused with the accepted forms; so are more than MAX_SEEDS seeds and a
    seed beyond int64, checked before the list is built (a count of 10^9 would otherwise take minutes)."""
    from theory_sim.resources import MAX_SEEDS

    bad = ConfigError(f"seeds must be {SEEDS_FORMS}; got {text!r}")
    too_many = ConfigError(f"seeds must be at most {MAX_SEEDS} runs (every seed is a run of one ensemble); "
                           f"{text!r} asks for more")
    if "," in text:
        items = text.split(",")
        if not all(re.fullmatch(r"\s*\d+\s*", item) for item in items):
            raise bad
        if len(items) > MAX_SEEDS:
            raise too_many
        seeds = [int(item) for item in items]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds must be {SEEDS_FORMS}; {text!r} repeats a seed")
    else:
        match = _SEEDS_RE.fullmatch(text)
        if not match:
            raise bad
        lo, hi = (None if g is None else int(g) for g in match.groups())
        if hi is None:
            lo, hi = 0, lo - 1
            if hi < 0:
                raise bad
        elif lo > hi:
            raise ConfigError(f"seeds must be {SEEDS_FORMS}; the range {text!r} is empty (A > B)")
        if hi - lo + 1 > MAX_SEEDS:
            raise too_many
        seeds = [lo, hi]
    for seed in seeds:
        if seed > INT64_MAX:
            raise ConfigError(f"seeds must be integers in [0, 2^63 - 1] (int64), got {seed}")
    return seeds if "," in text else list(range(seeds[0], seeds[1] + 1))


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def flag_fields() -> list:
    """The SimConfig fields that are ``simulate`` flags: those with a help text in their metadata."""
    return [f for f in fields(SimConfig) if "help" in f.metadata]


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The SimConfig options (shared by ``simulate`` and the studies), one flag per field, made from the field's
    type and metadata (theory_sim.config.SimConfig): a new field is one edit. Defaults come from SimConfig / the
    preset (None here: "not given")."""
    p.add_argument("--preset", choices=("c23", "kou2023"), default="c23",
                   help="defaults to start from: c23 (docs/science.md §1-3) or kou2023 (the [K23] public script)")
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in flag_fields():
        meta, kind = f.metadata, FIELD_KINDS[f.name]
        if "group" in meta and meta["group"] not in groups:
            groups[meta["group"]] = p.add_mutually_exclusive_group()
        where = groups[meta["group"]] if "group" in meta else p
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        options: dict = {"dest": f.name, "help": meta["help"]}
        if kind == "bool":
            options.update(action=argparse.BooleanOptionalAction, default=None)
        elif "choices" in meta:
            choices = meta["choices"]
            options["choices"] = choices() if callable(choices) else choices
        elif f.name == "sam_steps":   # "none": the rule throughout
            options["type"] = _optional_int
        else:
            options["type"] = {"int": int, "float": float, "str": str}[kind]
        where.add_argument(flag, **options)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    given = {f.name: getattr(args, f.name) for f in flag_fields() if getattr(args, f.name, None) is not None}
    cfg = SimConfig.preset(args.preset, **given)   # ranges first: "tau must be in [0, inf]" before applicability
    check_effective(cfg, given, flags=True)
    return cfg


# the files a simulate run writes; config.json last, so its presence marks a complete run
OUTPUT_FILES = ("summary.parquet", "trajectory.parquet", "coefficients.npz", "final_state.pt", "trajectory.png",
                "config.json")


def check_out(text: str, overwrite: bool) -> Path:
    """``--out`` must name a directory this process can create or write, and must not hold a previous run unless
    ``overwrite`` (a finished result is never replaced silently). Checked before any training."""
    if not text.strip():
        raise ConfigError("out must be a directory path, got the empty string")
    out = Path(os.path.abspath(os.path.expanduser(text)))   # "../..": say where that is
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out must be a directory (new or existing), but {out} is an existing file")
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:  # where the directory would be created
        ancestor = ancestor.parent
    if not ancestor.exists():
        raise ConfigError(f"out must be a directory path whose parent exists, got {text!r}")
    if not ancestor.is_dir():
        raise ConfigError(f"out must be a directory path, but {ancestor} (a parent of {out}) is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        where = "" if ancestor == out else f" (it would be created in {ancestor})"
        raise ConfigError(f"out must be a writable directory, but {ancestor} is not writable{where}")
    from theory_sim.sweeps.store import sweep_files

    sweep = sweep_files(out)
    if sweep:
        raise ConfigError(f"out must be a simulate run directory, but {out} holds a sweep ({', '.join(sweep)}); "
                          f"pass a new --out directory")
    previous = [name for name in OUTPUT_FILES if (out / name).exists()]
    if previous and not overwrite:
        what = ("a finished simulate run" if "config.json" in previous
                else f"files of an unfinished simulate run ({', '.join(previous)})")
        raise ConfigError(f"out must be a new directory: {out} already holds {what}; pass a new --out directory, "
                          f"or --overwrite to replace it")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_arguments(p)
    p.add_argument("--seeds", default="8", help="N (seeds 0..N-1), A-B, or A,B,C (default 8)")
    p.add_argument("--out", required=True, help="output directory (new, or empty of a previous run)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the previous simulate run in --out (refused without it: never lose a result)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm bar (default: only on a terminal)")
    add_force_arguments(p)   # --force-memory, --force-steps


def write_run(result, out: Path, base: SimConfig, seeds: list[int]) -> None:
    """Write every output of a finished ensemble to ``out``.

    Every file is first written (and fsynced) into a private staging directory inside ``out``; only then are they
    renamed into place, config.json last (its presence marks a complete run). So a failed write (disk full,
    read-only, permissions: a ``ResultWriteError`` naming the file) leaves a previous run in ``out`` (``--overwrite``)
    complete and byte-identical, and no temp file behind. While the renames run, the previous config.json is
    already gone, so a directory mixing old and new files is never marked complete."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".simulate-", suffix=".tmp", dir=out))
    except OSError as exc:
        raise ResultWriteError(out / "config.json", exc) from exc
    try:
        try:
            _write_files(result, stage, base, seeds)
        except ResultWriteError as exc:   # name the file the user asked for, not its staging copy
            raise ResultWriteError(out / exc.path.name, exc.cause) from exc.cause
        target = out / "config.json"
        try:
            target.unlink(missing_ok=True)
            for name in OUTPUT_FILES:
                target = out / name
                if (stage / name).exists():
                    os.replace(stage / name, target)
                else:   # a previous run's file (a figure not drawn) that would not match this run
                    target.unlink(missing_ok=True)
        except OSError as exc:
            raise ResultWriteError(target, exc) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_files(result, out: Path, base: SimConfig, seeds: list[int]) -> None:
    meta = {"config": base.to_dict(), "seeds": seeds, "tau_effective": base.sam_radius, **provenance()}
    save_table(result.summary, out / "summary.parquet")
    save_table(result.trajectory, out / "trajectory.parquet")
    if result.coefficients:
        buf = io.BytesIO()
        np.savez_compressed(buf, **result.coefficients)
        atomic_write_bytes(out / "coefficients.npz", buf.getvalue())
    state = {"configs": [c.to_dict() for c in result.configs],
             "W": result.params.W.cpu(), "b": None if result.params.b is None else result.params.b.cpu(),
             "W0": result.init.W.cpu(), "b0": None if result.init.b is None else result.init.b.cpu(),
             "data": {k: getattr(result.data, k).cpu() for k in ("basis", "mu_norm", "yhat", "y", "pos")},
             "K": result.data.K, "P": result.data.P, "shared": result.data.shared}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out / "final_state.pt", buf.getvalue())
    if not result.trajectory.empty:
        write_trajectory_figure(result.trajectory, out / "trajectory.png", base, seeds)
    write_json(out / "config.json", meta)


def write_trajectory_figure(trajectory, path: Path, base: SimConfig, seeds: list[int]) -> bool:
    """trajectory.png, written atomically; whether it was. A
    figure matplotlib cannot draw (a diverged run: inf, or no positive loss for the log axis) is skipped with a
    one-line warning; the tables hold the numbers."""
    from theory_sim.cnn.plotting import assignments, plot_trajectory

    marker = {fr"{base.optimizer.upper()} $\to$ SGD": base.sam_steps} if base.optimizer != "sgd" and base.sam_steps \
        else None
    shown = {k: getattr(base, k) for k in ("d", "mu_norm", "n", "P", "sigma_p", "flip_p")}
    title = f"{base.optimizer.upper()}  {assignments(shown, sep='  ')}  ({len(seeds)} seeds)"
    try:
        with warnings.catch_warnings():  # huge or non-positive values (a diverged run): not worth a warning
            warnings.simplefilter("ignore")
            plot_trajectory(trajectory.replace([np.inf, -np.inf], np.nan), path, bayes_error=base.flip_p,
                            markers=marker, title=title)   # written atomically (theory_sim.io.save_figure)
    except (ValueError, OverflowError) as exc:
        print(f"warning: {path.name} not drawn: {' '.join(str(exc).split())}", file=sys.stderr)
        return False
    return True


def load_run(run_dir: str | Path) -> dict:
    """The stored final state of a simulate run: configs, weights (W, b, W0, b0) and the training data."""
    from theory_sim.cnn.data import Batch
    from theory_sim.cnn.model import Params
    from theory_sim.config import SimConfig

    path = Path(run_dir) / "final_state.pt"
    if not path.exists():
        raise ConfigError(f"RUN_DIR must be a simulate output directory holding final_state.pt; {path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        d = state["data"]
        return {"configs": [SimConfig(**c) for c in state["configs"]],
                "params": Params(state["W"], state["b"]), "init": Params(state["W0"], state["b0"]),
                "data": Batch(d["basis"], d["mu_norm"], d["yhat"], d["y"], d["pos"], state["K"], state["P"],
                              state["shared"])}
    except ConfigError as exc:
        raise ConfigError(f"{path} holds an invalid config: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, garbage, or not a simulate state: one line, not a traceback
        raise ConfigError(f"{path} is not a readable simulate state ({type(exc).__name__}); re-run simulate to "
                          f"rebuild it") from None


def run(args: argparse.Namespace) -> int:
    from theory_sim.cnn.train import train_ensemble
    from theory_sim.cnn.memory import check_resources

    base = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    configs = [base.replace(seed=s) for s in seeds]   # validated here, before any work
    out = check_out(args.out, args.overwrite)
    check_resources(configs, what=f"simulate ({len(configs)} seeds)", force_memory=args.force_memory,
                    force_steps=args.force_steps)
    result = train_ensemble(configs, progress=args.progress)
    write_run(result, out, base, seeds)
    s = result.summary
    print(f"{base.optimizer} d={base.d} ||mu||={base.mu_norm:g}: test error {s.test_error.mean():.4f} "
          f"(Bayes {base.flip_p:g}), train loss {s.train_loss.mean():.4g}, diverged {int(s.diverged.sum())}"
          f"/{len(s)} -> {out}")
    return 0
