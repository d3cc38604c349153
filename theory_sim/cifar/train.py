"""Train a WideResNet on CIFAR-10/100 with SGD or a member of the SAM family: ``python -m theory_sim cifar ...``.

One plain loop, nanoGPT style: the dataset sits on the device as uint8, each step augments a batch there, runs the
optimizer (``theory_sim.sam.optim.SAM``: SAM p=2 / p=inf [F21], ASAM [K21], Rand-SAM and multi-step SAM [T24],
m-sharpness [F21]), and each epoch appends one row of metrics to ``RUN/metrics.parquet`` and writes an atomic
checkpoint from which ``--resume`` continues bitwise identically (on CPU). Preset ``f21`` is the SAM paper's
WRN-28-10 recipe (SPEC 7). Multi-GPU: launch with ``torchrun`` (DDP, detected from WORLD_SIZE/RANK/LOCAL_RANK);
Slurm: ``--slurm`` submits the same run through submitit.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from theory_sim.cifar.data import (
    NUM_CLASSES,
    Augment,
    epoch_indices,
    load_cifar,
    symmetric_label_noise,
    write_synthetic_cifar,
)
from theory_sim.cifar.wrn import WideResNet
from theory_sim.config import ConfigError, check_choice, check_float, check_int
from theory_sim.io import atomic_write_bytes, provenance, write_json, write_parquet
from theory_sim.sam.optim import SAM

OPTIMIZERS = ("sgd", "sam", "asam", "randsam", "msam")
# default radius per (optimizer family, dataset): SAM rho 0.05 / 0.1 [F21], ASAM 0.5 / 1.0 [K21] (SPEC 7)
DEFAULT_RHO = {"sam": {"cifar10": 0.05, "cifar100": 0.1}, "asam": {"cifar10": 0.5, "cifar100": 1.0}}

# Presets fill the fields the user did not set on the command line.
PRESETS: dict[str, dict] = {
    # [F21] WRN-28-10: 200 epochs, batch 128 (PyTorch ports; the paper used 256), lr 0.1 cosine, Nesterov 0.9,
    # wd 5e-4, flip + pad-4 crop, rho 0.05 (C10) / 0.1 (C100)
    "f21": dict(depth=28, width=10, epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True,
                weight_decay=5e-4, label_smoothing=0.0, cutout=0, dropout=0.0),
    # a few seconds on a CPU: WRN-10-1, 1 epoch on 512 images
    "smoke": dict(depth=10, width=1, epochs=1, batch_size=64, lr=0.05, n_train=512, n_test=256,
                  sharpness_samples=64),
}


@dataclass(frozen=True)
class CifarConfig:
    """One CIFAR training run. Defaults = preset ``f21`` on CIFAR-10 with SAM. ``rho=None`` picks the paper's radius
    for the optimizer and dataset (0 for SGD); ``steps_k=None`` is 2 ascent steps for msam, 1 otherwise. ``batch_size`` is global (split over DDP replicas);
    ``m_sharpness`` > 0 splits each replica's batch into chunks of that size, each perturbed with its own gradient;
    ``n_train``/``n_test`` > 0 use only the first n images (quick runs)."""

    dataset: str = "cifar10"
    data_dir: str = "data"
    optimizer: str = "sam"
    rho: float | None = None
    norm: str = "2"  # SAM's dual norm: "2" or "inf" (sam / msam only)
    steps_k: int | None = None  # None: 2 for msam, 1 otherwise
    m_sharpness: int = 0
    eta_a: float = 0.01
    label_noise: float = 0.0
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    depth: int = 28
    width: int = 10
    dropout: float = 0.0
    cutout: int = 0
    n_train: int = 0
    n_test: int = 0
    eval_batch_size: int = 1000
    sharpness: bool = True
    sharpness_samples: int = 1024
    seed: int = 0
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, tuple(NUM_CLASSES))
        if not isinstance(self.data_dir, str):
            raise ConfigError(f"data_dir must be a path string, got {self.data_dir!r}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.rho is None:  # resolve here so config.json records the radius actually used
            family = "asam" if self.optimizer == "asam" else "sam"
            object.__setattr__(self, "rho", 0.0 if self.optimizer == "sgd" else DEFAULT_RHO[family][self.dataset])
        check_float("rho", self.rho, lo=0.0)
        check_choice("norm", self.norm, ("2", "inf"))
        if self.norm == "inf" and self.optimizer not in ("sam", "msam"):
            raise ConfigError(f"norm='inf' is for optimizer 'sam' or 'msam', got optimizer={self.optimizer!r}")
        if self.steps_k is None:
            object.__setattr__(self, "steps_k", 2 if self.optimizer == "msam" else 1)
        check_int("steps_k", self.steps_k, lo=1, hi=1 if self.optimizer != "msam" else 100)
        check_int("m_sharpness", self.m_sharpness, lo=0, hi=self.batch_size if isinstance(self.batch_size, int)
                  else None)
        if self.m_sharpness and self.optimizer == "sgd":
            raise ConfigError("m_sharpness needs a SAM-family optimizer, got optimizer='sgd'")
        check_float("eta_a", self.eta_a, lo=0.0)
        check_float("label_noise", self.label_noise, lo=0.0, hi=1.0)
        check_int("epochs", self.epochs, lo=1)
        check_int("batch_size", self.batch_size, lo=2)
        check_float("lr", self.lr, lo=0.0, lo_open=True)
        check_float("momentum", self.momentum, lo=0.0, hi=1.0, hi_open=True)
        check_choice("nesterov", self.nesterov, (True, False))
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum in (0, 1), got momentum=0")
        check_float("weight_decay", self.weight_decay, lo=0.0)
        check_float("label_smoothing", self.label_smoothing, lo=0.0, hi=1.0, hi_open=True)
        check_int("depth", self.depth, lo=10)
        if (self.depth - 4) % 6:
            raise ConfigError(f"depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {self.depth}")
        check_int("width", self.width, lo=1)
        check_float("dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)
        check_int("cutout", self.cutout, lo=0, hi=32)
        check_int("n_train", self.n_train, lo=0)
        check_int("n_test", self.n_test, lo=0)
        check_int("eval_batch_size", self.eval_batch_size, lo=1)
        check_choice("sharpness", self.sharpness, (True, False))
        check_int("sharpness_samples", self.sharpness_samples, lo=2)
        check_int("seed", self.seed, lo=0, hi=2**31 - 1)
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")
        check_choice("compile", self.compile, (True, False))

    @property
    def rule(self) -> str:
        return {"sam": "sam", "msam": "sam", "asam": "asam", "randsam": "randsam"}[self.optimizer] + \
            ("_inf" if self.norm == "inf" else "")


# ---- runtime: device, distributed, checkpoints ----------------------------------------------------------------------
RUNTIME_FIELDS = ("data_dir", "device", "compile")  # may change on --resume (another machine); the rest may not


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} requested but CUDA is not available (use device='auto' or 'cpu')")
    return dev


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK (and MASTER_ADDR/PORT): join the process group, one device per rank;
    nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        device = torch.device("cuda", d.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=d.rank, world_size=world)
    return d, device


def _atomic_torch_save(obj, path: Path) -> None:
    """torch.save straight to a temp file in the same directory, fsync, os.replace: an interrupted save never
    leaves half a checkpoint (streamed, not buffered: a WRN-28-10 checkpoint is ~300 MB)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _rng_state(aug: Augment, opt) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "augment": aug.generator.get_state(),
             "sam": opt.generator.get_state() if getattr(opt, "generator", None) is not None else None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, aug: Augment, opt) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    aug.generator.set_state(state["augment"])
    if state.get("sam") is not None and getattr(opt, "generator", None) is not None:
        opt.generator.set_state(state["sam"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the run --------------------------------------------------------------------------------------------------------
@dataclass
class Result:
    metrics: "object"  # pandas.DataFrame, one row per epoch
    model: nn.Module
    sharpness: dict | None
    finished: bool


def build_optimizer(cfg: CifarConfig, model: nn.Module, net: nn.Module, device: torch.device, seed: int):
    base = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), **base)
    gen = None
    if cfg.optimizer == "randsam":
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    return SAM(model.parameters(), torch.optim.SGD, rule=cfg.rule, rho=cfg.rho, steps_k=cfg.steps_k,
               eta_a=cfg.eta_a, model=net, generator=gen, **base)


