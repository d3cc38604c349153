"""Test-error estimators: the 2m-dimensional Gaussian estimator against held-out samples and an exact case."""
import numpy as np
import pytest
import torch

from theory_sim.cnn.model import Params, TwoLayerCNN
from theory_sim.cnn.estimators import gaussian_test_error, heldout_test_error
from theory_sim.cnn.train import train_ensemble
from theory_sim.config import SimConfig


@pytest.mark.parametrize("model,noise_patches", [("c23", "shared"), ("c23", "independent"), ("kou2023", "shared")])
def test_gaussian_estimator_agrees_with_20000_heldout_points(model, noise_patches):
    base = SimConfig(d=200, n=20, P=3, m=6, batch_size=5, epochs=8, mu_norm=1.5, flip_p=0.15, model=model,
                     noise_patches=noise_patches, project_noise=(model == "c23"), n_test=20000, n_mc=40000)
    cfgs = [base.replace(seed=s) for s in range(3)]
    res = train_ensemble(cfgs, progress=False, log=False, track=False)
    s = res.summary
    err_g, se_g = s.test_error.values, s.test_error_se.values
    err_h = s.test_error_heldout.values
    se_h = np.sqrt(err_h * (1 - err_h) / 20000)
    z = np.abs(err_g - err_h) / np.sqrt(se_g**2 + se_h**2)
    assert np.all(z < 4.0), (err_g, err_h, z)  # 4 sigma: a false alarm in 1 of ~16,000 comparisons
    assert np.all((err_g > base.flip_p + 0.02) & (err_g < 0.5))  # a non-trivial error level


def test_gaussian_estimator_exact_case():
    """m=1, w_{+1} along a noise direction, w_{-1}=0: f = (P-1) relu(z) >= 0 and f = 0 iff z <= 0 (prob 1/2).
    A point with f = 0 is wrong whatever its label; otherwise (f > 0) it is wrong iff y = -1 (prob 1/2).
    So err = 1/2 + 1/2 * 1/2 = 3/4 for every p: the tie term matters."""
    cfg = SimConfig(d=5, m=1, P=3, flip_p=0.2, n_mc=200_000, mu_norm=2.0)
    W = torch.zeros(1, 2, 1, 5, dtype=torch.float64)
    W[0, 0, 0, 2] = 0.7
    net = TwoLayerCNN.for_config(cfg)
    err, se = gaussian_test_error(net, Params(W), [cfg], cfg.n_mc)
    exact = 0.75
    assert abs(err.item() - exact) <= 4 * se.item() + 1e-12
    held = heldout_test_error(net, Params(W), [cfg.replace(n_test=100_000)], 100_000)
    assert abs(held.item() - exact) <= 4 * np.sqrt(exact * (1 - exact) / 100_000)


def test_bayes_error_at_perfect_signal_classifier():
    """Filters aligned with mu and orthogonal to the noise: every clean point is right, err = p exactly."""
    cfg = SimConfig(d=6, m=2, P=2, flip_p=0.1, n_mc=1000)
    W = torch.zeros(1, 2, 2, 6, dtype=torch.float64)
    W[0, 0, :, 0] = 1.0
    W[0, 1, :, 0] = -1.0
    err, se = gaussian_test_error(TwoLayerCNN.for_config(cfg), Params(W), [cfg], cfg.n_mc)
    assert err.item() == pytest.approx(0.1, abs=1e-15) and se.item() <= 1e-15


def test_estimators_are_scale_invariant_and_survive_huge_weights():
    cfg = SimConfig(d=30, m=3, P=2, n_mc=2000, n_test=500)
    net = TwoLayerCNN.for_config(cfg)
    W = net.init([1], [1.0], 30).W
    e1, _ = gaussian_test_error(net, Params(W), [cfg], cfg.n_mc)
    e2, _ = gaussian_test_error(net, Params(W * 1e300), [cfg], cfg.n_mc)
    assert torch.equal(e1, e2)
    assert torch.equal(heldout_test_error(net, Params(W), [cfg], 500),
                       heldout_test_error(net, Params(W * 1e300), [cfg], 500))


