"""Train a WideResNet on CIFAR-10/100 with SGD or a member of the SAM family: ``python -m theory_sim cifar ...``.

One plain loop, nanoGPT style: the dataset sits on the device as uint8, each step augments a batch there, runs the
optimizer (``theory_sim.sam.optim.SAM``: SAM p=2 / p=inf [F21], ASAM [K21], Rand-SAM and multi-step SAM [T24],
m-sharpness [F21]; docs/science.md §8), and each epoch appends one row of metrics to ``RUN/metrics.parquet`` and writes
an atomic checkpoint from which ``--resume`` continues bitwise identically (on CPU). Preset ``f21`` is the SAM paper's
WRN-28-10 recipe (docs/science.md §9.3). Multi-GPU: launch with ``torchrun`` (DDP, detected from
WORLD_SIZE/RANK/LOCAL_RANK); Slurm: ``--slurm`` submits the same run through submitit.

The pieces: ``config`` (CifarConfig, presets), ``data`` (loader, augmentation), ``wrn`` (the model), ``checkpoint``
(the run directory, resume), ``distributed`` (device, DDP, Slurm); this module is the loop and the CLI.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from theory_sim.cifar.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    read_config_json,
    restore,
    rng_state,
    save_epoch,
    sync_metrics,
    write_result_json,
    write_sidecars,
)
from theory_sim.cifar.config import (  # noqa: F401  (re-exported: the public names of the CIFAR trainer)
    DEFAULT_RHO,
    OPTIMIZERS,
    PRESETS,
    RUNTIME_FIELDS,
    CifarConfig,
    config_from_values,
    resumed_config,
)
from theory_sim.cifar.data import (
    NUM_CLASSES,
    Augment,
    epoch_indices,
    load_dataset,
    symmetric_label_noise,
    write_synthetic_cifar,
)
from theory_sim.cifar.distributed import (
    Dist,
    all_reduce,
    barrier,
    broadcast_buffers,
    gather_objects,
    is_main_process,
    pick_device,
    setup_distributed,
    submit_slurm,
    teardown_distributed,
    wrap_ddp,
)
from theory_sim.cifar.errors import writing
from theory_sim.cifar.memory import check_cifar_resources
from theory_sim.cifar.wrn import WideResNet
from theory_sim.config import ConfigError, check_int, check_renamed_flags, deprecated_flag
from theory_sim.resources import add_force_arguments
from theory_sim.sam import registry
from theory_sim.sam.optim import ASAM_SCOPES, BN_UPDATES, SAM


@dataclass
class Result:
    metrics: pd.DataFrame  # one row per epoch
    model: nn.Module
    sharpness: dict | None
    finished: bool


@dataclass
class Runtime:
    """Where the tensors live: device, DDP rank/world, bf16 autocast (CUDA only, a fresh context per use; CPU and MPS
    train in float32) and the memory format (channels_last on GPUs)."""
    device: torch.device
    dd: Dist
    amp: Callable
    mem_fmt: torch.memory_format


@dataclass
class TrainData:
    """The run's images (uint8) and labels on the device; the train labels possibly noised."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    per_rank: int  # batch size per DDP replica
    steps: int  # optimizer steps per epoch (full batches only: no batch of 1 reaches BatchNorm)


