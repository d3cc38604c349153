"""Where a CIFAR run executes: the device, DDP under ``torchrun`` (detected from WORLD_SIZE/RANK/LOCAL_RANK), and
submission to Slurm through submitit (``--slurm``)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from theory_sim.cifar.config import CifarConfig
from theory_sim.cifar.errors import writing
from theory_sim.config import ConfigError, check_int, device_of


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return device_of(name, ("cpu", "cuda", "mps"))   # refused unless this machine has it


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0 under torchrun (which sets RANK), else True: only this process prints."""
    return os.environ.get("RANK", "0") == "0"


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


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, dd: Dist, device: torch.device) -> nn.Module:
    if dd.world <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_buffers(model: nn.Module, dd: Dist) -> None:
    """The last clean pass moved each replica's BatchNorm statistics on its own shard: take rank 0's, as DDP would at
    the next forward, so evaluation and checkpoint agree across replicas."""
    if dd.world > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def all_reduce(t: torch.Tensor, dd: Dist) -> torch.Tensor:
    if dd.world > 1:
        dist.all_reduce(t)
    return t


def gather_objects(obj, dd: Dist) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` without DDP)."""
    if dd.world <= 1:
        return [obj]
    out = [None] * dd.world
    dist.all_gather_object(out, obj)
    return out


def barrier(dd: Dist) -> None:
    if dd.world > 1:
        dist.barrier()


# ---- Slurm ----------------------------------------------------------------------------------------------------------
class _SlurmJob:
    """Picklable job for submitit: sets the torch.distributed env of its task, trains, and on timeout/preemption
    requeues itself with resume=True (the per-epoch checkpoint makes that lossless). ``train_fn`` is
    ``theory_sim.cifar.train.train`` (passed in, so this module does not import the trainer)."""

    def __init__(self, train_fn: Callable, cfg: CifarConfig, out: str):
        self.train_fn, self.cfg, self.out = train_fn, cfg, out

    def __call__(self):
        import submitit
        submitit.helpers.TorchDistributedEnvironment().export()
        return self.train_fn(self.cfg, self.out, resume=True).finished

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(_SlurmJob(self.train_fn, self.cfg, self.out))


def submit_slurm(train_fn: Callable, cfg: CifarConfig, args: argparse.Namespace) -> int:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--slurm needs submitit: pip install submitit (or pip install 'theory_sim[cluster]')") \
            from None
    check_int("slurm_gpus", args.slurm_gpus, lo=0, hi=16)
    check_int("slurm_time", args.slurm_time, lo=1)
    folder = Path(args.out) / "slurm"
    params = dict(timeout_min=args.slurm_time, nodes=1, tasks_per_node=max(args.slurm_gpus, 1),
                  gpus_per_node=args.slurm_gpus, cpus_per_task=args.slurm_cpus, name=f"cifar-{cfg.optimizer}")
    if args.slurm_partition:
        params["slurm_partition"] = args.slurm_partition
    with writing(folder):  # submitit pickles the job into the folder
        ex = submitit.AutoExecutor(folder=folder)
        ex.update_parameters(**params)
        job = ex.submit(_SlurmJob(train_fn, cfg, args.out))
    print(f"submitted Slurm job {job.job_id}; logs in {folder}; results in {args.out}")
    return 0
