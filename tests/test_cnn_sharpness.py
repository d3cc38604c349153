"""Sharpness of stored simulate runs: the per-run objective is the run's own training loss (float64 oracles)."""
import json

import pytest
import torch

from theory_sim.cli import main
from theory_sim.cnn.model import TwoLayerCNN
from theory_sim.cnn.run_sharpness import run_objective
from theory_sim.cnn.train import train_ensemble
from theory_sim.config import SimConfig


def test_run_objective_is_the_runs_training_loss_with_closed_form_gradient_and_dense_hessian():
    cfgs = [SimConfig(d=6, m=2, n=8, batch_size=4, epochs=5, model=m, project_noise=(m == "c23"), seed=s,
                      n_test=0, n_mc=200) for m in ("c23",) for s in (1, 2)]
    res = train_ensemble(cfgs, progress=False, log=False)
    net = TwoLayerCNN.for_config(cfgs[0])
    closed = net.loss_and_grad(res.params, res.data)
    for r in range(2):
        obj = run_objective(net, res.params, res.data, r)
        assert abs(float(obj.loss()) - res.summary.train_loss[r]) <= 1e-13
        assert torch.allclose(obj.grad()[0], closed.dW[r], rtol=1e-11, atol=1e-14)
        flat = obj.params[0].flatten().clone()
        H = torch.autograd.functional.hessian(lambda v: obj([v.reshape(obj.params[0].shape)]), flat)
        v = torch.randn(flat.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(r))
        hv = obj.hvp([v.reshape(obj.params[0].shape)])
        hv = hv[0] if isinstance(hv, (list, tuple)) else hv
        assert torch.allclose(hv.flatten(), H @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_sharpness_verb_writes_json(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", "--optimizer", "sam", "--d", "30", "--m", "3", "--epochs", "5", "--seeds", "2",
                 "--n-mc", "200", "--n-test", "0", "--out", str(out), "--no-progress"]) == 0
    assert main(["sharpness", str(out), "--trace-samples", "8", "--avg-samples", "8", "--max-steps", "3"]) == 0
    runs = json.loads((out / "sharpness.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        assert r["lambda"][0] >= r["lambda"][1] >= r["lambda"][2]
        assert r["r_max"] >= r["r_asc"] - 1e-12 and r["r_max"] >= r["r_avg"]
        assert r["rho"] > 0 and r["trace_se"] > 0
