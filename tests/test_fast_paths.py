"""Speed rewrites against the plain expressions they replace (issue 18: no number may change): each fast path must
give the same bits as its definition, including the edge cases (NaN, inf, values near overflow)."""
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from theory_sim.cnn.model import TwoLayerCNN
from theory_sim.cnn.train import squared_norms_finite
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.store import shard_is_complete, shard_path


def _definition(W: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(W.pow(2).sum(-1)).flatten(1).all(1)


def test_squared_norms_finite_equals_summing_every_square():
    for dtype in (torch.float32, torch.float64):
        big = math.sqrt(torch.finfo(dtype).max)
        d = 50
        W = torch.randn(12, 2, 3, d, dtype=dtype)
        W[1, 0, 0, 0] = float("nan")
        W[2, 1, 2, 5] = float("inf")
        W[3, 0, 1, 1] = -float("inf")
        W[4, 0, 0, :] = big / math.sqrt(d) * 1.01          # every square finite, their sum overflows
        W[5, 0, 0, :] = big / math.sqrt(d) * 0.99          # just below: finite
        W[6, 1, 1, 0] = big * 1.5                          # one square overflows
        W[7, 1, 1, 0] = -big * 0.9                         # large but finite alone
        W[8] *= 1e-30
        W[9, :, :, :3] = math.sqrt(torch.finfo(dtype).max / (2 * d)) * 1.0001   # just past the shortcut's bound
        got = squared_norms_finite(W)
        assert torch.equal(got, _definition(W)), dtype
        assert got.tolist()[:8] == [True, False, False, False, False, True, False, True]


def test_preactivations_with_bias_equal_product_then_sum_bit_for_bit():
    """b + s yhat in one addcmul is (s yhat) + b exactly, because yhat = +-1 makes the product exact."""
    net = TwoLayerCNN("kou2023", m=4, P=2)
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        proj = torch.randn(30, 2, 4, 1 + 8, generator=g, dtype=dtype) * 10 ** torch.randint(-6, 6, (30, 1, 1, 1))
        b = torch.randn(30, 2, 4, generator=g, dtype=dtype)
        mu = torch.rand(30, generator=g, dtype=dtype) * 5
        yhat = torch.randint(0, 2, (30, 8), generator=g).to(dtype) * 2 - 1
        sig, z = net.preactivations_from_projections(proj, b, mu, yhat, 1)
        s = proj[..., 0] * mu[:, None, None]
        assert torch.equal(sig, s[..., None] * yhat[:, None, None, :] + b[..., None])
        assert torch.equal(z, proj[..., 1:].reshape(30, 2, 4, 8, 1) + b[..., None, None])


def test_a_validated_shard_is_read_again_once_rewritten(tmp_path):
    """The in-process cache of valid shards must not hide a shard changed on disk."""
    from theory_sim.sweeps.runner import run_sweep

    spec = SweepSpec.from_dict({"name": "tiny", "seeds": 1, "chunk_runs": 4, "trajectories": False,
                                "base": {"n": 6, "batch_size": 6, "m": 2, "epochs": 2, "n_mc": 100},
                                "grid": {"d": {"values": [20]}, "mu_norm": {"values": [0.5, 2.0]}},
                                "optimizers": [{"label": "sgd", "optimizer": "sgd"}]})
    run_sweep(spec, tmp_path)
    chunk = spec.chunks()[0]
    assert shard_is_complete(tmp_path, spec, 0, chunk)
    path = shard_path(tmp_path, 0)
    df = pd.read_parquet(path)
    df.loc[0, "test_error"] = np.nan          # an invalid value, the same shape
    df.to_parquet(path)
    assert not shard_is_complete(tmp_path, spec, 0, chunk)


def test_finite_runs_equals_checking_every_entry():
    """The sum-first check against its definition: NaN, +-inf, inf and -inf in one run (a NaN sum), finite entries
    whose sum overflows, and a run whose entries are all at the edge of the range."""
    from theory_sim.cnn.model import finite_runs

    for dtype in (torch.float32, torch.float64):
        big = torch.finfo(dtype).max
        t = torch.randn(9, 3, 4, dtype=dtype)
        t[1, 0, 0] = float("nan")
        t[2, 1, 2] = float("inf")
        t[3, 2, 3] = -float("inf")
        t[4, 0, 0], t[4, 0, 1] = float("inf"), -float("inf")
        t[5] = big                                     # every entry finite, the sum overflows
        t[6] = -big
        t[7, 0, 0] = big                               # one entry at the edge, the sum finite
        u = torch.randn(9, 2, dtype=dtype)
        u[8, 1] = float("nan")
        definition = torch.isfinite(t).flatten(1).all(1) & torch.isfinite(u).all(1)
        assert torch.equal(finite_runs(t, None, u), definition)
        assert torch.equal(finite_runs(t[:1]), torch.tensor([True]))
        assert torch.equal(finite_runs(torch.empty(3, 0, dtype=dtype)), torch.ones(3, dtype=torch.bool))


def test_a_kept_shard_is_the_table_on_disk_and_handed_over_once(tmp_path):
    """The aggregation takes the table read back when the chunk finished: the same frame as reading the file now;
    a file rewritten after it was kept is read again, and a kept table is handed over only once."""
    from theory_sim.sweeps import store
    from theory_sim.sweeps.runner import run_sweep

    spec = SweepSpec.from_dict({"name": "tiny", "seeds": 2, "chunk_runs": 2, "trajectories": False,
                                "base": {"n": 6, "batch_size": 6, "m": 2, "epochs": 2, "n_mc": 100},
                                "grid": {"d": {"values": [20]}, "mu_norm": {"values": [0.5, 2.0]}},
                                "optimizers": [{"label": "sgd", "optimizer": "sgd"}]})
    table = run_sweep(spec, tmp_path)
    assert not store._KEPT_RESULTS          # the sweep's own aggregation took every table it kept
    assert shard_is_complete(tmp_path, spec, 0, keep=True) is True
    kept = store.read_results_shard(tmp_path, spec, 0)
    pd.testing.assert_frame_equal(kept, pd.read_parquet(shard_path(tmp_path, 0)))
    assert store.read_results_shard(tmp_path, spec, 0) is not kept          # once: then read from the file
    store._VALID_SHARDS.clear()
    assert shard_is_complete(tmp_path, spec, 1, keep=True)
    path = shard_path(tmp_path, 1)
    df = pd.read_parquet(path)
    df.loc[0, "train_loss"] = 123.0          # rewritten (a new file) after it was kept
    df.to_parquet(path)
    assert store.read_results_shard(tmp_path, spec, 1).loc[0, "train_loss"] == 123.0
    assert len(table) == 4


def test_a_sweeps_parent_process_never_imports_torch(tmp_path):
    """Expanding, checking and preparing a sweep, and verifying its results, run without torch (its ~1 s import
    would delay the workers' first chunk)."""
    import subprocess
    import sys

    code = f"""
import sys
from pathlib import Path
from theory_sim.sweeps.spec import SweepSpec
from theory_sim.sweeps.store import prepare
import theory_sim.sweeps.runner, theory_sim.sweeps.verify, theory_sim.sweeps.figures
spec = SweepSpec.from_toml("studies/kou2023.toml")
spec.check_resources(workers=2)
prepare(spec, Path({str(tmp_path)!r}))
assert "torch" not in sys.modules, "torch imported"
"""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_signal_coefficients_equal_the_plain_product_order_bit_for_bit():
    """a_sig = sum_n (coef yhat) act_sig equals sum_n (coef act_sig) yhat exactly (every product is exact)."""
    from theory_sim.cnn.model import relu_derivative

    g = torch.Generator().manual_seed(1)
    for model, dtype in (("kou2023", torch.float32), ("c23", torch.float64)):
        net = TwoLayerCNN(model, m=3, P=2)
        R, n = 20, 6
        proj = torch.randn(R, 2, 3, 1 + n, generator=g, dtype=dtype)
        b = torch.randn(R, 2, 3, generator=g, dtype=dtype) if net.bias else None
        mu = torch.rand(R, generator=g, dtype=dtype) * 3
        yhat = torch.randint(0, 2, (R, n), generator=g).to(dtype) * 2 - 1
        y = yhat * torch.where(torch.rand(R, n, generator=g) < 0.2, -1.0, 1.0).to(dtype)
        grad = net.batch_gradient(proj, b, y, yhat, mu, 1, 1)
        sig, z = net.preactivations_from_projections(proj, b, mu, yhat, 1)
        f = net.output_from_preactivations(sig, z, 1)
        coef = (-torch.sigmoid(-y * f) * y / n)[:, None, None, :] * (net.signs(f)[None, :, None, None]
                                                                      * (net.a_f * net.a_p))
        plain = (coef * relu_derivative(sig) * yhat[:, None, None, :]).sum(-1)
        assert torch.equal(grad.coefs[..., 0], plain * mu[:, None, None])