# ---- the run --------------------------------------------------------------------------------------------------------
def train(cfg: CifarConfig, out: str | Path, *, resume: bool = False, stop_after: int | None = None,
          log=print) -> Result:
    """Train (or, with ``resume``, continue) the run in directory ``out``; ``stop_after`` ends this invocation after
    that many epochs (the checkpoint lets a later ``resume`` finish the run)."""
    out = Path(out)
    rt = make_runtime(cfg.device)
    log = log if rt.dd.main else (lambda *a, **k: None)
    cfg, ckpt = open_run(cfg, out, resume, rt.dd.main, log)
    if stop_after is not None:
        check_int("stop_after", stop_after, lo=1)
    # Python/numpy/torch seeds; every rank draws the same init (DDP also broadcasts it), then its own stream.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg, out, rt, fresh=ckpt is None)

    model = WideResNet(cfg.depth, cfg.width, data.num_classes, cfg.dropout, in_channels=data.x_train.shape[1]).to(
        rt.device, memory_format=rt.mem_fmt)
    net = wrap_ddp(model, rt.dd, rt.device)
    if cfg.compile:
        net = torch.compile(net)
    opt = build_optimizer(cfg, model, net, rt.device, seed=cfg.seed * 1000 + rt.dd.rank + 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * data.steps)  # per-step cosine to 0
    aug = Augment(cfg.dataset, rt.device, seed=cfg.seed * 1000 + rt.dd.rank, cutout=cfg.cutout)
    torch.manual_seed(cfg.seed * 1000 + rt.dd.rank + 7)  # dropout: its own stream per replica
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history, start = [], 0
    if ckpt is not None:
        history, start = restore(ckpt, model, opt, sched, aug, rt.dd.rank, rt.dd.world, out / CHECKPOINT, log)
    log(describe(cfg, data, rt))

    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    for epoch in range(start, end):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        tr = train_one_epoch(cfg, net, opt, sched, criterion, aug, data, epoch, rt)
        broadcast_buffers(model, rt.dd)
        te = evaluate(model, data.x_test, data.y_test, aug, cfg.eval_batch_size, rt)
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        row = dict(epoch=epoch + 1, train_loss=tr["loss"], train_acc=tr["acc"], test_loss=te["loss"],
                   test_acc=te["acc"], gen_gap=tr["acc"] - te["acc"], gen_gap_loss=te["loss"] - tr["loss"], lr=lr,
                   perturbation_norm=tr["pnorm"], epoch_time=time.perf_counter() - t0)
        history.append(row)
        rngs = gather_objects(rng_state(aug, opt), rt.dd)
        if rt.dd.main:
            save_epoch(out, history, dict(epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict(),
                                          scheduler=sched.state_dict(), rng=rngs, history=history, config=asdict(cfg)))
            log(format_row(row, cfg.epochs))

    finished = len(history) == cfg.epochs
    sharp = None
    if finished and cfg.sharpness and rt.dd.main and (end > start or not (out / "sharpness.json").exists()):
        sharp = measure_sharpness(cfg, model, data, aug, rt, out, log)
    barrier(rt.dd)
    return Result(pd.DataFrame(history), model, sharp, finished)


def make_runtime(device_name: str) -> Runtime:
    device = pick_device(device_name)
    dd, device = setup_distributed(device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    mem_fmt = torch.channels_last if device.type in ("cuda", "mps") else torch.contiguous_format
    return Runtime(device, dd, amp, mem_fmt)


def open_run(cfg: CifarConfig, out: Path, resume: bool, main: bool, log) -> tuple[CifarConfig, dict | None]:
    """The config to train with and the checkpoint to continue from (``None``: a fresh run). A run directory is never
    reused without ``resume``; on resume only the runtime fields of ``cfg`` may differ from the checkpoint's config,
    and the main process brings metrics.parquet up to the checkpoint (after a failed write)."""
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise ConfigError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue it or choose "
                          f"another --out")
    if not resume:
        return cfg, None
    if not ckpt_path.exists():
        log(f"resume: no checkpoint in {out}, starting a fresh run")
        return cfg, None
    ckpt = load_checkpoint(ckpt_path)
    cfg = resumed_config(config_from_values(ckpt["config"], str(ckpt_path)), asdict(cfg), str(out))
    if main:
        sync_metrics(out, ckpt["history"])
    log(f"resume: {out} after epoch {ckpt['epoch'] + 1}")
    return cfg, ckpt


