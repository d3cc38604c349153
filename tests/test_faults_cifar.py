"""Faults of ``python -m theory_sim cifar``: bad data files, a broken checkpoint, --resume with changed settings, a full
disk. Each must end with exit status 2 and ONE ``error: ...`` line on stderr naming the file (no traceback), and must
leave the results already on disk (checkpoint.pt, metrics.parquet, config.json) byte for byte as they were."""
from __future__ import annotations

import dataclasses
import errno
import gzip
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from theory_sim.cifar.data import load_cifar, write_synthetic_cifar
from theory_sim.cifar.errors import CifarDataError, ResumeMismatchError
from theory_sim.cifar.train import CifarConfig, train
from theory_sim.cli import main

TINY = ["--n-train", "64", "--n-test", "32", "--batch-size", "32", "--no-sharpness", "--device", "cpu"]
RESULTS = ("checkpoint.pt", "metrics.parquet", "config.json")
C10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    return write_synthetic_cifar(tmp_path_factory.mktemp("good"), "cifar10", n_train=100, n_test=40, seed=1)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, good_data) -> Path:
    """A smoke run stopped after epoch 1 of 2: the finished results a failing --resume must not touch."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert main(["cifar", "--smoke", "--out", str(out), "--data-dir", str(good_data), "--epochs", "2",
                 "--stop-after", "1", *TINY]) == 0
    return out


@pytest.fixture
def run_dir(stopped_run, tmp_path) -> Path:
    """A private copy of the stopped run."""
    return Path(shutil.copytree(stopped_run, tmp_path / "run"))


def snapshot(run: Path) -> dict[str, bytes]:
    return {n: (run / n).read_bytes() for n in RESULTS if (run / n).exists()}


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def resume_fails_cleanly(run: Path, capsys, *needles: str, extra: tuple = (), code: int = 2) -> str:
    """``--resume`` of ``run`` exits ``code`` (2: bad input, 1: a failed write) with one error line containing
    ``needles``, and alters no result file."""
    before = snapshot(run)
    assert set(before) == set(RESULTS)
    assert main(["cifar", "--out", str(run), "--resume", *extra]) == code
    line = one_error_line(capsys, *needles)
    assert snapshot(run) == before
    assert not list(run.glob(".*.tmp"))  # no temp file left behind
    return line


def folder_copy(good_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good_data, tmp_path / "data"))


def write_batch(path: Path, d: dict) -> None:
    path.write_bytes(pickle.dumps({k.encode(): v for k, v in d.items()}, protocol=2))


def real_batch(n=20, label_key="labels", c=10, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": b"x", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, c, n)]}


# ---- data -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.97, 0.002])
def test_truncated_archive(run_dir, tmp_path, capsys, keep):
    src = write_synthetic_cifar(tmp_path / "full", "cifar10", n_train=100, n_test=40, seed=1, archive=True)
    raw = (src / "cifar-10-python.tar.gz").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cifar-10-python.tar.gz").write_bytes(raw[: int(len(raw) * keep)])
    resume_fails_cleanly(run_dir, capsys, str(bad / "cifar-10-python.tar.gz"), "truncated or corrupt",
                         "Download it again", extra=("--data-dir", str(bad)))


@pytest.mark.parametrize("payload", [os.urandom(4096), gzip.compress(os.urandom(4096)), b""])
def test_garbage_archive(run_dir, tmp_path, capsys, payload):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(payload)
    resume_fails_cleanly(run_dir, capsys, str(tmp_path / "cifar-10-python.tar.gz"), "not a readable .tar.gz",
                         extra=("--data-dir", str(tmp_path)))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "text", "not_a_dict", "code"])
def test_bad_pickle(run_dir, good_data, tmp_path, capsys, kind):
    data = folder_copy(good_data, tmp_path)
    victim = data / "cifar-10-batches-py" / "data_batch_3"
    if kind == "truncated":
        victim.write_bytes(victim.read_bytes()[:300])
    elif kind == "garbage":
        victim.write_bytes(os.urandom(2000))
    elif kind == "text":
        victim.write_text("this is not a pickle\n")
    elif kind == "not_a_dict":
        victim.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    else:  # a pickle that would run code: refused, not executed
        victim.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    resume_fails_cleanly(run_dir, capsys, str(victim), "not a cifar10 python-pickle batch",
                         extra=("--data-dir", str(data)))


def test_bad_pickle_inside_the_archive(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for n in C10_FILES:
            raw = b"\x80\x02garbage" if n == "test_batch" else pickle.dumps({b"data": 1}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{n}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(CifarDataError, match=r"cifar-10-python.tar.gz member cifar-10-batches-py/data_batch_1 has no "
                                             r"'labels' entry"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize("dataset,drop", [("cifar10", "labels"), ("cifar10", "data"), ("cifar100", "fine_labels")])
def test_missing_keys(run_dir, good_data, tmp_path, capsys, dataset, drop):
    if dataset == "cifar10":
        data = folder_copy(good_data, tmp_path)
        victim = data / "cifar-10-batches-py" / "test_batch"
        batch = real_batch()
        del batch[drop]
        write_batch(victim, batch)
        resume_fails_cleanly(run_dir, capsys, str(victim), f"has no '{drop}' entry", extra=("--data-dir", str(data)))
        return
    # CIFAR-100 reads the fine labels: a CIFAR-10 style batch ("labels" only) is refused. A fresh run: nothing to keep.
    data = write_synthetic_cifar(tmp_path / "c100", "cifar100", n_train=40, n_test=20, seed=0)
    victim = data / "cifar-100-python" / "train"
    write_batch(victim, real_batch(40, "labels", 100))
    out = tmp_path / "fresh"
    assert main(["cifar", "--smoke", "--dataset", "cifar100", "--out", str(out), "--data-dir", str(data), *TINY]) == 2
    one_error_line(capsys, str(victim), "'fine_labels'")
    assert not out.exists()


@pytest.mark.parametrize("change,needle", [
    (dict(data=np.zeros((20, 1024), np.uint8)), "expected uint8 of shape (N, 3072)"),
    (dict(data=np.zeros((20, 3072), np.float32)), "expected uint8 of shape (N, 3072)"),
    (dict(labels=[0] * 19), "not a list of 20 integer labels"),
    (dict(labels=["cat"] * 20), "not a list of 20 integer labels"),
    (dict(labels=[10] * 20), "outside [0, 9]"),
    (dict(labels=[-1] * 20), "outside [0, 9]")])
def test_malformed_batch_shapes_and_labels(run_dir, good_data, tmp_path, capsys, change, needle):
    data = folder_copy(good_data, tmp_path)
    victim = data / "cifar-10-batches-py" / "data_batch_5"
    write_batch(victim, {**real_batch(), **change})
    resume_fails_cleanly(run_dir, capsys, str(victim), needle, extra=("--data-dir", str(data)))


# ---- checkpoint -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong_content"])
def test_truncated_checkpoint(run_dir, capsys, damage):
    ckpt = run_dir / "checkpoint.pt"
    raw = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        ckpt.write_bytes(os.urandom(len(raw)))
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:  # a readable torch file that is not a checkpoint of this trainer
        torch.save({"weights": torch.zeros(3)}, ckpt)
    resume_fails_cleanly(run_dir, capsys, f"checkpoint {ckpt} is unreadable", "delete it to start the run over")


def test_unreadable_config_json(run_dir, capsys):
    (run_dir / "config.json").write_text('{"config": {"optimizer": "sam", ')
    resume_fails_cleanly(run_dir, capsys, str(run_dir / "config.json"), "unreadable")


# ---- resume with other settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,changes", [
    (["--epochs", "3"], ["epochs: 2 -> 3"]),
    (["--lr", "0.2"], ["lr: 0.05 -> 0.2"]),
    (["--optimizer", "sgd"], ["optimizer: sam -> sgd"]),
    (["--epochs", "5", "--rho", "0.1", "--label-noise", "0.2", "--no-nesterov"],
     ["epochs: 2 -> 5", "rho: 0.05 -> 0.1", "label_noise: 0.0 -> 0.2", "nesterov: True -> False"]),
    (["--preset", "f21"], ["epochs: 2 -> 200", "batch_size: 32 -> 128", "lr: 0.05 -> 0.1", "depth: 10 -> 28",
                           "width: 1 -> 10"])])
def test_resume_with_changed_flags(run_dir, capsys, flags, changes):
    line = resume_fails_cleanly(run_dir, capsys, *changes, extra=tuple(flags))
    assert line.count("->") == len(changes)  # exactly the changed fields are listed


def test_resume_accepts_runtime_flags_and_the_original_command(run_dir, good_data, capsys, tmp_path):
    moved = Path(shutil.copytree(good_data, tmp_path / "moved"))  # the data moved: --data-dir may change
    again = ["cifar", "--smoke", "--out", str(run_dir), "--data-dir", str(moved), "--epochs", "2", *TINY]
    assert main([*again, "--resume", "--stop-after", "1"]) == 0  # the original command line plus --resume
    assert pd.read_parquet(run_dir / "metrics.parquet").epoch.tolist() == [1, 2]
    assert capsys.readouterr().err == ""


def test_train_api_refuses_a_changed_config_on_resume(stopped_run, tmp_path):
    run = Path(shutil.copytree(stopped_run, tmp_path / "run"))
    saved = CifarConfig(**json.loads((run / "config.json").read_text())["config"])
    before = snapshot(run)
    with pytest.raises(ResumeMismatchError, match=r"epochs: 2 -> 4; batch_size: 32 -> 16\. "):
        train(dataclasses.replace(saved, epochs=4, batch_size=16), run, resume=True, log=lambda *a: None)
    assert snapshot(run) == before


# ---- disk full ------------------------------------------------------------------------------------------------------
def _fsync_fails_from(monkeypatch, call: int) -> None:
    """os.fsync raises ENOSPC from its ``call``-th call on (1 = the first write of the epoch, the checkpoint)."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_while_writing_the_checkpoint(run_dir, capsys, monkeypatch):
    _fsync_fails_from(monkeypatch, 1)
    resume_fails_cleanly(run_dir, capsys, f"cannot write {run_dir / 'checkpoint.pt'}", "No space left on device",
                         "is unchanged", code=1)


