"""Learning-rate schedules (docs/science.md §3.5): the formula against a hand computation, a scheduled run of the
batched trainer against the nn.Module + torch.optim + torch.optim.lr_scheduler reference in both representations
(float64), constant = the unscheduled trainer bitwise, and the configuration."""
import math

import numpy as np
import pytest
import torch

from theory_sim.cli import main
from theory_sim.cnn.data import generate_for
from theory_sim.cnn.model import TwoLayerCNN
from theory_sim.cnn.reference import train_reference
from theory_sim.cnn.schedule import lr_factors
from theory_sim.cnn.train import train_ensemble
from theory_sim.config import ConfigError, SimConfig

# T = 4 epochs * 12 / 4 = 12 steps
BASE = SimConfig(d=40, n=12, batch_size=4, epochs=4, m=5, P=3, mu_norm=1.5, sigma_p=1.0, flip_p=0.25, eta=0.5,
                 n_test=0, n_mc=500, log_every=3, trajectory_mc=200)
SCHEDULES = {"cosine": dict(lr_schedule="cosine"),
             "step": dict(lr_schedule="step", lr_step_every=0.25, lr_step_gamma=0.5),
             "warmup": dict(lr_schedule="linear_warmup_cosine", lr_warmup=0.25)}


def test_schedule_formula_by_hand():
    T = BASE.total_steps
    assert T == 12
    c = lr_factors(BASE.replace(lr_schedule="cosine"))
    assert c[0] == 1.0 and c[6] == pytest.approx(0.5, abs=1e-15) and c[11] == pytest.approx(
        (1 + math.cos(math.pi * 11 / 12)) / 2, abs=1e-15)
    # step every round(0.25 * 12) = 3 steps, factor 0.5
    s = lr_factors(BASE.replace(**SCHEDULES["step"]))
    assert s.tolist() == [1, 1, 1, .5, .5, .5, .25, .25, .25, .125, .125, .125]
    # warm-up W = 3 steps: 1/3, 2/3, 1, then the cosine over the 9 steps left
    w = lr_factors(BASE.replace(**SCHEDULES["warmup"]))
    assert np.allclose(w[:4], [1 / 3, 2 / 3, 1, 1], rtol=0, atol=1e-15)
    assert w[4] == pytest.approx((1 + math.cos(math.pi / 9)) / 2, abs=1e-15)
    assert w[-1] == pytest.approx((1 + math.cos(math.pi * 8 / 9)) / 2, abs=1e-15)
    assert (lr_factors(BASE) == 1).all()
    # a wrong hand value must fail: the cosine at its midpoint is not 0.5 of the step schedule's
    assert not np.allclose(c, s)


@pytest.mark.parametrize("state", ["coefficients", "weights"])
@pytest.mark.parametrize("model", ["c23", "kou2023"])
def test_scheduled_run_equals_the_torch_scheduler_reference(model, state):
    base = BASE.replace(model=model, project_noise=(model == "c23"))
    cfgs = [base.replace(seed=1, **SCHEDULES["cosine"]), base.replace(seed=2, optimizer="sam", **SCHEDULES["step"]),
            base.replace(seed=3, optimizer="sam", sam_steps=5, **SCHEDULES["warmup"]), base.replace(seed=4)]
    ens = train_ensemble(cfgs, progress=False, log=False, track=False, state=state)
    data = generate_for(cfgs)
    init = TwoLayerCNN.for_config(base).init([c.seed for c in cfgs], [c.sigma_0 for c in cfgs], base.d)
    x = data.patches()
    for r, c in enumerate(cfgs):
        net = train_reference(c, x[r], data.y[r], init.W[r], None if init.b is None else init.b[r])
        W, _ = net.filters()
        assert float((W - ens.params.W[r]).abs().max() / W.abs().max()) <= 1e-10, c.lr_schedule
        # the wrong schedule must miss the reference
        other = "constant" if c.lr_schedule != "constant" else "cosine"
        wrong = train_reference(c.replace(lr_schedule=other), x[r], data.y[r], init.W[r],
                                None if init.b is None else init.b[r]).filters()[0]
        assert float((W - wrong).abs().max() / W.abs().max()) > 1e-4


def test_constant_schedule_is_the_unscheduled_trainer_bitwise_and_the_lr_is_logged():
    cfgs = [BASE.replace(seed=1), BASE.replace(seed=2, optimizer="sam")]
    plain = train_ensemble(cfgs, progress=False)
    mixed = train_ensemble(cfgs + [BASE.replace(seed=3, lr_schedule="cosine")], progress=False)
    assert torch.equal(plain.params.W, mixed.params.W[:2])    # a scheduled run in the ensemble changes nothing
    tr = mixed.trajectory
    assert (tr[tr.run < 2].lr == 0.5).all()
    cos = tr[tr.run == 2].set_index("step").lr
    assert cos[0] == 0.5 and cos[6] == pytest.approx(0.25, abs=1e-15) and cos[12] == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 11 / 12)) / 2, abs=1e-15)


def test_early_stopping_ends_the_schedule_where_it_stands():
    """loss_eps stops a run; the schedule keeps the planned T (the stopped run's last lr is eta(t_stop))."""
    c = BASE.replace(seed=1, lr_schedule="cosine", loss_eps=0.6, mu_norm=4.0)
    res = train_ensemble([c], progress=False)
    steps = int(res.summary.steps[0])
    assert 0 < steps < c.total_steps
    last = res.trajectory.iloc[-1]
    assert last.lr == pytest.approx(0.5 * lr_factors(c)[steps], abs=1e-15)


@pytest.mark.parametrize("overrides,msg", [
    (dict(lr_schedule="linear"), "lr_schedule must be one of"),
    (dict(lr_warmup=1.0), "lr_warmup must be in [0.0, 1.0)"), (dict(lr_warmup=-0.1), "lr_warmup must be in"),
    (dict(lr_step_gamma=0.0), "lr_step_gamma must be in (0.0, 1.0]"),
    (dict(lr_step_gamma=1.5), "lr_step_gamma must be in (0.0, 1.0]"),
    (dict(lr_step_every=0.0), "lr_step_every must be in (0.0, 1.0]"),
    (dict(lr_step_every=float("nan")), "lr_step_every must be a finite number"),
])
def test_schedule_options_are_validated(overrides, msg):
    with pytest.raises(ConfigError) as exc:
        BASE.replace(**overrides)
    assert msg in str(exc.value)


def test_simulate_lr_schedule_and_refused_options(tmp_path, capsys):
    tiny = ["--d", "30", "--n", "8", "--batch-size", "4", "--epochs", "2", "--seeds", "1", "--n-mc", "200",
            "--n-test", "0", "--no-progress"]
    assert main(["simulate", *tiny, "--lr-schedule", "step", "--lr-step-gamma", "0.5", "--out",
                 str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    for extra, msg in [(["--lr-schedule", "cosine", "--lr-warmup", "0.2"],
                        "lr_warmup only applies to --lr-schedule linear_warmup_cosine"),
                       (["--lr-step-gamma", "0.5"], "lr_step_gamma only applies to --lr-schedule step"),
                       (["--lr-schedule", "step", "--lr-step-every", "2"], "lr_step_every must be in (0.0, 1.0]")]:
        assert main(["simulate", *tiny, *extra, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
