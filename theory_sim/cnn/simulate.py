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
step count are checked (``theory_sim.resources``; ``--force-memory``, ``--force-steps``), and an option with no
effect for ``--optimizer`` or switched off by another option is refused. ``--out`` must be a (new or existing)
directory that can be written, and one that already holds a simulate run is refused unless ``--overwrite``. The files are written to a staging directory
first and renamed into place at the end, config.json last, so a failed write leaves the previous run intact.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from theory_sim.config import (
    INT64_MAX,
    LR_SCHEDULES,
    MODELS,
    NOISE_PATCHES,
    NORMS,
    ConfigError,
    SimConfig,
    inapplicable,
    overridden,
)
from theory_sim.io import (
    ResultWriteError,
    atomic_write_bytes,
    provenance,
    save_table,
    write_json,
)
from theory_sim.resources import add_force_arguments
from theory_sim.sam import registry

# CLI flag -> SimConfig field, for the options that map one to one
FIELD_FLAGS = {
    "optimizer": "optimizer", "d": "d", "mu_norm": "mu_norm", "n": "n", "P": "P", "sigma_p": "sigma_p",
    "flip_p": "flip_p", "m": "m", "sigma_0": "sigma_0", "eta": "eta", "batch_size": "batch_size",
    "epochs": "epochs", "tau": "tau", "c_tau": "c_tau", "sam_steps": "sam_steps", "loss_eps": "loss_eps",
    "model": "model", "noise_patches": "noise_patches", "project_noise": "project_noise", "n_test": "n_test",
    "n_mc": "n_mc", "log_every": "log_every", "log_points": "log_points", "trajectory_mc": "trajectory_mc",
    "dtype": "dtype", "device": "device", "ascent_steps": "ascent_steps", "ascent_step": "ascent_step",
    "m_sharpness": "m_sharpness",
    "norm": "norm", "asam_eta": "asam_eta", "lr_schedule": "lr_schedule", "lr_warmup": "lr_warmup",
    "lr_step_gamma": "lr_step_gamma", "lr_step_every": "lr_step_every",
    "depth": "depth", "width": "width",
}

# Rule options (theory_sim.config.inapplicable, read off the rule registry theory_sim.sam.registry): a flag given
# for an optimizer it does not apply to is refused unless its value is the field's default (which means "no
# effect"); SimConfig itself accepts and ignores them, so a sweep can set one value for all its optimizer variants.

