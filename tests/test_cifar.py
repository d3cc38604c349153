"""The CIFAR pipeline: WideResNet, the pickle loader, label noise, augmentation, the trainer, resume, DDP, CLI."""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pickle
import socket
import tarfile
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from theory_sim.cifar.data import (
    Augment,
    DataNotFoundError,
    epoch_indices,
    load_cifar,
    symmetric_label_noise,
    write_synthetic_cifar,
)
from theory_sim.cifar.train import CifarConfig, add_arguments, config_from_args, main, train
from theory_sim.cifar.wrn import WideResNet
from theory_sim.config import ConfigError

TINY = dict(depth=10, width=1, epochs=2, batch_size=16, lr=0.05, n_train=64, n_test=32, sharpness=False,
            device="cpu")


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    return str(write_synthetic_cifar(tmp_path_factory.mktemp("c10"), "cifar10", n_train=100, n_test=40, seed=1))


# ---- model ----------------------------------------------------------------------------------------------------------
def test_wrn_shapes_and_size():
    assert sum(p.numel() for p in WideResNet(28, 10).parameters()) == 36_479_194  # WRN-28-10, as in [F21]
    net = WideResNet(16, 4, num_classes=100, dropout=0.3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert len(net.blocks) == 6 and net.blocks[0].shortcut is not None and net.blocks[1].shortcut is None
    with pytest.raises(ValueError, match="depth"):
        WideResNet(12, 1)


# ---- data -----------------------------------------------------------------------------------------------------------
def _real_format_batch(n, key, seed):
    """A batch exactly as in the real archives: bytes keys, uint8 (n, 3072) data, labels as a list of ints."""
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"training batch 1 of 5", key: [int(v) for v in rng.integers(0, 10, n)],
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
    return d, pickle.dumps(d, protocol=2)


def test_loader_reads_extracted_folder_and_archive_identically(tmp_path):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {n: _real_format_batch(3 + i, b"labels", i) for i, n in enumerate(names)}
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (tmp_path / "archive").mkdir()
    with tarfile.open(tmp_path / "archive" / "cifar-10-python.tar.gz", "w:gz") as tar:
        for n, (_, raw) in batches.items():
            (folder / n).write_bytes(raw)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{n}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    a = load_cifar("cifar10", tmp_path / "extracted")
    b = load_cifar("cifar10", tmp_path / "archive")
    c = load_cifar("cifar10", folder)  # pointing at the extracted folder itself also works
    for arr in (b, c):
        for f in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(getattr(a, f), getattr(arr, f))
    assert a.x_train.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32) and a.x_train.dtype == np.uint8
    first = batches["data_batch_1"][0]
    # row layout: 1024 red, then green, then blue values, each image row-major
    assert np.array_equal(a.x_train[0, 1].reshape(-1), first[b"data"][0, 1024:2048])
    assert a.y_train[:3].tolist() == first[b"labels"]
    assert a.y_test.tolist() == batches["test_batch"][0][b"labels"] and a.num_classes == 10


def test_loader_cifar100_fine_labels(tmp_path):
    write_synthetic_cifar(tmp_path, "cifar100", n_train=30, n_test=10, seed=0, archive=True)
    a = load_cifar("cifar100", tmp_path)
    assert a.num_classes == 100 and a.x_train.shape == (30, 3, 32, 32) and a.y_test.shape == (10,)
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz") as tar:
        raw = pickle.loads(tar.extractfile("cifar-100-python/train").read(), encoding="bytes")
    assert a.y_train.tolist() == raw[b"fine_labels"] and set(raw) >= {b"fine_labels", b"coarse_labels", b"data"}


def test_missing_data_gives_a_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_cifar("cifar10", tmp_path / "nope")
    msg = str(e.value)
    assert "does not exist" in msg and str(tmp_path / "nope" / "cifar-10-python.tar.gz") in msg
    assert str(tmp_path / "nope" / "cifar-10-batches-py") in msg and "data_batch_1" in msg and "test_batch" in msg
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"")
    with pytest.raises(DataNotFoundError, match=r"cifar-100-python/ has only \['train'\].*cifar-100-python.tar.gz"):
        load_cifar("cifar100", tmp_path)
    assert isinstance(e.value, ConfigError)  # so the CLI prints it as one error line


def test_loader_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / n).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize("n,rate,c", [(1000, 0.2, 10), (999, 0.4, 10), (501, 0.6, 100), (77, 0.8, 10), (50, 1.0, 3)])
def test_label_noise_rate_is_exact_and_labels_really_change(n, rate, c):
    y = np.random.default_rng(n).integers(0, c, n)
    noisy, mask = symmetric_label_noise(y, rate, c, seed=7)
    assert mask.sum() == round(rate * n)
    assert np.all(noisy[mask] != y[mask]) and np.array_equal(noisy[~mask], y[~mask])
    assert noisy.min() >= 0 and noisy.max() < c
    noisy2, mask2 = symmetric_label_noise(y, rate, c, seed=7)
    assert np.array_equal(noisy, noisy2) and np.array_equal(mask, mask2)  # seeded
    assert not np.array_equal(symmetric_label_noise(y, rate, c, seed=8)[1], mask) or rate == 1.0