def test_disk_full_while_writing_the_metrics(run_dir, capsys, monkeypatch):
    """The checkpoint of epoch 2 got written, the metrics did not: metrics.parquet stays the complete epoch-1 table,
    and a later --resume (space freed) rewrites it from the checkpoint's history."""
    _fsync_fails_from(monkeypatch, 2)
    metrics = (run_dir / "metrics.parquet").read_bytes()
    assert main(["cifar", "--out", str(run_dir), "--resume"]) == 1
    one_error_line(capsys, f"cannot write {run_dir / 'metrics.parquet'}", "No space left on device")
    assert (run_dir / "metrics.parquet").read_bytes() == metrics and not list(run_dir.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["cifar", "--out", str(run_dir), "--resume"]) == 0
    assert pd.read_parquet(run_dir / "metrics.parquet").epoch.tolist() == [1, 2]


def test_disk_full_at_the_start_of_a_fresh_run(good_data, tmp_path, capsys, monkeypatch):
    _fsync_fails_from(monkeypatch, 1)
    out = tmp_path / "fresh"
    assert main(["cifar", "--smoke", "--out", str(out), "--data-dir", str(good_data), *TINY]) == 1
    one_error_line(capsys, f"cannot write {out / 'config.json'}", "No space left on device")
    assert not list(out.iterdir())  # neither the file nor a temp file


