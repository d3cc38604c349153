"""``python -m theory_sim simulate``: train SGD or SAM runs at one setting over several seeds, track gamma/rho.

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
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch

from theory_sim.config import MODELS, NOISE_PATCHES, OPTIMIZERS, ConfigError, SimConfig
from theory_sim.io import atomic_write_bytes, provenance, save_table, write_json

# CLI flag -> SimConfig field, for the options that map one to one
FIELD_FLAGS = {
    "optimizer": "optimizer", "d": "d", "mu_norm": "mu_norm", "n": "n", "P": "P", "sigma_p": "sigma_p",
    "flip_p": "flip_p", "m": "m", "sigma_0": "sigma_0", "eta": "eta", "batch_size": "batch_size",
    "epochs": "epochs", "tau": "tau", "c_tau": "c_tau", "sam_steps": "sam_steps", "loss_eps": "loss_eps",
    "model": "model", "noise_patches": "noise_patches", "project_noise": "project_noise", "n_test": "n_test",
    "n_mc": "n_mc", "log_every": "log_every", "dtype": "dtype", "device": "device",
}


def parse_seeds(text: str) -> list[int]:
    """'8' -> 0..7 ; '3-6' -> 3,4,5,6 ; '1,5,9' -> 1,5,9."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        elif "-" in text.strip()[1:]:
            lo, hi = text.split("-", 1)
            seeds = list(range(int(lo), int(hi) + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ConfigError(f"seeds must be a count N, a range A-B or a list A,B,C of integers >= 0, got {text!r}")
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty set of distinct integers >= 0, got {text!r}")
    return seeds


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The SimConfig options (shared by ``simulate`` and the studies). Defaults come from SimConfig / the preset."""
    p.add_argument("--preset", choices=("c23", "kou2023"), default="c23",
                   help="defaults to start from: c23 (docs/science.md §1-3) or kou2023 (the [K23] public script)")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--d", type=int, help="dimension of every patch (>= 1)")
    p.add_argument("--mu-norm", dest="mu_norm", type=float, help="signal strength ||mu|| (>= 0)")
    p.add_argument("--n", type=int, help="training samples")
    p.add_argument("--P", type=int, help="patches per sample (>= 2)")
    p.add_argument("--sigma-p", dest="sigma_p", type=float, help="noise level (> 0)")
    p.add_argument("--flip-p", dest="flip_p", type=float, help="label-flip probability in [0, 0.5)")
    p.add_argument("--m", type=int, help="filters per sign")
    p.add_argument("--sigma-0", dest="sigma_0", type=float, help="init std (c23 model)")
    p.add_argument("--eta", type=float, help="learning rate (> 0)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="B, must divide n")
    p.add_argument("--epochs", type=int)
    radius = p.add_mutually_exclusive_group()
    radius.add_argument("--tau", type=float, help="absolute SAM radius")
    radius.add_argument("--c-tau", dest="c_tau", type=float,
                        help="SAM radius as c_tau * m sqrt(B) / (P sigma_p sqrt(d)) (default 1)")
    p.add_argument("--sam-steps", dest="sam_steps", type=_optional_int,
                   help="SAM for the first K steps, then SGD; 'none' = SAM throughout (default)")
    p.add_argument("--loss-eps", dest="loss_eps", type=float, help="stop once the training loss is <= this")
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--noise-patches", dest="noise_patches", choices=NOISE_PATCHES)
    p.add_argument("--project-noise", dest="project_noise", action=argparse.BooleanOptionalAction, default=None,
                   help="project the noise off mu (c23 default) or not (kou2023)")
    p.add_argument("--n-test", dest="n_test", type=int, help="held-out test points per seed (0: Gaussian only)")
    p.add_argument("--n-mc", dest="n_mc", type=int, help="Gaussian draws for the test-error estimator")
    p.add_argument("--log-every", dest="log_every", type=int, help="log every k steps")
    p.add_argument("--dtype", choices=("float64", "float32"))
    p.add_argument("--device", help="auto (cuda if present), cpu, cuda, cuda:N")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    given = {field: getattr(args, flag) for flag, field in FIELD_FLAGS.items()
             if getattr(args, flag, None) is not None}
    if "sam_steps" in given and given.get("optimizer", "sgd") != "sam" and args.sam_steps is not None:
        raise ConfigError("sam_steps only applies to --optimizer sam")
    return SimConfig.preset(args.preset, **given)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_arguments(p)
    p.add_argument("--seeds", default="8", help="N (seeds 0..N-1), A-B, or A,B,C (default 8)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm bar (default: only on a terminal)")


def write_run(result, out: Path, base: SimConfig, seeds: list[int]) -> None:
    """Write every output of a finished ensemble to ``out`` (each file atomically)."""
    from theory_sim.cnn.plotting import plot_trajectory

    out.mkdir(parents=True, exist_ok=True)
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
        marker = {"SAM -> SGD": base.sam_steps} if base.optimizer == "sam" and base.sam_steps else None
        plot_trajectory(result.trajectory, out / "trajectory.png", bayes_error=base.flip_p, markers=marker,
                        title=f"{base.optimizer.upper()}  d={base.d}  ||mu||={base.mu_norm:g}  n={base.n}  "
                              f"P={base.P}  sigma_p={base.sigma_p:g}  p={base.flip_p:g}  ({len(seeds)} seeds)")
    write_json(out / "config.json", meta)  # last: its presence marks a complete run directory


def load_run(run_dir: str | Path) -> dict:
    """The stored final state of a simulate run: configs, weights (W, b, W0, b0) and the training data."""
    from theory_sim.cnn.data import Batch
    from theory_sim.cnn.model import Params
    from theory_sim.config import SimConfig

    path = Path(run_dir) / "final_state.pt"
    if not path.exists():
        raise ConfigError(f"RUN_DIR must be a simulate output directory holding final_state.pt; {path} is missing")
    state = torch.load(path, map_location="cpu", weights_only=False)
    d = state["data"]
    return {"configs": [SimConfig(**c) for c in state["configs"]],
            "params": Params(state["W"], state["b"]), "init": Params(state["W0"], state["b0"]),
            "data": Batch(d["basis"], d["mu_norm"], d["yhat"], d["y"], d["pos"], state["K"], state["P"],
                          state["shared"])}


def run(args: argparse.Namespace) -> int:
    from theory_sim.cnn.train import train_ensemble

    base = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    configs = [base.replace(seed=s) for s in seeds]   # validated here, before any work
    result = train_ensemble(configs, progress=args.progress)
    write_run(result, args.out, base, seeds)
    s = result.summary
    print(f"{base.optimizer} d={base.d} ||mu||={base.mu_norm:g}: test error {s.test_error.mean():.4f} "
          f"(Bayes {base.flip_p:g}), train loss {s.train_loss.mean():.4g}, diverged {int(s.diverged.sum())}"
          f"/{len(s)} -> {args.out}")
    return 0
