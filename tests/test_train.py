"""The ensemble trainer against independent oracles: single runs, the nn.Module + torch.optim reference, and the
exact reconstruction of W from the tracked coefficients (float64)."""
import numpy as np
import pandas as pd
import pytest
import torch

from theory_sim.cnn.data import generate_for
from theory_sim.cnn.model import TwoLayerCNN
from theory_sim.cnn.reference import train_reference
from theory_sim.cnn.train import train_ensemble
from theory_sim.config import SimConfig

BASE = SimConfig(d=40, n=12, batch_size=4, epochs=15, m=5, P=3, mu_norm=1.5, sigma_p=1.0, flip_p=0.25,
                 eta=0.5, n_test=0, n_mc=500, log_every=5)


def mixed_configs(base=BASE):
    return [base.replace(seed=1), base.replace(optimizer="sam", seed=2, c_tau=2.0),
            base.replace(optimizer="sam", seed=3, tau=0.3, sam_steps=20, mu_norm=0.7),
            base.replace(seed=4, eta=0.2, sigma_p=1.7, flip_p=0.0)]


def test_ensemble_equals_separate_single_runs():
    cfgs = mixed_configs()
    ens = train_ensemble(cfgs, progress=False)
    for r, c in enumerate(cfgs):
        one = train_ensemble([c], progress=False)
        assert torch.allclose(ens.params.W[r], one.params.W[0], rtol=0, atol=1e-12)
        assert torch.allclose(ens.tracker.rho[r], one.tracker.rho[0], rtol=0, atol=1e-12)
        for col in ("train_loss", "test_error", "steps"):
            assert abs(ens.summary[col][r] - one.summary[col][0]) <= 1e-12
        traj = ens.trajectory[ens.trajectory.run == r].reset_index(drop=True)
        ref = one.trajectory.drop(columns="run")
        pd.testing.assert_frame_equal(traj.drop(columns="run"), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("model", ["c23", "kou2023"])
def test_ensemble_equals_nn_module_torch_optim_reference(model):
    base = BASE.replace(model=model, project_noise=(model == "c23"))
    cfgs = mixed_configs(base)
    ens = train_ensemble(cfgs, progress=False, log=False, track=False)
    data = generate_for(cfgs)
    init = TwoLayerCNN.for_config(base).init([c.seed for c in cfgs], [c.sigma_0 for c in cfgs], base.d)
    x = data.patches()
    for r, c in enumerate(cfgs):
        net = train_reference(c, x[r], data.y[r], init.W[r], None if init.b is None else init.b[r])
        W, b = net.filters()
        assert float((W - ens.params.W[r]).abs().max() / W.abs().max()) <= 1e-10
        if b is not None:
            assert float((b - ens.params.b[r]).abs().max()) <= 1e-10


@pytest.mark.parametrize("model,noise_patches", [("c23", "shared"), ("c23", "independent"), ("kou2023", "shared")])
def test_reconstruction_from_coefficients_after_hundreds_of_steps(model, noise_patches):
    base = BASE.replace(model=model, noise_patches=noise_patches, project_noise=(model == "c23"), epochs=100)
    cfgs = [base.replace(seed=1), base.replace(optimizer="sam", seed=2),
            base.replace(optimizer="sam", seed=3, sam_steps=150)]
    res = train_ensemble(cfgs, progress=False, log=False)
    assert base.total_steps == 300
    W = res.params.W
    err = (res.tracker.reconstruct(res.data) - W).abs().max() / W.abs().max()
    assert float(err) <= 1e-13
    moved = (W - res.init.W).abs().max() / res.init.W.abs().max()
    assert float(moved) > 1  # the weights did move: the check is not vacuous


def test_rho_signs_and_summaries():
    res = train_ensemble(mixed_configs(), progress=False)
    tr = res.tracker
    assert torch.all(tr.rho[tr.is_bar.expand_as(tr.rho)] >= 0)
    assert torch.all(tr.rho[~tr.is_bar.expand_as(tr.rho)] <= 0)
    t = res.trajectory
    assert set(t.step.unique()) == set(range(0, 46, 5))
    assert (t.rhobar_max >= 0).all() and (t.rhounder_min <= 0).all()
    assert t[t.step == 0].gamma_max.eq(0).all()
    assert ((t.noise_active_frac >= 0) & (t.noise_active_frac <= 1)).all()
    final = t[t.step == 45].set_index("run")
    assert np.allclose(final.train_loss.values, res.summary.train_loss.values, rtol=1e-12)


def test_same_seed_same_numbers():
    a = train_ensemble(mixed_configs(), progress=False)
    b = train_ensemble(mixed_configs(), progress=False)
    pd.testing.assert_frame_equal(a.summary, b.summary)
    pd.testing.assert_frame_equal(a.trajectory, b.trajectory)
    c = train_ensemble([x.replace(seed=x.seed + 10) for x in mixed_configs()], progress=False)
    assert not np.allclose(a.summary.train_loss, c.summary.train_loss)


def test_sam_with_zero_sam_steps_is_sgd_and_radius_follows_theory_scale():
    sgd = train_ensemble([BASE.replace(seed=5)], progress=False, log=False)
    sam0 = train_ensemble([BASE.replace(seed=5, optimizer="sam", sam_steps=0)], progress=False, log=False)
    assert torch.equal(sgd.params.W, sam0.params.W)
    sam = train_ensemble([BASE.replace(seed=5, optimizer="sam")], progress=False, log=False)
    assert not torch.allclose(sgd.params.W, sam.params.W)
    c = BASE.replace(optimizer="sam", c_tau=2.0)
    assert c.sam_radius == pytest.approx(2.0 * 5 * np.sqrt(4) / (3 * 1.0 * np.sqrt(40)), rel=1e-15)
    assert BASE.replace(tau=0.25).sam_radius == 0.25


def test_divergent_run_is_flagged_not_a_crash_and_others_unaffected():
    good = BASE.replace(seed=1)
    bad = BASE.replace(seed=2, eta=1e306, sigma_p=100.0)
    res = train_ensemble([good, bad], progress=False)
    alone = train_ensemble([good], progress=False)
    assert list(res.summary.diverged) == [False, True]
    assert np.isnan(res.summary.test_error[1])
    assert torch.equal(res.params.W[0], alone.params.W[0])
    assert torch.isfinite(res.params.W).all()  # frozen at its last finite weights


def test_early_stop_at_loss_eps():
    res = train_ensemble([BASE.replace(seed=1, loss_eps=0.3, epochs=200), BASE.replace(seed=2, epochs=200)],
                         progress=False, log=False)
    s = res.summary
    assert s.steps[0] < 600 and s.steps[0] % 3 == 0 and s.train_loss[0] <= 0.3
    assert s.steps[1] == 600


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_full_batch_early_stop_is_the_first_epoch_whose_loss_is_small(optimizer):
    """Full batch: the stop check reuses the next step's gradient at W for the training loss. Oracle: the same run
    without early stopping, logged after every step, first reaches the loss at exactly the step where the stopped
    run ends, with the same weights; a run with loss_eps = 0 in the same ensemble trains every epoch."""
    full = BASE.replace(batch_size=BASE.n, epochs=60, log_every=1, optimizer=optimizer)
    free = train_ensemble([full.replace(seed=1)], progress=False)
    losses = free.trajectory.set_index("step").train_loss
    eps = float(losses.loc[30])   # reached first at some step <= 30, long before the last
    first = int(losses.index[(losses <= eps).to_numpy()].min())
    assert 0 < first <= 30
    res = train_ensemble([full.replace(seed=1, loss_eps=eps), full.replace(seed=2)], progress=False, log=False)
    assert list(res.summary.steps) == [first, 60]
    stopped = train_ensemble([full.replace(seed=1, epochs=first)], progress=False, log=False)
    assert torch.allclose(res.params.W[0], stopped.params.W[0], rtol=0, atol=1e-12)
    assert not torch.allclose(res.params.W[0], free.params.W[0], rtol=0, atol=1e-6)   # one that did not stop moved on


def test_mixed_structural_fields_rejected():
    from theory_sim.config import ConfigError

    with pytest.raises(ConfigError, match="share d"):
        train_ensemble([BASE, BASE.replace(d=41)])