def test_label_noise_new_class_is_uniform_over_the_others():
    y = np.zeros(20000, dtype=np.int64)
    noisy, mask = symmetric_label_noise(y, 1.0, 5, seed=0)
    counts = np.bincount(noisy, minlength=5)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - 5000) < 4 * np.sqrt(5000))


def test_augmentation_crop_flip_cutout():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    aug = Augment("cifar10", "cpu", seed=0, crop=False, flip=True)
    base = aug.normalize(x)
    out = aug(x)
    for i in range(6):  # each image is either itself or its mirror image
        assert torch.allclose(out[i], base[i]) or torch.allclose(out[i], base[i].flip(2))
    aug = Augment("cifar10", "cpu", seed=0, crop=True, flip=False)
    padded = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    out = aug(x) * aug.std + aug.mean
    for i in range(6):  # each crop is one of the 81 windows of the zero-padded image
        assert any(torch.allclose(out[i], padded[i, :, a:a + 32, b:b + 32], atol=1e-6)
                   for a in range(9) for b in range(9))
    aug = Augment("cifar10", "cpu", seed=0, crop=False, flip=False, cutout=8)
    zeros = (aug(x) == 0).all(dim=1).sum(dim=(1, 2))
    assert torch.all(zeros >= 16) and torch.all(zeros <= 64)  # an 8x8 square, partly outside the image at edges
    a1, a2 = Augment("cifar10", "cpu", seed=3, cutout=4), Augment("cifar10", "cpu", seed=3, cutout=4)
    assert torch.equal(a1(x), a2(x))  # all randomness from the seeded generator


def test_epoch_indices_shard_like_distributed_sampler():
    shards = [epoch_indices(10, epoch=2, seed=0, rank=r, world=3) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set(torch.cat(shards).tolist()) == set(range(10))
    assert torch.equal(epoch_indices(10, 2, 0), epoch_indices(10, 2, 0))
    assert not torch.equal(epoch_indices(100, 2, 0), epoch_indices(100, 3, 0))


# ---- config and CLI -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,name", [(dict(rho=-0.1), "rho"), (dict(optimizer="adam"), "optimizer"),
                                     (dict(depth=12), "depth"), (dict(label_noise=1.5), "label_noise"),
                                     (dict(optimizer="sam", ascent_steps=3), "ascent_steps"),
                                     (dict(optimizer="asam", norm="inf"), "norm"),
                                     (dict(batch_size=1), "batch_size"), (dict(dataset="mnist"), "dataset"),
                                     (dict(m_sharpness=500), "m_sharpness"), (dict(epochs=0), "epochs"),
                                     (dict(device="tpu"), "device"), (dict(lr=0.0), "lr")])
def test_bad_config_is_rejected_with_the_parameter_name(kw, name):
    with pytest.raises(ConfigError, match=name):
        CifarConfig(**kw)


@pytest.mark.slow
def test_default_radius_follows_the_papers():
    assert CifarConfig().rho == 0.05 and CifarConfig(dataset="cifar100").rho == 0.1
    assert CifarConfig(optimizer="asam").rho == 0.5 and CifarConfig(optimizer="asam", dataset="cifar100").rho == 1.0
    assert CifarConfig(optimizer="sgd").rho == 0.0 and CifarConfig(optimizer="msam", ascent_steps=3).rule == "sam"
    assert CifarConfig(norm="inf").rule == "sam_inf"
    assert CifarConfig(optimizer="msam").ascent_steps == 2 and CifarConfig().ascent_steps == 1


def test_cli_registered_and_bad_flag_exits_2(tmp_path, capsys):
    from theory_sim.cli import VERBS
    assert VERBS["cifar"][0] == "theory_sim.cifar.train"
    assert main(["--out", str(tmp_path / "r"), "--rho", "-1", "--data-dir", str(tmp_path)]) == 2
    assert "rho" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "r"), "--data-dir", str(tmp_path / "missing"), "--smoke"]) == 2
    assert "cifar-10-python.tar.gz" in capsys.readouterr().err