def train(cfg: CifarConfig, out: str | os.PathLike, *, resume: bool = False, stop_after: int | None = None,
          log=print) -> Result:
    """Train (or, with ``resume``, continue) the run in directory ``out``; ``stop_after`` ends this invocation after
    that many epochs (the checkpoint lets a later ``resume`` finish the run)."""
    out = Path(out)
    ckpt_path = out / "checkpoint.pt"
    device = pick_device(cfg.device)
    dd, device = setup_distributed(device)
    log = log if dd.main else (lambda *a, **k: None)
    if ckpt_path.exists() and not resume:
        raise ConfigError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue it or choose "
                          f"another --out")
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file: RNG states are numpy
        saved = dict(ckpt["config"])
        for k in RUNTIME_FIELDS:
            saved[k] = getattr(cfg, k)
        if asdict(cfg) != saved:
            log(f"resume: using the run's saved config; ignoring changed "
                f"{sorted(k for k in saved if saved[k] != asdict(cfg)[k])}")
        cfg = CifarConfig(**saved)
        log(f"resume: {out} after epoch {ckpt['epoch'] + 1}")
    elif resume:
        log(f"resume: no checkpoint in {out}, starting a fresh run")
    if stop_after is not None:
        check_int("stop_after", stop_after, lo=1)

    # Python/numpy/torch seeds; every rank draws the same init (DDP also broadcasts it), then its own stream.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    on_gpu = device.type in ("cuda", "mps")
    # bf16 autocast on CUDA only (a fresh context per use); CPU and MPS train in float32
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    mem_fmt = torch.channels_last if on_gpu else torch.contiguous_format

    # ---- data: everything on the device as uint8; labels possibly noised (train only) ----
    arr = load_cifar(cfg.dataset, cfg.data_dir)
    x_tr, y_tr, x_te, y_te = arr.x_train, arr.y_train, arr.x_test, arr.y_test
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
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            _write_sidecars(out, cfg, dd, device, clean_y_tr, y_tr, noise_mask)
    Xtr, Ytr = torch.from_numpy(x_tr).to(device), torch.from_numpy(y_tr).to(device)
    Xte, Yte = torch.from_numpy(x_te).to(device), torch.from_numpy(y_te).to(device)

    # ---- model, optimizer, schedule ----
    model = WideResNet(cfg.depth, cfg.width, arr.num_classes, cfg.dropout).to(device, memory_format=mem_fmt)
    net = model
    if dd.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    opt = build_optimizer(cfg, model, net, device, seed=cfg.seed * 1000 + dd.rank + 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)  # per-step cosine to 0
    aug = Augment(cfg.dataset, device, seed=cfg.seed * 1000 + dd.rank, cutout=cfg.cutout)
    torch.manual_seed(cfg.seed * 1000 + dd.rank + 7)  # dropout: its own stream per replica
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if len(ckpt["rng"]) == dd.world:
            _set_rng_state(ckpt["rng"][dd.rank], aug, opt)
        else:  # the shards and random streams are per process: exact continuation needs the same process count
            log(f"resume: the checkpoint was written by {len(ckpt['rng'])} processes, this run has {dd.world}: "
                f"continuing with fresh random streams (not bitwise identical to an uninterrupted run)")
        history, start = list(ckpt["history"]), ckpt["epoch"] + 1
    log(f"{cfg.dataset} WRN-{cfg.depth}-{cfg.width} {cfg.optimizer} (rule {cfg.rule if cfg.optimizer != 'sgd' else '-'}"
        f", rho {cfg.rho}, k {cfg.steps_k}) | {len(y_tr)} train / {len(y_te)} test | noise {cfg.label_noise} | "
        f"device {device} x{dd.world} | {steps} steps/epoch")

    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    for epoch in range(start, end):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        tr = train_epoch(cfg, net, opt, sched, criterion, aug, Xtr, Ytr, epoch, steps, per_rank, dd, amp, mem_fmt)
        if dd.world > 1:  # the last clean pass moved each replica's BN stats on its own shard: take rank 0's, as
            for b in model.buffers():  # DDP would at the next forward, so evaluation and checkpoint agree
                dist.broadcast(b, 0)
        te = evaluate(model, Xte, Yte, aug, cfg.eval_batch_size, dd, amp, mem_fmt)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row = dict(epoch=epoch + 1, train_loss=tr["loss"], train_acc=tr["acc"], test_loss=te["loss"],
                   test_acc=te["acc"], gen_gap=tr["acc"] - te["acc"], gen_gap_loss=te["loss"] - tr["loss"], lr=lr,
                   perturbation_norm=tr["pnorm"], epoch_time=time.perf_counter() - t0)
        history.append(row)
        rngs = [_rng_state(aug, opt)]
        if dd.world > 1:
            rngs = [None] * dd.world
            dist.all_gather_object(rngs, _rng_state(aug, opt))
        if dd.main:
            _save(out, history, dict(epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict(),
                                     scheduler=sched.state_dict(), rng=rngs, history=history, config=asdict(cfg)))
            log(f"epoch {epoch + 1:>3}/{cfg.epochs} | train loss {row['train_loss']:.4f} acc "
                f"{100 * row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%"
                f" | gap {100 * row['gen_gap']:+.2f}% | lr {lr:.4g} | |eps| {row['perturbation_norm']:.4g} | "
                f"{row['epoch_time']:.1f}s")
    finished = len(history) == cfg.epochs
    sharp = None
    if finished and cfg.sharpness and dd.main and end > start:
        n = min(cfg.sharpness_samples, len(y_tr))
        sharp = final_sharpness(model, aug.normalize(Xtr[:n]).contiguous(memory_format=mem_fmt), Ytr[:n], cfg.rho,
                                seed=cfg.seed, log=log)
        if sharp is not None:
            write_json(out / "sharpness.json", sharp)
    if dd.world > 1:
        dist.barrier()
    import pandas as pd
    return Result(pd.DataFrame(history), model, sharp, finished)


