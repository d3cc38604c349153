"""CIFAR-10/100 from the standard python pickle archives, augmentation on tensors, symmetric label noise.

Nothing is downloaded. ``data_dir`` holds either the archive as distributed (``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz``, read in place) or its extracted folder (``cifar-10-batches-py/`` / ``cifar-100-python/``).
The whole dataset lives as one uint8 tensor on the training device; batches are augmented there (random horizontal
flip, pad-4 random crop, optional cutout) with a dedicated, checkpointable generator, so a GPU never waits on a
CPU data loader and a resumed run replays exactly the same augmentations.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from theory_sim.cifar.errors import (
    BadPickleError,
    CifarDataError,
    DataNotFoundError,
    one_line,
)
from theory_sim.config import ConfigError, check_float, check_int
from theory_sim.io import atomic_write_bytes

# per-channel mean/std of the CIFAR training images in [0, 1] (the values every PyTorch port uses)
MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409), "digits": (0.3053,)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762), "digits": (0.3760,)}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
# digits (theory_sim.cifar.digits): scikit-learn's bundled 8x8 images, grey, no augmentation; its MEAN/STD are
# those of all 1,797 images in [0, 1]
AUGMENT = {"cifar10": True, "cifar100": True, "digits": False}

# dataset -> (archive name, folder inside it, train members, test member, label key)
LAYOUT = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], "test", "fine_labels"),
}


URL = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
       "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}


def _missing_message(dataset: str, data_dir: Path, detail: str) -> str:
    archive, folder, train, test, _ = LAYOUT[dataset]
    return (f"{dataset} not found in {data_dir} ({detail}). Put EITHER the archive {data_dir / archive} "
            f"(from {URL[dataset]}, no need to extract) OR its extracted folder {data_dir / folder}/ containing "
            f"{', '.join(train + [test])} (python pickle version). Nothing is downloaded automatically.")


def _bad_file(dataset: str, where: str, problem: str) -> str:
    return (f"{where} {problem}; it is not a {dataset} python-pickle batch. Replace it with the file from the "
            f"original {LAYOUT[dataset][0]} ({URL[dataset]})")


class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR batches hold only dicts, lists, bytes and numpy arrays: refuse anything else, so a tampered file in
    the data directory cannot run code when loaded."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch file")


def _unpickle(raw: bytes, dataset: str, where: str) -> dict:
    try:
        d = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # truncated or garbage bytes fail in many ways (EOF, Unpickling, Unicode, Value, ...)
        raise BadPickleError(_bad_file(dataset, where, f"does not unpickle ({one_line(exc)})")) from None
    if not isinstance(d, dict):
        raise BadPickleError(_bad_file(dataset, where, f"unpickles to a {type(d).__name__}, not a dict"))
    return {(k.decode(errors="replace") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_archive(dataset: str, data_dir: Path, names: list[str]) -> dict[str, tuple[bytes, str]]:
    archive, folder = LAYOUT[dataset][:2]
    path = data_dir / archive
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for n in names:
                try:
                    member = tar.extractfile(f"{folder}/{n}")
                except KeyError:
                    member = None
                if member is None:
                    raise DataNotFoundError(_missing_message(dataset, data_dir, f"{archive} has no file {folder}/{n}"))
                out[n] = (member.read(), f"{path} member {folder}/{n}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:  # truncated gzip, garbage, unreadable file
        raise CifarDataError(
            f"{path} is not a readable .tar.gz archive ({one_line(exc)}): it is probably truncated or corrupt. "
            f"Download it again from {URL[dataset]} (or put its extracted folder {folder}/ in {data_dir})") from None
    return out


def _read_members(dataset: str, data_dir: Path) -> dict[str, tuple[bytes, str]]:
    """(raw bytes, where they came from) of the train/test members: from the extracted folder if present, else from
    the archive."""
    archive, folder, train, test, _ = LAYOUT[dataset]
    names = train + [test]
    if not data_dir.is_dir():
        raise DataNotFoundError(_missing_message(dataset, data_dir, "the directory does not exist"))
    for cand in (data_dir / folder, data_dir):  # data_dir may also BE the extracted folder
        if all((cand / n).is_file() for n in names):
            try:
                return {n: ((cand / n).read_bytes(), str(cand / n)) for n in names}
            except OSError as exc:
                raise CifarDataError(f"cannot read {exc.filename or cand}: {one_line(exc)}") from None
    if (data_dir / archive).is_file():
        return _read_archive(dataset, data_dir, names)
    partial = [n for n in names if (data_dir / folder / n).is_file()]
    detail = (f"{folder}/ has only {partial}" if partial else f"neither {archive} nor {folder}/ is there")
    raise DataNotFoundError(_missing_message(dataset, data_dir, detail))


def _decode(d: dict, dataset: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 3, 32, 32) uint8 images and N int64 labels of one unpickled batch, checked."""
    label_key, c = LAYOUT[dataset][4], NUM_CLASSES[dataset]
    missing = [k for k in ("data", label_key) if k not in d]
    if missing:
        raise CifarDataError(_bad_file(dataset, where, f"has no {' or '.join(repr(k) for k in missing)} entry "
                                                       f"(keys: {sorted(map(str, d))})"))
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CifarDataError(_bad_file(dataset, where, f"has 'data' of {data.dtype} {data.shape}, expected uint8 "
                                                       f"of shape (N, 3072)"))
    try:
        labels = np.asarray(d[label_key])
        ok = labels.ndim == 1 and (labels.size == 0 or np.issubdtype(labels.dtype, np.integer))
    except Exception:  # ragged or odd objects
        ok = False
    if not ok or len(labels) != len(data):
        raise CifarDataError(_bad_file(dataset, where, f"has {label_key!r} that is not a list of {len(data)} integer "
                                                       f"labels (one per image)"))
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        raise CifarDataError(_bad_file(dataset, where, f"has {label_key!r} outside [0, {c - 1}] "
                                                       f"(range [{labels.min()}, {labels.max()}])"))
    return data.reshape(-1, 3, 32, 32), labels  # rows are R(1024) G(1024) B(1024), each 32x32 row-major


