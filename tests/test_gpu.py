"""Device-agnostic code: the same runs on CUDA give the CPU's numbers (skipped cleanly without CUDA)."""
import pytest
import torch

from theory_sim.cnn.train import train_ensemble
from theory_sim.config import SimConfig


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ensemble_on_cuda_matches_cpu():
    base = SimConfig(d=200, n=12, batch_size=4, epochs=10, n_test=100, n_mc=500, log_every=5)
    cfgs = [base.replace(seed=s, optimizer=o) for s in range(3) for o in ("sgd", "sam")]
    cpu = train_ensemble([c.replace(device="cpu") for c in cfgs], progress=False)
    gpu = train_ensemble([c.replace(device="cuda") for c in cfgs], progress=False)
    assert gpu.params.W.device.type == "cuda"
    assert torch.allclose(gpu.params.W.cpu(), cpu.params.W, rtol=1e-9, atol=1e-12)
    assert (abs(gpu.summary.test_error - cpu.summary.test_error) < 1e-9).all()