def train_epoch(cfg, net, opt, sched, criterion, aug, Xtr, Ytr, epoch, steps, per_rank, dd, amp, mem_fmt) -> dict:
    from tqdm import tqdm

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
    if dd.world > 1:
        dist.all_reduce(stats)
    return dict(loss=(stats[0] / stats[3]).item(), acc=(stats[1] / stats[3]).item(),
                pnorm=(stats[2] / (steps * dd.world)).item())


@torch.no_grad()
def evaluate(model, X, Y, aug, batch_size, dd, amp, mem_fmt) -> dict:
    """Plain cross-entropy and accuracy on (this replica's shard of) the test set, BatchNorm in eval mode."""
    model.eval()
    idx = torch.arange(dd.rank, len(Y), dd.world, device=X.device)
    stats = torch.zeros(3, dtype=torch.float64, device=X.device)
    for i in range(0, len(idx), batch_size):
        bi = idx[i:i + batch_size]
        with amp():
            logits = model(aug.normalize(X[bi]).contiguous(memory_format=mem_fmt))
        stats += torch.stack([F.cross_entropy(logits.float(), Y[bi], reduction="sum").double(),
                              (logits.argmax(1) == Y[bi]).sum().double(), torch.tensor(len(bi), device=X.device)])
    if dd.world > 1:
        dist.all_reduce(stats)
    return dict(loss=(stats[0] / stats[2]).item(), acc=(stats[1] / stats[2]).item())


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