def prepare_data(cfg: CifarConfig, out: Path, rt: Runtime, fresh: bool) -> TrainData:
    """Load the dataset (the first n_train / n_test images), noise the train labels, check the batch fits, write the
    run's sidecar files (fresh runs, main process) and move everything to the device as uint8."""
    dd = rt.dd
    arr = load_dataset(cfg.dataset, cfg.data_dir)
    x_tr, y_tr, x_te, y_te = arr.x_train, arr.y_train, arr.x_test, arr.y_test
    for name, n, have in (("n_train", cfg.n_train, len(y_tr)), ("n_test", cfg.n_test, len(y_te))):
        if n > have:   # slicing would silently use fewer images than asked for
            raise ConfigError(f"{name} must be at most {have} (the {cfg.dataset} images in {cfg.data_dir}), got {n}")
    if cfg.n_train:
        x_tr, y_tr = x_tr[: cfg.n_train], y_tr[: cfg.n_train]
    if cfg.n_test:
        x_te, y_te = x_te[: cfg.n_test], y_te[: cfg.n_test]
    clean_y_tr = y_tr
    noise_mask = np.zeros(len(y_tr), dtype=bool)
    if cfg.label_noise > 0:
        y_tr, noise_mask = symmetric_label_noise(y_tr, cfg.label_noise, arr.num_classes, cfg.seed)
    per_rank = cfg.batch_size // dd.world
    if cfg.batch_size % dd.world:
        raise ConfigError(f"batch_size must be divisible by the number of DDP processes ({dd.world}), "
                          f"got {cfg.batch_size}")
    steps = -(-len(y_tr) // dd.world) // per_rank  # full batches only: no batch of 1 reaches BatchNorm
    if steps < 1:
        raise ConfigError(f"batch_size must be <= the training set size per process "
                          f"({-(-len(y_tr) // dd.world)}), got {cfg.batch_size}")
    if dd.main:
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
        if fresh:
            write_sidecars(out, cfg, dd.world, rt.device, clean_y_tr, y_tr, noise_mask)
    dev = rt.device
    return TrainData(torch.from_numpy(x_tr).to(dev), torch.from_numpy(y_tr).to(dev), torch.from_numpy(x_te).to(dev),
                     torch.from_numpy(y_te).to(dev), arr.num_classes, per_rank, steps)


def build_optimizer(cfg: CifarConfig, model: nn.Module, net: nn.Module, device: torch.device, seed: int):
    base = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), **base)
    gen = None
    if cfg.optimizer == "randsam":
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    # msam's ascent step length alpha = ascent_step * rho (ascent_step = 1: alpha = rho, the optimizer's default)
    ascent_lr = cfg.ascent_step * cfg.rho if cfg.multi_step and cfg.rho > 0 else None
    return SAM(model.parameters(), torch.optim.SGD, rule=cfg.rule, rho=cfg.rho, steps_k=cfg.ascent_steps,
               ascent_lr=ascent_lr, eta_a=cfg.asam_eta, asam_scope=cfg.asam_scope, bn_update=cfg.bn_update, model=net,
               generator=gen, **base)


def describe(cfg: CifarConfig, data: TrainData, rt: Runtime) -> str:
    return (f"{cfg.dataset} WRN-{cfg.depth}-{cfg.width} {cfg.optimizer} (rule "
            f"{cfg.rule or '-'}, rho {cfg.rho}, k {cfg.ascent_steps}) | {len(data.y_train)} "
            f"train / {len(data.y_test)} test | noise {cfg.label_noise} | device {rt.device} x{rt.dd.world} | "
            f"{data.steps} steps/epoch")


def format_row(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs} | train loss {row['train_loss']:.4f} acc "
            f"{100 * row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}% | "
            f"gap {100 * row['gen_gap']:+.2f}% | lr {row['lr']:.4g} | |eps| {row['perturbation_norm']:.4g} | "
            f"{row['epoch_time']:.1f}s")