@dataclass(frozen=True)
class CifarArrays:
    x_train: np.ndarray  # uint8 (N, 3, 32, 32)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def load_cifar(dataset: str, data_dir: str | os.PathLike) -> CifarArrays:
    """Read CIFAR-10 or CIFAR-100 (fine labels) from ``data_dir``. Missing files raise DataNotFoundError saying what
    to put where; an unreadable archive or a malformed batch raises CifarDataError naming the file (both are
    ConfigErrors)."""
    if dataset not in LAYOUT:
        raise ConfigError(f"dataset must be one of {tuple(LAYOUT)}, got {dataset!r}")
    data_dir = Path(data_dir).expanduser()
    _, _, train, test, _ = LAYOUT[dataset]
    raw = _read_members(dataset, data_dir)
    parts = [_decode(_unpickle(raw[n][0], dataset, raw[n][1]), dataset, raw[n][1]) for n in train]
    x_test, y_test = _decode(_unpickle(raw[test][0], dataset, raw[test][1]), dataset, raw[test][1])
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return CifarArrays(x_train, y_train, x_test, y_test, NUM_CLASSES[dataset])


def load_dataset(dataset: str, data_dir: str | os.PathLike) -> CifarArrays:
    """Any dataset of the pipeline: CIFAR from ``data_dir`` (``load_cifar``), or the digits bundled with
    scikit-learn (``theory_sim.cifar.digits``; ``data_dir`` is not read)."""
    if dataset == "digits":
        from theory_sim.cifar.digits import load_digits_arrays

        return CifarArrays(*load_digits_arrays(), NUM_CLASSES["digits"])
    return load_cifar(dataset, data_dir)