def _write_sidecars(out: Path, cfg: CifarConfig, dd: Dist, device, clean_y, noisy_y, mask) -> None:
    write_json(out / "config.json", {"config": asdict(cfg), "seed": cfg.seed, "world_size": dd.world,
                                     "device": str(device), **provenance()})
    if cfg.label_noise > 0:  # the exact noisy labels and which ones were flipped
        buf = io.BytesIO()
        np.savez(buf, clean_labels=clean_y, noisy_labels=noisy_y, noisy_mask=mask)
        atomic_write_bytes(out / "label_noise.npz", buf.getvalue())


def _save(out: Path, history: list[dict], ckpt: dict) -> None:
    import pandas as pd
    write_parquet(pd.DataFrame(history), out / "metrics.parquet")
    _atomic_torch_save(ckpt, out / "checkpoint.pt")


# ---- command line -------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    f = {fl.name: fl.default for fl in dataclasses.fields(CifarConfig)}
    p.add_argument("--dataset", choices=tuple(NUM_CLASSES), default=None, help=f"(default {f['dataset']})")
    p.add_argument("--data-dir", default=None,
                   help="directory with cifar-10-python.tar.gz / cifar-10-batches-py/ (or the CIFAR-100 ones)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="msam = multi-step SAM (default sam)")
    p.add_argument("--rho", type=float, default=None, help="radius (default 0.05/0.1 SAM, 0.5/1.0 ASAM for C10/C100)")
    p.add_argument("--norm", choices=("2", "inf"), default=None, help="SAM's norm p (sam/msam)")
    p.add_argument("--steps-k", type=int, default=None, help="ascent steps of multi-step SAM (msam; default 2)")
    p.add_argument("--m-sharpness", type=int, default=None, help="chunk size m for m-sharpness (0 = off)")
    p.add_argument("--eta-a", type=float, default=None, help="ASAM's eta")
    p.add_argument("--label-noise", type=float, default=None, help="symmetric label-noise rate in [0, 1]")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (split over DDP processes)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--cutout", type=int, default=None, help="cutout square size (0 = off)")
    p.add_argument("--n-train", type=int, default=None, help="use the first N training images (0 = all)")
    p.add_argument("--n-test", type=int, default=None, help="use the first N test images (0 = all)")
    p.add_argument("--sharpness", action=argparse.BooleanOptionalAction, default=None,
                   help="measure lambda_1, trace, R_Max/R_Asc/R_Avg of the final model")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None, help="f21 = the SAM paper's WRN-28-10 recipe")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run (preset smoke); without --data-dir it writes a synthetic CIFAR into RUN/")
    p.add_argument("--out", required=True, help="run directory (metrics.parquet, config.json, checkpoint.pt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-after", type=int, default=None, help="end this invocation after N epochs")
    p.add_argument("--slurm", action="store_true", help="submit to Slurm through submitit instead of running here")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-gpus", type=int, default=1, help="GPUs (= DDP processes) on one node")
    p.add_argument("--slurm-time", type=int, default=24 * 60, help="time limit in minutes (requeued on timeout)")
    p.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per GPU")