def train_one_epoch(cfg: CifarConfig, net, opt, sched, criterion, aug: Augment, data: TrainData, epoch: int,
                    rt: Runtime) -> dict:
    """One pass over this replica's shard: augment on the device, one optimizer step per batch. Returns the epoch's
    mean loss and accuracy of the clean (first) forward passes and the mean perturbation norm, over all replicas."""
    from tqdm import tqdm

    Xtr, Ytr, steps, per_rank = data.x_train, data.y_train, data.steps, data.per_rank
    dd, amp, mem_fmt = rt.dd, rt.amp, rt.mem_fmt
    net.train()
    idx = epoch_indices(len(Ytr), epoch, cfg.seed, dd.rank, dd.world).to(Xtr.device)
    loss_sum = torch.zeros((), device=Xtr.device)
    correct = torch.zeros((), device=Xtr.device)
    pnorm = torch.zeros((), device=Xtr.device)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}", leave=False, disable=None if dd.main else True)
    for b in bar:
        bi = idx[b * per_rank:(b + 1) * per_rank]
        x = aug(Xtr[bi]).contiguous(memory_format=mem_fmt)
        y = Ytr[bi]
        clean: dict = {}  # the clean (first) forward of each chunk: the logged loss and accuracy come from it

        def closure_for(xc, yc):
            def closure():
                with amp():
                    logits = net(xc)
                    loss = criterion(logits, yc)
                loss.backward()
                if id(xc) not in clean:
                    clean[id(xc)] = (loss.detach() * len(yc), (logits.argmax(1) == yc).sum())
                return loss
            return closure

        if cfg.optimizer == "sgd":
            opt.zero_grad(set_to_none=True)
            closure_for(x, y)()
            opt.step()
        elif cfg.m_sharpness:  # m-sharpness: every chunk of m examples perturbed with its own gradient [F21]
            xs, ys = x.split(cfg.m_sharpness), y.split(cfg.m_sharpness)
            opt.step_chunked([closure_for(xc, yc) for xc, yc in zip(xs, ys)], [len(yc) / len(y) for yc in ys])
        else:
            opt.step(closure_for(x, y))
        sched.step()
        for l, c in clean.values():
            loss_sum += l
            correct += c
        if cfg.optimizer != "sgd":
            pnorm += opt.last_perturbation_norm
    stats = torch.stack([loss_sum, correct, pnorm, torch.tensor(float(steps * per_rank), device=Xtr.device)])
    all_reduce(stats, dd)
    return dict(loss=(stats[0] / stats[3]).item(), acc=(stats[1] / stats[3]).item(),
                pnorm=(stats[2] / (steps * dd.world)).item())


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, aug: Augment, batch_size: int, rt: Runtime) -> dict:
    """Plain cross-entropy and accuracy on (this replica's shard of) the test set, BatchNorm in eval mode."""
    dd = rt.dd
    model.eval()
    idx = torch.arange(dd.rank, len(Y), dd.world, device=X.device)
    stats = torch.zeros(3, dtype=torch.float64, device=X.device)
    for i in range(0, len(idx), batch_size):
        bi = idx[i:i + batch_size]
        with rt.amp():
            logits = model(aug.normalize(X[bi]).contiguous(memory_format=rt.mem_fmt))
        stats += torch.stack([F.cross_entropy(logits.float(), Y[bi], reduction="sum").double(),
                              (logits.argmax(1) == Y[bi]).sum().double(), torch.tensor(len(bi), device=X.device)])
    all_reduce(stats, dd)
    return dict(loss=(stats[0] / stats[2]).item(), acc=(stats[1] / stats[2]).item())


def measure_sharpness(cfg: CifarConfig, model: nn.Module, data: TrainData, aug: Augment, rt: Runtime, out: Path,
                      log=print) -> dict | None:
    """``final_sharpness`` on the first ``sharpness_samples`` training images, saved as ``RUN/sharpness.json``."""
    n = min(cfg.sharpness_samples, len(data.y_train))
    # the sharpness notions use an L2 ball: an inf-norm radius (per coordinate) is measured at the L2 radius of its
    # box's corner, rho sqrt(D), the same size as SAM's L2 perturbation (docs/science.md §8)
    rho = cfg.rho * sum(p.numel() for p in model.parameters()) ** 0.5 if cfg.norm == "inf" else cfg.rho
    sharp = final_sharpness(model, aug.normalize(data.x_train[:n]).contiguous(memory_format=rt.mem_fmt),
                            data.y_train[:n], rho, seed=cfg.seed, log=log)
    if sharp is not None:
        write_result_json(out / "sharpness.json", sharp)
    return sharp


