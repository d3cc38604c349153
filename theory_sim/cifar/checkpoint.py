"""A CIFAR run directory on disk, and reading it back for ``--resume``.

Written once at the start: ``config.json`` (config + provenance) and, with label noise, ``label_noise.npz``. After every
epoch: ``checkpoint.pt`` (model, optimizer, scheduler, every rank's RNG states, the metrics history, the config), then
``metrics.parquet``. Every file is written atomically (temp file + fsync + rename), so an interrupted or failed write
(disk full) leaves the previous complete file and no temp file; the failure is raised as ``OutputWriteError`` naming
the file. The checkpoint is written first, so ``metrics.parquet`` never runs ahead of it. Reading validates: an
unreadable file raises ``CheckpointError`` naming it and is never overwritten.
"""
from __future__ import annotations

import io
import json
import os
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from theory_sim.cifar.config import CifarConfig, config_from_values
from theory_sim.cifar.data import Augment
from theory_sim.cifar.errors import CheckpointError, one_line, writing
from theory_sim.io import atomic_write_bytes, provenance, write_json, write_parquet

CHECKPOINT, METRICS, CONFIG_JSON = "checkpoint.pt", "metrics.parquet", "config.json"
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "rng", "history", "config")


# ---- writing --------------------------------------------------------------------------------------------------------
class _RecordingWriter:
    """What ``torch.save`` writes to: passes bytes on to the file and keeps the ``OSError`` of a failed write, which
    torch reports only as a RuntimeError without its cause."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, b) -> int:
        try:
            return self.fh.write(b)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save straight to a temp file in the same directory, fsync, os.replace: an interrupted save never leaves
    half a checkpoint (streamed, not buffered in memory: a WRN-28-10 checkpoint is ~300 MB)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        try:
            with open(tmp, "wb") as fh:
                sink = _RecordingWriter(fh)
                try:
                    torch.save(obj, sink)
                except RuntimeError:
                    if sink.error is None:
                        raise
                    raise sink.error from None
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_sidecars(out: Path, cfg: CifarConfig, world: int, device, clean_y, noisy_y, mask) -> None:
    """config.json (config, seed, world size, device, provenance) and, with label noise, the exact noisy labels and
    which ones were flipped."""
    with writing(out / CONFIG_JSON):
        write_json(out / CONFIG_JSON, {"config": asdict(cfg), "seed": cfg.seed, "world_size": world,
                                       "device": str(device), **provenance()})
    if cfg.label_noise > 0:
        buf = io.BytesIO()
        np.savez(buf, clean_labels=clean_y, noisy_labels=noisy_y, noisy_mask=mask)
        with writing(out / "label_noise.npz"):
            atomic_write_bytes(out / "label_noise.npz", buf.getvalue())


def save_epoch(out: Path, history: list[dict], state: dict) -> None:
    """The end-of-epoch checkpoint, then the metrics table (so the table never holds an epoch the checkpoint lacks)."""
    atomic_torch_save(state, out / CHECKPOINT)
    with writing(out / METRICS):
        write_parquet(pd.DataFrame(history), out / METRICS)


def sync_metrics(out: Path, history: list[dict]) -> None:
    """On resume: rewrite metrics.parquet from the checkpoint's history if it lags behind (its write failed after the
    checkpoint's) or is missing; an up-to-date table is left untouched."""
    path = out / METRICS
    try:
        if len(pd.read_parquet(path)) == len(history):
            return
    except Exception:  # missing or unreadable: the checkpoint's history is the truth
        pass
    with writing(path):
        write_parquet(pd.DataFrame(history), path)


def write_result_json(path: Path, obj) -> None:
    with writing(path):
        write_json(path, obj)


# ---- random streams -------------------------------------------------------------------------------------------------
def rng_state(aug: Augment, opt) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "augment": aug.generator.get_state(),
             "sam": opt.generator.get_state() if getattr(opt, "generator", None) is not None else None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, aug: Augment, opt) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    aug.generator.set_state(state["augment"])
    if state.get("sam") is not None and getattr(opt, "generator", None) is not None:
        opt.generator.set_state(state["sam"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- reading back ---------------------------------------------------------------------------------------------------
def _unreadable(path: Path, detail: str) -> str:
    return (f"checkpoint {path} is unreadable ({detail}); it was left as it is. Restore it (e.g. from a backup) to "
            f"continue the run, or delete it to start the run over")


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, checked to hold everything a resume needs (``CheckpointError`` otherwise)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states are numpy
    except PermissionError as exc:
        raise CheckpointError(_unreadable(path, one_line(exc, 120))) from None
    except Exception as exc:  # truncated (RuntimeError from the zip reader, OSError), garbage (Unpickling, EOF)
        raise CheckpointError(_unreadable(path, f"truncated or corrupt: {one_line(exc, 120)}")) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        have = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(_unreadable(path, f"expected the entries {list(CHECKPOINT_KEYS)}, found {have}"))
    if not isinstance(ckpt["epoch"], int) or not isinstance(ckpt["history"], list) or len(ckpt["history"]) != \
            ckpt["epoch"] + 1 or not isinstance(ckpt["rng"], list):
        raise CheckpointError(_unreadable(path, "its epoch, history and RNG entries do not fit together"))
    return ckpt


def read_config_json(out: Path) -> CifarConfig | None:
    """The config a run in ``out`` was started with (``None`` if it has no config.json)."""
    path = out / CONFIG_JSON
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({one_line(exc, 120)}); it was left as it is. Restore it, or "
                              f"delete {out} to start the run over") from None
    return config_from_values(values, str(path))


def restore(ckpt: dict, model: nn.Module, opt, sched, aug: Augment, rank: int, world: int, path: Path,
            log=print) -> tuple[list[dict], int]:
    """Load the checkpoint's states into the run; returns (metrics history, first epoch still to train)."""
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if len(ckpt["rng"]) == world:
            set_rng_state(ckpt["rng"][rank], aug, opt)
        else:  # the shards and random streams are per process: exact continuation needs the same process count
            log(f"resume: the checkpoint was written by {len(ckpt['rng'])} processes, this run has {world}: "
                f"continuing with fresh random streams (not bitwise identical to an uninterrupted run)")
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(_unreadable(path, f"its states do not fit this run: {one_line(exc, 120)}")) from None
    return list(ckpt["history"]), ckpt["epoch"] + 1