def config_from_args(args: argparse.Namespace) -> CifarConfig:
    """Dataclass defaults, then the preset, then every flag given explicitly."""
    names = {fl.name for fl in dataclasses.fields(CifarConfig)}
    values: dict = {}
    preset = args.preset or ("smoke" if args.smoke else None)
    if preset:
        values.update(PRESETS[preset])
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    return CifarConfig(**values)


def run(args: argparse.Namespace) -> int:
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    if args.smoke and args.data_dir is None:
        args.data_dir = str(write_synthetic_cifar(Path(args.out) / "synthetic_data", args.dataset or "cifar10",
                                                  n_train=512, n_test=256, seed=0))
        if main_process:
            print(f"smoke: wrote a synthetic {args.dataset or 'cifar10'} (real pickle format) to {args.data_dir}")
    saved = Path(args.out) / "config.json"
    if args.resume and saved.exists():  # the run's own config; only where/how to run may change
        values = json.loads(saved.read_text())["config"]
        values.update({k: getattr(args, k) for k in RUNTIME_FIELDS if getattr(args, k) is not None})
        cfg = CifarConfig(**values)
        if main_process:
            print(f"resume: config from {saved}")
    else:
        cfg = config_from_args(args)
    if args.slurm:
        return submit_slurm(cfg, args)
    result = train(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    if dist.is_initialized():
        dist.destroy_process_group()
    if result.finished and main_process:
        print(f"done: {args.out}/metrics.parquet")
    return 0


class _SlurmJob:
    """Picklable job for submitit: sets the torch.distributed env of its task, trains, and on timeout/preemption
    requeues itself with resume=True (the per-epoch checkpoint makes that lossless)."""

    def __init__(self, cfg: CifarConfig, out: str):
        self.cfg, self.out = cfg, out

    def __call__(self):
        import submitit
        submitit.helpers.TorchDistributedEnvironment().export()
        return train(self.cfg, self.out, resume=True).finished

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(_SlurmJob(self.cfg, self.out))


def submit_slurm(cfg: CifarConfig, args: argparse.Namespace) -> int:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--slurm needs submitit: pip install submitit (or pip install 'theory_sim[cluster]')") \
            from None
    check_int("slurm_gpus", args.slurm_gpus, lo=0, hi=16)
    check_int("slurm_time", args.slurm_time, lo=1)
    ex = submitit.AutoExecutor(folder=Path(args.out) / "slurm")
    params = dict(timeout_min=args.slurm_time, nodes=1, tasks_per_node=max(args.slurm_gpus, 1),
                  gpus_per_node=args.slurm_gpus, cpus_per_task=args.slurm_cpus, name=f"cifar-{cfg.optimizer}")
    if args.slurm_partition:
        params["slurm_partition"] = args.slurm_partition
    ex.update_parameters(**params)
    job = ex.submit(_SlurmJob(cfg, args.out))
    print(f"submitted Slurm job {job.job_id}; logs in {Path(args.out) / 'slurm'}; results in {args.out}")
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
