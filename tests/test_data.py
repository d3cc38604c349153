"""Data model of docs/science.md §1 [C23 Def. 2.1]: statistical properties checked against exact distributions."""
import numpy as np
import pytest
import torch
from scipy import stats

from theory_sim.cnn.data import generate, generate_for
from theory_sim.config import SimConfig


def big(n=100_000, P=5, p=0.2, **kw):
    return generate([7], [3.0], [1.5], [p], d=6, n=n, P=P, **kw)


def test_noise_is_orthogonal_to_mu_and_has_the_right_variance():
    data = big()
    assert torch.all(data.xi[..., 0] == 0)
    assert torch.all((data.xi[0, :, 0] @ data.mu[0]) == 0)
    # remaining coordinates are N(0, sigma_p^2): sample variance inside a chi-square 99.9% interval
    x = data.xi[0, :, 0, 1:].flatten().numpy()
    dof = x.size
    lo, hi = stats.chi2.interval(0.999, dof)
    assert lo / dof * 1.5**2 <= np.mean(x**2) <= hi / dof * 1.5**2


def test_kou2023_noise_is_not_projected():
    data = generate([7], [3.0], [1.0], [0.1], d=6, n=1000, P=2, project_noise=False)
    assert torch.all(data.xi[..., 0] != 0)


def test_flip_rate_inside_binomial_interval_and_labels_balanced():
    data = big()
    N = data.n
    flips = int((data.y != data.yhat).sum())
    lo, hi = stats.binom.interval(0.999, N, 0.2)
    assert lo <= flips <= hi
    pos = int((data.yhat == 1).sum())
    lo, hi = stats.binom.interval(0.999, N, 0.5)
    assert lo <= pos <= hi


def test_signal_position_uniform():
    data = big(P=5)
    counts = np.bincount(data.pos[0].numpy(), minlength=5)
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("noise_patches", ["shared", "independent"])
def test_patches_hold_signal_at_pos_and_noise_elsewhere(noise_patches):
    data = generate([1, 2], [2.0, 0.5], [1.0, 2.0], [0.3, 0.3], d=7, n=50, P=4, noise_patches=noise_patches)
    x = data.patches()
    for r in range(2):
        for i in range(50):
            p = int(data.pos[r, i])
            assert torch.equal(x[r, i, p], data.yhat[r, i] * data.mu[r])
            others = [q for q in range(4) if q != p]
            for k, q in enumerate(others):
                expect = data.xi[r, i, 0] if noise_patches == "shared" else data.xi[r, i, k]
                assert torch.equal(x[r, i, q], expect)
    if noise_patches == "independent":
        assert not torch.equal(data.xi[:, :, 0], data.xi[:, :, 1])


def test_same_seed_same_data_whatever_the_ensemble():
    cfg = SimConfig(d=30, n=10, batch_size=5)
    alone = generate_for([cfg.replace(seed=3)])
    ens = generate_for([cfg.replace(seed=1), cfg.replace(seed=3), cfg.replace(seed=9)])
    assert torch.equal(alone.xi[0], ens.xi[1]) and torch.equal(alone.y[0], ens.y[1])
    again = generate_for([cfg.replace(seed=3)])
    assert torch.equal(alone.xi, again.xi)
    other = generate_for([cfg.replace(seed=4)])
    assert not torch.equal(alone.xi, other.xi)