def test_cli_smoke_run_writes_metrics_and_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--smoke", "--out", str(out), "--optimizer", "msam", "--ascent-steps", "2", "--label-noise", "0.25",
                 "--n-train", "96", "--n-test", "32", "--batch-size", "32", "--no-sharpness", "--device", "cpu"]) == 0
    df = pd.read_parquet(out / "metrics.parquet")
    assert list(df.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "gen_gap",
                                "gen_gap_loss", "lr", "perturbation_norm", "epoch_time"]
    assert len(df) == 1 and np.isfinite(df.to_numpy()).all() and 0 < df.perturbation_norm[0] <= 0.05 + 1e-6
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["optimizer"] == "msam" and meta["config"]["ascent_steps"] == 2 and meta["seed"] == 0
    assert set(meta["versions"]) >= {"python", "torch", "numpy"} and "git_commit" in meta
    noise = np.load(out / "label_noise.npz")
    assert noise["noisy_mask"].sum() == 24 and np.all(noise["noisy_labels"][noise["noisy_mask"]]
                                                      != noise["clean_labels"][noise["noisy_mask"]])
    assert "epoch   1/1" in capsys.readouterr().out
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files behind


# ---- trainer ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_continues_bitwise_identically(c10, tmp_path):
    """2 epochs straight == 1 epoch, stop, --resume, 1 epoch: same weights, same metrics. Rand-SAM, dropout,
    cutout and label noise exercise every random stream that the checkpoint must carry."""
    cfg = CifarConfig(data_dir=c10, optimizer="randsam", rho=0.1, dropout=0.2, cutout=8, label_noise=0.3, **TINY)
    straight = train(cfg, tmp_path / "a", log=lambda *a: None)
    first = train(cfg, tmp_path / "b", stop_after=1, log=lambda *a: None)
    assert not first.finished and len(first.metrics) == 1
    with pytest.raises(ConfigError, match="resume"):
        train(cfg, tmp_path / "b", log=lambda *a: None)
    resumed = train(cfg, tmp_path / "b", resume=True, log=lambda *a: None)
    assert resumed.finished
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    cols = [c for c in straight.metrics.columns if c != "epoch_time"]
    pd.testing.assert_frame_equal(straight.metrics[cols], resumed.metrics[cols], check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b" / "metrics.parquet")[cols], resumed.metrics[cols])


@pytest.mark.slow
def test_sgd_and_msharpness_train_and_learn(c10, tmp_path):
    cfg = CifarConfig(data_dir=c10, optimizer="sam", m_sharpness=4, **{**TINY, "epochs": 3, "lr": 0.1})
    res = train(cfg, tmp_path / "m", log=lambda *a: None)
    assert res.metrics.train_loss.iloc[-1] < res.metrics.train_loss.iloc[0]
    sgd = train(CifarConfig(data_dir=c10, optimizer="sgd", **TINY), tmp_path / "s", log=lambda *a: None)
    assert (sgd.metrics.perturbation_norm == 0).all() and sgd.finished


@pytest.mark.slow
def test_final_sharpness_when_the_toolkit_is_there(c10, tmp_path):
    pytest.importorskip("theory_sim.sharpness")
    cfg = CifarConfig(data_dir=c10, optimizer="sam", **{**TINY, "epochs": 1, "sharpness": True,
                                                         "sharpness_samples": 8})
    res = train(cfg, tmp_path / "sh", log=lambda *a: None)
    saved = json.loads((tmp_path / "sh" / "sharpness.json").read_text())
    assert saved == res.sharpness and saved["n_samples"] == 8 and saved["rho"] == 0.05
    assert saved["lambda_1"] > 0 and saved["r_max"] >= saved["r_asc"] - 1e-6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_train(rank, world, port, data_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = CifarConfig(data_dir=data_dir, optimizer="sam", **{**TINY, "epochs": 1})
    res = train(cfg, out, log=lambda *a: None)
    torch.save(res.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    import torch.distributed as dist
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_stay_in_sync(c10, tmp_path):
    import torch.multiprocessing as mp
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_ddp_train, args=(2, _free_port(), c10, str(out)), nprocs=2, join=True)
    s0, s1 = (torch.load(out / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    init = WideResNet(10, 1).state_dict()
    assert not torch.equal(init["fc.weight"], s0["fc.weight"])  # it did train
    df = pd.read_parquet(out / "metrics.parquet")
    assert len(df) == 1 and df.perturbation_norm[0] == pytest.approx(0.05, rel=1e-4)


def test_cli_stop_and_resume_from_the_saved_config(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--n-train", "64", "--n-test", "32", "--batch-size", "32", "--no-sharpness", "--device", "cpu"]
    assert main(["--smoke", "--out", str(out), "--epochs", "2", "--stop-after", "1", *common]) == 0
    assert len(pd.read_parquet(out / "metrics.parquet")) == 1
    assert main(["--out", str(out), "--resume"]) == 0  # everything else comes from RUN/config.json
    df = pd.read_parquet(out / "metrics.parquet")
    assert df.epoch.tolist() == [1, 2] and df.lr[1] == pytest.approx(0.025)
    assert "resume: config from" in capsys.readouterr().out


# ---- renamed parameters (steps_k -> ascent_steps, eta_a -> asam_eta): the old spelling works, with one warning ------
def test_old_field_names_are_accepted_with_a_warning():
    with pytest.warns(FutureWarning, match="CifarConfig: steps_k is deprecated, use ascent_steps"):
        cfg = CifarConfig(optimizer="msam", steps_k=3)
    assert cfg.ascent_steps == 3 and "steps_k" not in dataclasses.asdict(cfg)
    with pytest.warns(FutureWarning, match="eta_a is deprecated, use asam_eta"):
        assert CifarConfig(optimizer="asam", eta_a=0.2).asam_eta == 0.2
    with pytest.warns(FutureWarning, match="CifarConfig: steps_k is deprecated, use ascent_steps"):
        assert cfg.steps_k == 3                                 # read under the old name too
    with pytest.warns(FutureWarning, match="CifarConfig: eta_a is deprecated, use asam_eta"):
        assert cfg.eta_a == 0.01
    assert dataclasses.replace(cfg, seed=1).ascent_steps == 3   # replace() sees only the new fields
    with pytest.raises(ConfigError, match="both steps_k .deprecated. and ascent_steps"):
        CifarConfig(optimizer="msam", steps_k=3, ascent_steps=4)
    with pytest.raises(ConfigError, match="ascent_steps"):       # the old name is validated like the new one
        with pytest.warns(FutureWarning):
            CifarConfig(optimizer="sam", steps_k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # the new names warn about nothing
        CifarConfig(optimizer="msam", ascent_steps=3)
        CifarConfig(optimizer="asam", asam_eta=0.2)


def test_old_flags_are_accepted_with_a_warning(capsys):
    p = argparse.ArgumentParser(prog="cifar")
    add_arguments(p)
    with pytest.warns(FutureWarning, match="cifar: --steps-k is deprecated, use --ascent-steps"):
        args = p.parse_args(["--out", "x", "--optimizer", "msam", "--steps-k", "3"])
    with pytest.warns(FutureWarning, match="--eta-a is deprecated, use --asam-eta"):
        args2 = p.parse_args(["--out", "x", "--optimizer", "asam", "--eta-a", "0.2"])
    assert config_from_args(args).ascent_steps == 3 and config_from_args(args2).asam_eta == 0.2
    new = p.parse_args(["--out", "x", "--optimizer", "msam", "--ascent-steps", "3"])
    new2 = p.parse_args(["--out", "x", "--optimizer", "asam", "--asam-eta", "0.2"])
    assert config_from_args(new) == config_from_args(args) and config_from_args(new2) == config_from_args(args2)


def test_a_run_stored_with_the_old_names_resumes(tmp_path, capsys):
    """A config.json and checkpoint written before the renames (steps_k, eta_a) still load and resume, bitwise
    like an uninterrupted run."""
    common = ["--optimizer", "msam", "--ascent-steps", "2", "--n-train", "64", "--n-test", "32", "--batch-size", "32",
              "--no-sharpness", "--device", "cpu"]
    straight, out = tmp_path / "straight", tmp_path / "run"
    assert main(["--smoke", "--out", str(straight), "--epochs", "2", *common]) == 0
    assert main(["--smoke", "--out", str(out), "--epochs", "2", "--stop-after", "1", *common]) == 0
    meta = json.loads((out / "config.json").read_text())     # rewrite both stored configs with the old names
    c = meta["config"]
    meta["config"] = {**{k: v for k, v in c.items() if k not in ("ascent_steps", "asam_eta")},
                      "steps_k": c["ascent_steps"], "eta_a": c["asam_eta"]}
    (out / "config.json").write_text(json.dumps(meta))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    ckpt["config"] = dict(meta["config"])
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.warns(FutureWarning, match="eta_a is deprecated, use asam_eta"), \
            pytest.warns(FutureWarning, match="steps_k is deprecated, use ascent_steps"):
        assert main(["--out", str(out), "--resume"]) == 0
    a, b = pd.read_parquet(straight / "metrics.parquet"), pd.read_parquet(out / "metrics.parquet")
    assert b.epoch.tolist() == [1, 2]
    pd.testing.assert_frame_equal(a.drop(columns="epoch_time"), b.drop(columns="epoch_time"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_run_with_bf16_autocast_and_channels_last(c10, tmp_path):
    cfg = CifarConfig(data_dir=c10, optimizer="sam", **{**TINY, "epochs": 1, "device": "cuda"})
    res = train(cfg, tmp_path / "gpu", log=lambda *a: None)
    assert res.finished and np.isfinite(res.metrics.drop(columns="epoch").to_numpy()).all()
    w = res.model.conv.weight
    assert w.is_cuda and w.dtype == torch.float32 and w.is_contiguous(memory_format=torch.channels_last)