def final_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float, seed: int, log=print,
                    batch_size: int = 128) -> dict | None:
    """lambda_1, Tr(H) and R_Max / R_Asc / R_Avg [W23, F21] of the training loss (plain cross-entropy on the labels
    trained on, eval-mode BatchNorm) at the final weights, on the given images, if ``theory_sim.sharpness`` is
    available. Budgets are modest (Lanczos to 1e-3 relative residual, 20 Hutchinson probes, 64 random directions):
    the numbers compare optimizers, they are not converged to many digits."""
    try:
        from theory_sim.sharpness import (
            Objective,
            hutchinson_trace,
            r_asc,
            r_avg,
            r_max,
            top_eigenvalues,
        )
    except ImportError as exc:
        log(f"sharpness: skipped, theory_sim.sharpness is not importable ({exc})")
        return None
    batches = list(zip(x.split(batch_size), y.split(batch_size)))  # HVPs batch by batch: bounded memory
    obj = Objective.from_module(model, F.cross_entropy, batches, train_mode=False)
    radius = rho if rho > 0 else 0.05  # SGD runs are measured at SAM's default radius
    trace = hutchinson_trace(obj, 20, seed=seed)
    avg = r_avg(obj, radius, 64, seed=seed)
    res = {"n_samples": int(len(y)), "rho": float(radius), "loss": float(obj.loss()),
           "lambda_1": float(top_eigenvalues(obj, 1, tol=1e-3, max_iter=60, seed=seed).values[0]),
           "trace": trace.value, "trace_stderr": trace.stderr,
           "r_max": r_max(obj, radius, n_steps=20, n_restarts=1, seed=seed), "r_asc": r_asc(obj, radius),
           "r_avg": avg.value, "r_avg_stderr": avg.stderr}
    log("sharpness (train loss, rho {rho:g}): lambda_1 {lambda_1:.4g} | trace {trace:.4g} | R_Max {r_max:.3g} | "
        "R_Asc {r_asc:.3g} | R_Avg {r_avg:.3g}".format(**res))
    return res


# ---- command line ---------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    f = {fl.name: fl.default for fl in dataclasses.fields(CifarConfig)}
    p.add_argument("--dataset", choices=tuple(NUM_CLASSES), default=None, help=f"(default {f['dataset']})")
    p.add_argument("--data-dir", default=None,
                   help="directory with cifar-10-python.tar.gz / cifar-10-batches-py/ (or the CIFAR-100 ones)")
    p.add_argument("--optimizer", choices=registry.optimizers("cifar"), default=None,
                   help="msam = multi-step SAM (default sam)")
    p.add_argument("--rho", type=float, default=None,
                   help="radius, used as given (default 0.05/0.1 SAM, 0.5/1.0 ASAM for C10/C100; with --norm inf the "
                        "per-coordinate radius 0.05/sqrt(D) resp. 0.1/sqrt(D), D = the WRN's parameter count, so the "
                        "perturbation's L2 size matches SAM's: ~8.3e-6/1.7e-5 on WRN-28-10)")
    p.add_argument("--norm", choices=("2", "inf"), default=None, help="SAM's norm p (sam/msam)")
    p.add_argument("--ascent-steps", type=int, default=None, help="ascent steps of multi-step SAM (msam; default 2)")
    p.add_argument("--steps-k", dest="ascent_steps", type=int, default=None, action=deprecated_flag("--ascent-steps"),
                   help="deprecated spelling of --ascent-steps")
    p.add_argument("--ascent-step", type=float, default=None,
                   help="msam: length of each ascent step after the first, as a multiple of rho (> 0, default 1)")
    p.add_argument("--m-sharpness", type=int, default=None, help="chunk size m for m-sharpness (0 = off)")
    p.add_argument("--bn-update", choices=BN_UPDATES, default=None,
                   help="m-sharpness: BatchNorm running stats updated by every chunk's clean pass (per_chunk, "
                        "default) or by the first chunk's only (per_step)")
    p.add_argument("--asam-eta", type=float, default=None, help="ASAM's offset eta in T = |w| + eta (default 0.01)")
    p.add_argument("--eta-a", dest="asam_eta", type=float, default=None, action=deprecated_flag("--asam-eta"),
                   help="deprecated spelling of --asam-eta")
    p.add_argument("--asam-scope", choices=ASAM_SCOPES, default=None,
                   help="tensors ASAM scales by |w| + eta: weights (dim > 1, default), weights_and_bn (plus "
                        "BatchNorm's gamma: the official ASAM code), all (every tensor; with --asam-eta 0 davda54/sam)")
    p.add_argument("--label-noise", type=float, default=None, help="symmetric label-noise rate in [0, 1]")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (split over DDP processes)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (cosine schedule)")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=None, help="weight decay")
    p.add_argument("--label-smoothing", type=float, default=None, help="label smoothing of the cross-entropy")
    p.add_argument("--depth", type=int, default=None, help="WideResNet depth (6n+4)")
    p.add_argument("--width", type=int, default=None, help="WideResNet width factor")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate inside the residual blocks")
    p.add_argument("--cutout", type=int, default=None, help="cutout square size (0 = off)")
    p.add_argument("--n-train", type=int, default=None, help="use the first N training images (0 = all)")
    p.add_argument("--n-test", type=int, default=None, help="use the first N test images (0 = all)")
    p.add_argument("--sharpness", action=argparse.BooleanOptionalAction, default=None,
                   help="measure lambda_1, trace, R_Max/R_Asc/R_Avg of the final model (opt-in: minutes on a CPU, "
                        "longer than a short run's training)")
    p.add_argument("--seed", type=int, default=None, help="seed of the init, label noise and data order")
    p.add_argument("--device", default=None, help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None, help="f21 = the SAM paper's WRN-28-10 recipe")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run (preset smoke); without --data-dir it writes a synthetic CIFAR into RUN/")
    p.add_argument("--out", required=True, help="run directory (metrics.parquet, config.json, checkpoint.pt)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings in RUN/config.json. "
                        "Flags (and --preset/--smoke values) that differ from them are refused, except "
                        "--data-dir, --device, --compile and --stop-after, which only say where and how far to run")
    p.add_argument("--stop-after", type=int, default=None, help="end this invocation after N epochs")
    add_force_arguments(p)   # --force-memory, --force-steps (theory_sim.resources)
    p.add_argument("--slurm", action="store_true", help="submit to Slurm through submitit instead of running here")
    p.add_argument("--slurm-partition", default=None, help="Slurm partition (default: the cluster's)")
    p.add_argument("--slurm-gpus", type=int, default=1, help="GPUs (= DDP processes) on one node")
    p.add_argument("--slurm-time", type=int, default=24 * 60, help="time limit in minutes (requeued on timeout)")
    p.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per GPU")