@pytest.mark.slow
def test_disk_full_for_real_in_a_subprocess(run_dir):
    """A real write failure (file-size limit: EFBIG from write(), inside torch.save), in a child process."""
    limit = (run_dir / "checkpoint.pt").stat().st_size // 2
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from theory_sim.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        sys.exit(main(["cifar", "--out", {str(run_dir)!r}, "--resume"]))
    """)
    before = snapshot(run_dir)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot write {run_dir / 'checkpoint.pt'}" in lines[0] and "File too large" in lines[0]
    assert snapshot(run_dir) == before and not list(run_dir.glob(".*.tmp"))


# ---- sizes that cannot fit (issue 19): refused before any work, one line, nothing written ----------------------------
@pytest.mark.parametrize("flags,needles", [
    (["--width", "10000"], ("cifar needs about", "most of it is the model", "depth=10 width=10000", "--force-memory")),
    (["--batch-size", "1000000", "--n-train", "0"], ("most of it is the activations", "batch_size=1000000")),
    (["--epochs", "1000000000"], ("steps, more than the bound", "--force-steps")),
    (["--n-train", "101"], ("n_train must be at most 100",)),
    (["--n-test", "41"], ("n_test must be at most 40",)),
    (["--depth", "99999999999999999999"], ("depth must fit a 64-bit integer",)),
], ids=["width", "batch", "epochs", "n_train", "n_test", "depth-int64"])
def test_sizes_that_cannot_fit_are_refused(good_data, tmp_path, capsys, flags, needles):
    out = tmp_path / "run"
    argv = ["cifar", "--smoke", "--out", str(out), "--data-dir", str(good_data), *TINY, *flags]
    assert main(argv) == 2
    one_error_line(capsys, *needles)
    assert not out.exists()


def test_cifar_memory_estimate_refuses_and_can_be_forced(monkeypatch):
    from theory_sim.cifar.config import PRESETS
    from theory_sim.config import ConfigError
    from theory_sim.cifar.memory import check_cifar_resources, estimate_cifar_memory_bytes

    cfg = CifarConfig(**PRESETS["smoke"], device="cpu")
    need = estimate_cifar_memory_bytes(cfg).total
    check_cifar_resources(cfg, available=(need + 1, "test"))
    with pytest.raises(ConfigError, match=r"more than the .* available \(test\)"):
        check_cifar_resources(cfg, available=(need - 1, "test"))
    check_cifar_resources(cfg, available=(need - 1, "test"), force_memory=True)
    wide = estimate_cifar_memory_bytes(dataclasses.replace(cfg, width=4))
    assert wide.parts["model"] > 10 * estimate_cifar_memory_bytes(cfg).parts["model"]   # D grows ~ width^2