# schedule options -> the lr schedules they apply to (refused for the others, like the rule options)
SCHEDULE_OPTIONS = {"lr_warmup": ("linear_warmup_cosine",), "lr_step_gamma": ("step",), "lr_step_every": ("step",)}

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


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The SimConfig options (shared by ``simulate`` and the studies). Defaults come from SimConfig / the preset."""
    p.add_argument("--preset", choices=("c23", "kou2023"), default="c23",
                   help="defaults to start from: c23 (docs/science.md §1-3) or kou2023 (the [K23] public script)")
    p.add_argument("--optimizer", choices=registry.optimizers("cnn"),
                   help="sgd, or a SAM-family rule (docs/science.md §3.2): sam (tau g/||g||, or tau sign(g) with "
                        "--norm inf), usam (tau g), randsam (tau z/||z||, z ~ N(0, I)), msam (--ascent-steps "
                        "projected ascent steps), asam (tau T^2 g/||T g||, T = |w| + --asam-eta)"),
    p.add_argument("--d", type=int, help="dimension of every patch (>= 1)")
    p.add_argument("--mu-norm", dest="mu_norm", type=float, help="signal strength ||mu|| (>= 0)")
    p.add_argument("--n", type=int, help="training samples")
    p.add_argument("--P", type=int, help="patches per sample (>= 2)")
    p.add_argument("--sigma-p", dest="sigma_p", type=float, help="noise level (> 0)")
    p.add_argument("--flip-p", dest="flip_p", type=float, help="label-flip probability in [0, 0.5)")
    p.add_argument("--m", type=int, help="filters per sign")
    p.add_argument("--sigma-0", dest="sigma_0", type=float, help="init std (c23 model)")
    p.add_argument("--eta", type=float, help="learning rate (> 0)")
    p.add_argument("--lr-schedule", dest="lr_schedule", choices=LR_SCHEDULES,
                   help="eta(t) over the planned epochs * n / B steps (docs/science.md §3.5): constant (default), "
                        "cosine, step (times --lr-step-gamma every --lr-step-every of the steps), "
                        "linear_warmup_cosine (linear warm-up over --lr-warmup of the steps, then cosine)")
    p.add_argument("--lr-warmup", dest="lr_warmup", type=float,
                   help="linear_warmup_cosine: the warm-up's fraction of the steps, in [0, 1) (default 0.05)")
    p.add_argument("--lr-step-gamma", dest="lr_step_gamma", type=float,
                   help="step: the factor of each decay, in (0, 1] (default 0.1)")
    p.add_argument("--lr-step-every", dest="lr_step_every", type=float,
                   help="step: the fraction of the steps between two decays, in (0, 1] (default 0.5)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="B, must divide n")
    p.add_argument("--epochs", type=int, help="passes over the training set (>= 1)")
    radius = p.add_mutually_exclusive_group()
    radius.add_argument("--tau", type=float, help="absolute radius of every SAM-family rule (with --norm inf: per "
                                                  "coordinate)")
    radius.add_argument("--c-tau", dest="c_tau", type=float,
                        help="SAM-family radius as c_tau * m sqrt(B) / (P sigma_p sqrt(d)) (default 1)")
    p.add_argument("--sam-steps", dest="sam_steps", type=_optional_int,
                   help="the SAM-family rule for the first K steps, then SGD; 'none' = throughout (default)")
    p.add_argument("--ascent-steps", dest="ascent_steps", type=int,
                   help="msam: K projected normalised-gradient ascent steps in the tau-ball (>= 1, default 2; 1 = "
                        "SAM)")
    p.add_argument("--ascent-step", dest="ascent_step", type=float,
                   help="msam: the length of every ascent step after the first, as a multiple of tau (> 0, default "
                        "1; e.g. 0.2 with --ascent-steps 5)")
    p.add_argument("--m-sharpness", dest="m_sharpness", type=int,
                   help="sam/usam/msam: perturb every chunk of M samples of a batch with its own gradient and step "
                        "with the chunks' mean gradient (M divides the batch size; 0 = the whole batch, default)")
    p.add_argument("--norm", choices=NORMS,
                   help="sam: the ball of the perturbation, 2 (tau g/||g||_2, default) or inf (tau sign(g))")
    p.add_argument("--asam-eta", dest="asam_eta", type=float,
                   help="asam: the offset eta in T = |w| + eta on the weights (>= 0, default 0.01)")
    p.add_argument("--loss-eps", dest="loss_eps", type=float, help="stop once the training loss is <= this")
    p.add_argument("--model", choices=MODELS, help="network variant: c23 (docs/science.md §2) or kou2023 ([K23])")
    p.add_argument("--depth", type=int, help="model deep: layers L in [2, 8] (2 is the c23 network)")
    p.add_argument("--width", type=int, help="model deep: units of each hidden layer")
    p.add_argument("--noise-patches", dest="noise_patches", choices=NOISE_PATCHES,
                   help="the P-1 noise patches of a sample: one shared noise vector, or independent ones")
    p.add_argument("--project-noise", dest="project_noise", action=argparse.BooleanOptionalAction, default=None,
                   help="project the noise off mu (c23 default) or not (kou2023)")
    p.add_argument("--n-test", dest="n_test", type=int, help="held-out test points per seed (0: Gaussian only)")
    p.add_argument("--n-mc", dest="n_mc", type=int, help="Gaussian draws for the test-error estimator")
    p.add_argument("--log-every", dest="log_every", type=int, help="log every k steps")
    p.add_argument("--log-points", dest="log_points", type=int,
                   help="log about N log-spaced steps instead (always step 0, the end of epoch 1, the SAM -> SGD "
                        "switch and the last step); 0 = every --log-every steps (default)")
    p.add_argument("--trajectory-mc", dest="trajectory_mc", type=int,
                   help="Gaussian draws per logged test error (default 2000; 0 = none, NaN in the trajectory)")
    p.add_argument("--dtype", choices=("float64", "float32"), help="training precision")
    p.add_argument("--device", help="auto (cuda if present), cpu, cuda, cuda:N")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    given = {field: getattr(args, flag) for flag, field in FIELD_FLAGS.items()
             if getattr(args, flag, None) is not None}
    cfg = SimConfig.preset(args.preset, **given)   # ranges first: "tau must be in [0, inf]" before applicability
    optimizer = cfg.optimizer
    for name, value in given.items():
        applies = inapplicable(name, value, optimizer)
        if applies:
            raise ConfigError(f"{name} only applies to --optimizer {' / '.join(applies)}, not {optimizer}")
    for pair in overridden(given):
        flag, other = ("--" + name.replace("_", "-") for name in pair)
        raise ConfigError(f"{flag} has no effect with {other} {given[pair[1]]} (it decides alone); give one of them")
    schedule = cfg.lr_schedule
    for name, schedules in SCHEDULE_OPTIONS.items():
        if name in given and schedule not in schedules and given[name] != getattr(SimConfig, name):
            raise ConfigError(f"{name} only applies to --lr-schedule {' / '.join(schedules)}, not {schedule}")
    check_dtype_range(cfg)
    return cfg


REAL_FIELDS = ("mu_norm", "sigma_p", "sigma_0", "eta", "tau", "c_tau", "loss_eps", "asam_eta", "ascent_step",
               "lr_warmup", "lr_step_gamma", "lr_step_every")


def check_dtype_range(cfg: SimConfig) -> None:
    """Every real parameter (and the SAM radius they give) must be a finite number in the training dtype: 1e39 is
    a valid float64 but becomes inf in float32, which would silently turn the run into NaNs."""
    big = torch.finfo(getattr(torch, cfg.dtype)).max
    for name in REAL_FIELDS:
        value = getattr(cfg, name)
        if value is not None and abs(value) > big:
            raise ConfigError(f"{name} must be at most {big:.4g} (the largest {cfg.dtype}) with dtype {cfg.dtype}, "
                              f"got {value:g}")
    # the rules take norms of eps (sums of squares): a radius whose square overflows turns them into inf, and the
    # radius then no longer matters (1e30 and 1e36 gave bitwise the same float32 run)
    top = math.sqrt(big)
    if cfg.optimizer != "sgd" and not cfg.sam_radius <= top:
        name = "tau" if cfg.tau is not None else "c_tau"
        raise ConfigError(f"{name} must give a SAM radius (tau, or c_tau m sqrt(B) / (P sigma_p sqrt(d))) of at most "
                          f"{top:.4g} (the square root of the largest {cfg.dtype}: its square must be finite) with "
                          f"dtype {cfg.dtype}, got {cfg.sam_radius:g}")


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
    from theory_sim.resources import check_resources

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