@pytest.mark.parametrize("model,noise_patches", [("c23", "shared"), ("c23", "independent"), ("kou2023", "shared")])
def test_trainer_estimate_from_coefficients_equals_estimate_from_weights(model, noise_patches):
    """During training the test error comes from W Pi W^T assembled from small matrices (W0 W0^T, P0, A, G); at the
    end it comes from the materialised W. With the same draws both must agree to round-off."""
    base = SimConfig(d=50, n=12, P=3, m=4, batch_size=4, epochs=6, mu_norm=1.2, flip_p=0.2, model=model,
                     noise_patches=noise_patches, project_noise=(model == "c23"), n_test=0, n_mc=2000,
                     log_every=1000)
    cfgs = [base.replace(seed=s, optimizer=o) for s in range(2) for o in ("sgd", "sam")]
    res = train_ensemble(cfgs, progress=False, track=False)
    last = res.trajectory[res.trajectory.step == res.trajectory.step.max()].sort_values("run")
    assert np.allclose(last.test_error.values, res.summary.test_error.values, rtol=0, atol=1e-12)
    assert np.allclose(last.train_loss.values, res.summary.train_loss.values, rtol=1e-12)


def test_non_finite_runs_get_nan_and_leave_the_others_alone():
    """A run with non-finite weights (a diverged run) gets NaN from both estimators instead of aborting the call
    (torch.linalg.eigh cannot factor a NaN Gram); the other runs get exactly what they get on their own."""
    cfgs = [SimConfig(d=30, m=3, P=2, n_mc=500, n_test=100, seed=s) for s in range(3)]
    net = TwoLayerCNN.for_config(cfgs[0])
    W = net.init([0, 1, 2], [1.0] * 3, 30).W
    alone, alone_se = gaussian_test_error(net, Params(W[:1]), cfgs[:1], 500)
    bad = W.clone()
    bad[1, 0, 0, 3] = float("inf")
    bad[2, 1, 2, 0] = float("nan")
    err, se = gaussian_test_error(net, Params(bad), cfgs, 500)
    assert torch.isnan(err[1:]).all() and torch.isnan(se[1:]).all()
    assert err[0] == alone[0] and se[0] == alone_se[0]
    held = heldout_test_error(net, Params(bad), cfgs, 100)
    assert torch.isnan(held[1:]).all() and held[0] == heldout_test_error(net, Params(W[:1]), cfgs[:1], 100)[0]


def test_overflowing_gram_gives_nan_not_a_crash():
    """The trainer assembles W Pi W^T from small matrices; for weights near the dtype's limit it overflows to inf.
    Those rows are NaN, and a signal strength beyond the dtype (inf * w_1) is NaN rather than a silent 0."""
    from theory_sim.cnn.estimators import gaussian_test_error_from_gram, noise_gram

    cfg = SimConfig(d=30, m=3, P=2, n_mc=500)
    net = TwoLayerCNN.for_config(cfg)
    W = net.init([0, 1], [1.0, 1.0], 30).W
    gram, w0 = noise_gram(W, True)
    gram[1] = gram[1] * float("inf")
    err, _ = gaussian_test_error_from_gram(net, gram, w0, None, [cfg, cfg.replace(seed=1)], 500)
    assert torch.isfinite(err[0]) and torch.isnan(err[1])
    W32 = W.float()
    g32, w32 = noise_gram(W32, True)
    err32, _ = gaussian_test_error_from_gram(net, g32, w32, None, [cfg.replace(mu_norm=1e39)] * 2, 500)
    assert torch.isnan(err32).all()


def test_eigh_failure_falls_back_to_one_run_at_a_time(monkeypatch):
    """Should the batched eigendecomposition fail to converge, each run is factored on its own."""
    import theory_sim.cnn.estimators as te

    cfgs = [SimConfig(d=30, m=3, P=2, n_mc=500, seed=s) for s in range(2)]
    net = TwoLayerCNN.for_config(cfgs[0])
    W = net.init([0, 1], [1.0, 1.0], 30).W
    expected, _ = gaussian_test_error(net, Params(W), cfgs, 500)
    real = torch.linalg.eigh

    def batched_fails(a, *args, **kwargs):
        if a.dim() == 3:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real(a, *args, **kwargs)

    monkeypatch.setattr(te.torch.linalg, "eigh", batched_fails)
    got, _ = gaussian_test_error(net, Params(W), cfgs, 500)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
