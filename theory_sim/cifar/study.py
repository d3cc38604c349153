"""Shared plumbing of the CIFAR studies (``studies/cifar_*.py``): a set of named runs, each trained (or resumed)
in its own directory, summarised in one table beside the paper's numbers."""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch

from theory_sim.cifar.data import write_synthetic_cifar
from theory_sim.cifar.train import PRESETS, CifarConfig, train

# --smoke: a tiny WRN on a small synthetic CIFAR in the real pickle format, a couple of epochs: minutes on a CPU
SMOKE = dict(PRESETS["smoke"], epochs=2, batch_size=32, n_train=512, n_test=256, sharpness_samples=32)


def study_arguments(description: str, default_out: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny WRN-10-1, 2 epochs; without --data-dir on a synthetic CIFAR written to a temp dir")
    ap.add_argument("--data-dir", default=None, help="directory with the CIFAR archives (see the cifar verb)")
    ap.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    ap.add_argument("--out", default=None, help=f"where the runs go (default {default_out}; --smoke: a temp dir)")
    ap.add_argument("--epochs", type=int, default=None, help="override the number of epochs (default: preset)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.smoke:  # tiny convolutions: one thread is as fast, and far steadier on a shared machine
        torch.set_num_threads(1)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="cifar_study_") if args.smoke else default_out
    if args.data_dir is None:
        if not args.smoke:
            ap.error("--data-dir is required without --smoke (the CIFAR archives are never downloaded)")
        args.data_dir = str(write_synthetic_cifar(Path(args.out) / "synthetic_data", args.dataset,
                                                  n_train=SMOKE["n_train"], n_test=SMOKE["n_test"], seed=0))
        print(f"smoke: synthetic {args.dataset} in the real pickle format at {args.data_dir}")
    return args


def base_config(args: argparse.Namespace, **overrides) -> dict:
    """The preset (f21, or the smoke one) plus the study's own settings, as CifarConfig keyword arguments."""
    kw = dict(SMOKE) if args.smoke else dict(PRESETS["f21"])
    kw.update(dataset=args.dataset, data_dir=args.data_dir, device=args.device, sharpness=True)   # studies report it
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    kw.update(overrides)
    return kw


def run_all(configs: dict[str, CifarConfig], out: str | Path, log=print) -> pd.DataFrame:
    """Train every config in ``out/<name>`` (continuing from a checkpoint if one is there) and return one row per run:
    the final epoch's metrics plus the final model's sharpness when it was measured."""
    rows = []
    for name, cfg in configs.items():
        run_dir = Path(out) / name
        log(f"--- {name}: {run_dir}")
        res = train(cfg, run_dir, resume=True, log=log)
        last = res.metrics.iloc[-1].to_dict()
        sharp_file = run_dir / "sharpness.json"
        sharp = json.loads(sharp_file.read_text()) if sharp_file.exists() else {}
        rows.append({"run": name, **{k: v for k, v in dataclasses.asdict(cfg).items()
                                     if k in ("optimizer", "rho", "ascent_steps", "label_noise")},
                     "epochs_done": int(last["epoch"]), "test_err": 100 * (1 - last["test_acc"]),
                     "test_acc": 100 * last["test_acc"], "train_acc": 100 * last["train_acc"],
                     "gen_gap": 100 * last["gen_gap"],
                     **{k: sharp.get(k, float("nan")) for k in ("lambda_1", "trace", "r_max", "r_asc", "r_avg")}})
    df = pd.DataFrame(rows)
    df.to_csv(Path(out) / "summary.csv", index=False)
    return df


def print_report(args: argparse.Namespace, title: str, table: pd.DataFrame, float_format: str = "{:.4g}") -> None:
    """The measured-vs-paper table of a study, with the smoke caveat and where the summary went."""
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format",
                           float_format.format):
        print(f"\n{args.dataset}: {title}")
        print(table.to_string())
    if args.smoke:
        print("(smoke run: a tiny net on synthetic data for 2 epochs -- the measured columns check the pipeline, "
              "not the paper)")
    print(f"summary: {args.out}/summary.csv")