def write_synthetic_cifar(root: str | os.PathLike, dataset: str = "cifar10", n_train: int = 500, n_test: int = 100,
                          seed: int = 0, archive: bool = False) -> Path:
    """Write a small learnable stand-in for CIFAR in the exact on-disk format of the real dataset (python pickle
    batches; uint8 (N, 3072) data; labels as a list of ints under b'labels' / b'fine_labels'; bytes keys), either as
    the extracted folder or as the .tar.gz archive. Each class has its own colour and stripe pattern plus noise, so a
    small net learns it in an epoch or two. Used by the tests and by the studies' --smoke mode. Returns ``root``."""
    archive_name, folder, train, test, key = LAYOUT[dataset]
    c = NUM_CLASSES[dataset]
    rng = np.random.default_rng(seed)
    # class = a faint colour cast + horizontal stripes of its own frequency and phase; per-image brightness and
    # strong pixel noise make it a task a tiny WRN learns partly, not perfectly, in a couple of epochs
    protos = rng.uniform(110, 145, size=(c, 3, 1, 1)) + 12 * np.sin(
        np.arange(32)[None, None, :, None] * rng.uniform(0.2, 1.0, size=(c, 1, 1, 1)) + rng.uniform(0, 6, (c, 1, 1, 1)))

    def batch(n: int, label: str) -> bytes:
        y = rng.integers(0, c, size=n)
        x = protos[y] + rng.normal(0, 25, size=(n, 1, 1, 1)) + rng.normal(0, 60, size=(n, 3, 32, 32))
        d = {b"batch_label": label.encode(), key.encode(): [int(v) for v in y],
             b"data": np.clip(x, 0, 255).astype(np.uint8).reshape(n, 3072),
             b"filenames": [f"synthetic_{i}.png".encode() for i in range(n)]}
        if dataset == "cifar100":
            d[b"coarse_labels"] = [int(v) // 5 for v in y]
        return pickle.dumps(d, protocol=2)  # protocol 2, like the original cPickle files

    sizes = np.full(len(train), n_train // len(train))
    sizes[: n_train % len(train)] += 1
    files = {n: batch(int(s), f"training batch {i + 1}") for i, (n, s) in enumerate(zip(train, sizes))}
    files[test] = batch(n_test, "testing batch 1")
    # atomic writes: several DDP processes may write the same (identical) files at once while others read them
    root = Path(root)
    if archive:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for n, b in files.items():
                info = tarfile.TarInfo(f"{folder}/{n}")
                info.size = len(b)
                tar.addfile(info, io.BytesIO(b))
        atomic_write_bytes(root / archive_name, buf.getvalue())
    else:
        for n, b in files.items():
            atomic_write_bytes(root / folder / n, b)
    return root


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Change exactly round(rate * N) labels, chosen uniformly without replacement, each to a different class chosen
    uniformly among the other num_classes - 1 (the symmetric noise of [F21] Sec. 4). Returns (noisy labels, mask)."""
    check_float("label_noise", rate, lo=0.0, hi=1.0)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    k = int(round(rate * n))
    rng = np.random.default_rng([seed, 0x1AB])  # its own stream: independent of init and data order
    idx = rng.choice(n, size=k, replace=False)
    noisy = labels.copy()
    noisy[idx] = (labels[idx] + rng.integers(1, num_classes, size=k)) % num_classes  # shift by 1..C-1: never equal
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return noisy, mask


class Augment:
    """Per-batch CIFAR augmentation on the device: pad-4 random crop and random horizontal flip (the [F21] setting),
    then normalisation, then optional cutout (a size x size square set to 0 after normalisation, DeVries & Taylor
    2017). All randomness comes from ``self.generator`` (its state goes into the checkpoint)."""

    def __init__(self, dataset: str, device: torch.device, seed: int, cutout: int = 0, crop: bool = True,
                 flip: bool = True):
        check_int("cutout", cutout, lo=0, hi=32)
        self.device = torch.device(device)
        self.mean = torch.tensor(MEAN[dataset], device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(STD[dataset], device=self.device).view(1, -1, 1, 1)
        self.cutout, self.crop, self.flip = cutout, crop and AUGMENT[dataset], flip and AUGMENT[dataset]
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float().div_(255) - self.mean) / self.std

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        b, dev, g = x_uint8.shape[0], self.device, self.generator
        x = x_uint8.float().div_(255)
        if self.crop:  # zero (black) padding in pixel space, like RandomCrop(32, padding=4) on the image
            xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
            oy = torch.randint(0, 9, (b,), device=dev, generator=g)
            ox = torch.randint(0, 9, (b,), device=dev, generator=g)
            ar = torch.arange(32, device=dev)
            rows = (oy[:, None] + ar)[:, None, :, None]
            cols = (ox[:, None] + ar)[:, None, None, :]
            x = xp[torch.arange(b, device=dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
                   rows, cols]
        if self.flip:
            flip = torch.rand(b, device=dev, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = (x - self.mean) / self.std
        if self.cutout:
            cy = torch.randint(0, 32, (b,), device=dev, generator=g)
            cx = torch.randint(0, 32, (b,), device=dev, generator=g)
            ar = torch.arange(32, device=dev)
            h = self.cutout // 2
            inside_y = (ar[None, :] >= (cy - h)[:, None]) & (ar[None, :] < (cy - h + self.cutout)[:, None])
            inside_x = (ar[None, :] >= (cx - h)[:, None]) & (ar[None, :] < (cx - h + self.cutout)[:, None])
            x = x.masked_fill((inside_y[:, :, None] & inside_x[:, None, :])[:, None], 0.0)
        return x


def epoch_indices(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The training order of one epoch on one replica, like DistributedSampler(shuffle=True) with set_epoch: one
    permutation per (seed, epoch), the same on every replica, padded to a multiple of world and dealt round-robin.
    Needs no state to resume."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    perm = torch.randperm(n, generator=g)
    total = -(-n // world) * world
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    return perm[rank::world]