def requested_values(args: argparse.Namespace) -> dict:
    """The config fields this command line sets: the preset's, then every flag given explicitly."""
    check_renamed_flags(args)
    names = {fl.name for fl in dataclasses.fields(CifarConfig)}
    values: dict = {}
    preset = args.preset or ("smoke" if args.smoke else None)
    if preset:
        values.update(PRESETS[preset])
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    return values


def config_from_args(args: argparse.Namespace) -> CifarConfig:
    """Dataclass defaults, then the preset, then every flag given explicitly."""
    return CifarConfig(**requested_values(args))


def run(args: argparse.Namespace) -> int:
    main_process = is_main_process()  # under torchrun only rank 0 talks
    if args.smoke and args.data_dir is None and args.dataset != "digits":   # digits needs no files
        with writing(Path(args.out) / "synthetic_data"):
            args.data_dir = str(write_synthetic_cifar(Path(args.out) / "synthetic_data", args.dataset or "cifar10",
                                                      n_train=512, n_test=256, seed=0))
        if main_process:
            print(f"smoke: wrote a synthetic {args.dataset or 'cifar10'} (real pickle format) to {args.data_dir}")
    saved = read_config_json(Path(args.out)) if args.resume else None
    if saved is not None:  # the run's own config; only where/how to run may change
        cfg = resumed_config(saved, requested_values(args), args.out)
        if main_process:
            print(f"resume: config from {Path(args.out) / 'config.json'}")
    else:
        cfg = config_from_args(args)
    if not args.slurm:   # a device this machine lacks, before any work (a Slurm node's are checked there)
        pick_device(cfg.device)
    # before any work; the memory of this machine says nothing about a Slurm node's, so --slurm checks steps only
    check_cifar_resources(cfg, force_memory=args.force_memory or args.slurm, force_steps=args.force_steps)
    if args.slurm:
        return submit_slurm(train, cfg, args)
    result = train(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    teardown_distributed()
    if result.finished and main_process:
        print(f"done: {args.out}/metrics.parquet")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m theory_sim.cifar.train``), same flags as ``python -m theory_sim cifar``."""
    parser = argparse.ArgumentParser(prog="python -m theory_sim.cifar.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
