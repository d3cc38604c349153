"""The SAM family in the two-layer CNN trainer (float64): coefficient space against weight space, weight space
against autograd on the plain patch definition, Rand-SAM's exact-in-distribution sampling, the automatic choice of
the representation, the invariants, the configuration and the CLI (docs/science.md §2.4, §3.2)."""
import argparse
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from theory_sim.cli import main
from theory_sim.cnn.ensemble import (
    Ensemble,
    WeightEnsemble,
    make_ensemble,
)
from theory_sim.cnn.model import Params
from theory_sim.cnn.randsam import randsam_generator
from theory_sim.cnn.reference import PatchCNN
from theory_sim.cnn.rules import update_gradient
from theory_sim.cnn.simulate_verb import add_training_arguments, config_from_args
from theory_sim.cnn.train import apply_step, select_batch, train_ensemble
from theory_sim.config import ConfigError, SimConfig
from theory_sim.sam.optim import SAM

BASE = SimConfig(d=40, n=12, batch_size=4, epochs=3, m=4, P=3, mu_norm=1.5, sigma_p=1.0, flip_p=0.3, eta=0.5,
                 sigma_0=0.3, n_test=0, n_mc=200, log_every=3, trajectory_mc=200)

# every deterministic rule, as SimConfig overrides
DETERMINISTIC = {
    "sgd": dict(),
    "sam": dict(optimizer="sam"),
    "usam": dict(optimizer="usam", tau=0.4),
    "msam_k2": dict(optimizer="msam", ascent_steps=2),
    "msam_k3": dict(optimizer="msam", ascent_steps=3),
    "msam_k3_step0.3": dict(optimizer="msam", ascent_steps=3, ascent_step=0.3),
    "sam_m1": dict(optimizer="sam", m_sharpness=1),
    "sam_m2": dict(optimizer="sam", m_sharpness=2),
    "usam_m2": dict(optimizer="usam", m_sharpness=2, tau=0.4),
    "msam_k2_m2": dict(optimizer="msam", ascent_steps=2, m_sharpness=2),
}
SPAN_LEAVING = {"sam_inf": dict(optimizer="sam", norm="inf", tau=0.02), "asam": dict(optimizer="asam", tau=0.3)}
MODELS = ["c23", "kou2023"]


def model_base(model: str, **kw) -> SimConfig:
    return BASE.replace(model=model, project_noise=(model == "c23"), **kw)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def one_run_configs(model: str, overrides: dict, seeds=(1, 2)) -> list[SimConfig]:
    return [model_base(model, seed=s, **overrides) for s in seeds]


# ---------------------------------------------------------------------------------------------------------------
# Coefficient space == weight space, step by step
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("rule", list(DETERMINISTIC))
def test_coefficient_step_equals_weight_step(rule, model):
    cfgs = one_run_configs(model, DETERMINISTIC[rule]) + [model_base(model, seed=3)]   # with an SGD run
    coef, dense = Ensemble(cfgs), WeightEnsemble(cfgs)
    assert (coef.data.y != coef.data.yhat).any(), "flipped labels must be present"
    for step in range(6):
        epoch, i = divmod(step, coef.n // coef.B)
        bc, bw = select_batch(coef, epoch, i), select_batch(dense, epoch, i)
        assert rel(bw.proj, bc.proj) <= 1e-10
        gc, fc = update_gradient(coef, bc, step)
        gw, fw = update_gradient(dense, bw, step)
        assert bool(fc.all()) and bool(fw.all())
        assert rel(gw.coefs, gc.coefs) <= 1e-10
        if gc.db is not None:
            assert rel(gw.db, gc.db) <= 1e-10
        assert torch.allclose(gw.noise_active, gc.noise_active, rtol=0, atol=1e-12)
        apply_step(coef, bc, gc, fc)
        apply_step(dense, bw, gw, fw)
    assert rel(dense.weights().W, coef.weights().W) <= 1e-10
    assert rel(dense.A, coef.A) <= 1e-10
    moved = (coef.weights().W - coef.init.W).abs().max()
    assert float(moved) > 1e-3  # the steps did something


# ---------------------------------------------------------------------------------------------------------------
# Weight space == autograd on the plain patch definition, with the rules written out here
# ---------------------------------------------------------------------------------------------------------------
def autograd_grad(ens, r, idx, W, b, weights=None):
    """grad of the (weighted) mean logistic loss of run r on samples idx, by autograd on output_patches."""
    ts = [W.clone().requires_grad_(True)] + ([] if b is None else [b.clone().requires_grad_(True)])
    x = ens.data.patches()[r:r + 1, idx]
    f = ens.net.output_patches(Params(ts[0][None], ts[1][None] if b is not None else None), x)[0]
    losses = F.softplus(-ens.data.y[r, idx] * f)
    loss = losses.mean() if weights is None else (losses * weights).sum()
    return list(torch.autograd.grad(loss, ts))


def joint_norm(ts):
    return torch.sqrt(sum((t ** 2).sum() for t in ts))


def oracle_eps(rule_cfg: SimConfig, g, params, ens, r, idx, step):
    """eps by the rule's formula (docs/science.md §3.2) from autograd gradients, for one run."""
    tau, rule = rule_cfg.sam_radius, rule_cfg.rule
    if rule == "sam":
        return [tau * x / joint_norm(g) for x in g]
    if rule == "usam":
        return [tau * x for x in g]
    if rule == "sam_inf":
        return [tau * torch.sign(x) for x in g]
    if rule == "asam":
        T = [params[0].abs() + rule_cfg.asam_eta] + [torch.ones_like(p) for p in params[1:]]
        tg = [t * x for t, x in zip(T, g)]
        return [tau * t * x / joint_norm(tg) for t, x in zip(T, tg)]
    if rule == "msam":
        eps = [tau * x / joint_norm(g) for x in g]
        for _ in range(rule_cfg.ascent_steps - 1):
            gi = autograd_grad(ens, r, idx, *[p + e for p, e in zip(params, eps)] + ([None] if len(params) == 1
                                                                                   else []))
            alpha = rule_cfg.ascent_step * tau
            eps = [e + alpha * x / joint_norm(gi) for e, x in zip(eps, gi)]
            n = joint_norm(eps)
            if n > tau:
                eps = [e * tau / n for e in eps]
        return eps
    raise AssertionError(rule)


def oracle_update(cfg: SimConfig, ens, r, idx, step):
    """-eta * (the gradient the rule steps with), by autograd, for run r on the batch idx."""
    W, b = ens.W[r], None if ens.b is None else ens.b[r]
    params = [W] if b is None else [W, b]
    pad = [] if b is not None else [None]
    if cfg.rule is None:
        g = autograd_grad(ens, r, idx, W, b)
    elif cfg.rule == "randsam":  # the weight-space path's z: the run's own generator, one step's draw
        gen = randsam_generator(cfg.rng_seed)
        for _ in range(step + 1):
            z = [torch.randn(2, cfg.m, cfg.d, generator=gen, dtype=torch.float64)]
            if b is not None:
                z.append(torch.randn(2, cfg.m, generator=gen, dtype=torch.float64))
        eps = [cfg.sam_radius * x / joint_norm(z) for x in z]
        g = autograd_grad(ens, r, idx, *[p + e for p, e in zip(params, eps)] + pad)
    else:
        M = cfg.chunk_size
        chunks = [idx[c:c + M] for c in range(0, len(idx), M)]
        total = None
        for ch in chunks:  # m-sharpness: each chunk's mean loss, perturbed with its own gradient
            g0 = autograd_grad(ens, r, ch, W, b)
            eps = oracle_eps(cfg, g0, params, ens, r, ch, step)
            gc = autograd_grad(ens, r, ch, *[p + e for p, e in zip(params, eps)] + pad)
            total = gc if total is None else [t + x for t, x in zip(total, gc)]
        g = [t / len(chunks) for t in total]
    return [-cfg.eta * x for x in g]


ORACLE_RULES = {**DETERMINISTIC, **SPAN_LEAVING, "randsam": dict(optimizer="randsam"),
                "sam_inf_m2": dict(optimizer="sam", norm="inf", tau=0.02, m_sharpness=2)}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("rule", list(ORACLE_RULES))
def test_weight_space_step_equals_autograd_oracle(rule, model):
    cfgs = one_run_configs(model, ORACLE_RULES[rule])
    ens = WeightEnsemble(cfgs)
    for step in range(4):
        epoch, i = divmod(step, ens.n // ens.B)
        batch = select_batch(ens, epoch, i)
        before = Params(ens.W.clone(), None if ens.b is None else ens.b.clone())
        expected = [oracle_update(c, ens, r, ens.perms[r // ens.G, epoch, i * ens.B:(i + 1) * ens.B], step)
                    for r, c in enumerate(cfgs)]
        grad, finite = update_gradient(ens, batch, step)
        apply_step(ens, batch, grad, finite)
        for r in range(len(cfgs)):
            assert rel(ens.W[r] - before.W[r], expected[r][0]) <= 1e-10, (rule, step, r)
            if ens.b is not None:
                assert rel(ens.b[r] - before.b[r], expected[r][1]) <= 1e-10


@pytest.mark.slow
def test_msam_and_m_sharpness_match_the_cifar_optimizer():
    """One msam / m-sharpness step of the trainer equals theory_sim.sam.optim.SAM's on an nn.Module holding the same
    filters (steps_k = K, ascent_lr = rho, step_chunked over the chunks): the CNN and CIFAR paths agree."""
    for overrides in (dict(optimizer="msam", ascent_steps=3), dict(optimizer="msam", ascent_steps=2, m_sharpness=2),
                      dict(optimizer="sam", m_sharpness=1), dict(optimizer="msam", ascent_steps=4, ascent_step=0.25)):
        cfg = model_base("kou2023", seed=4, **overrides)
        ens = Ensemble([cfg])
        batch = select_batch(ens, 0, 0)
        idx = ens.perms[0, 0, :ens.B]
        net = PatchCNN(cfg.d, cfg.P, cfg.m, cfg.model).double().load_filters(ens.init.W[0], ens.init.b[0])
        x = ens.data.patches()[0].reshape(cfg.n, -1)
        opt = SAM(net.parameters(), torch.optim.SGD, rule="sam", rho=cfg.sam_radius, steps_k=cfg.ascent_steps
                  if cfg.optimizer == "msam" else 1, ascent_lr=cfg.ascent_step * cfg.sam_radius, lr=cfg.eta)
        M = cfg.chunk_size
        closures = []
        for c in range(0, ens.B, M):
            ch = idx[c:c + M]

            def closure(ch=ch):
                loss = F.softplus(-ens.data.y[0, ch] * net(x[ch])).mean()
                loss.backward()
                return loss
            closures.append(closure)
        opt.step_chunked(closures)
        grad, finite = update_gradient(ens, batch, 0)
        apply_step(ens, batch, grad, finite)
        W, b = net.filters()
        mine = ens.weights()
        assert rel(mine.W[0], W) <= 1e-10 and rel(mine.b[0], b) <= 1e-10, overrides


def test_msam_ascent_step_changes_the_step_and_the_oracle_tells_it_apart():
    """ascent_step = 0.3 moves eps (the oracle with alpha = tau must miss the trainer's step), ascent_step = 1 is
    today's msam bitwise, and 0.2 changes the trained weights."""
    cfg = model_base("c23", seed=1, optimizer="msam", ascent_steps=3, ascent_step=0.3)
    ens = WeightEnsemble([cfg])
    batch = select_batch(ens, 0, 0)
    idx = ens.perms[0, 0, :ens.B]
    right = oracle_update(cfg, ens, 0, idx, 0)
    wrong = oracle_update(cfg.replace(ascent_step=1.0), ens, 0, idx, 0)
    grad, finite = update_gradient(ens, batch, 0)
    step = -cfg.eta * ens._dense(grad.coefs, batch.basis)[0]
    assert rel(step, right[0]) <= 1e-10 and rel(step, wrong[0]) > 1e-4
    default = train_ensemble([BASE.replace(optimizer="msam", ascent_steps=3, seed=3)], progress=False, log=False)
    one = train_ensemble([BASE.replace(optimizer="msam", ascent_steps=3, ascent_step=1.0, seed=3)], progress=False,
                         log=False)
    short = train_ensemble([BASE.replace(optimizer="msam", ascent_steps=3, ascent_step=0.2, seed=3)], progress=False,
                           log=False)
    assert torch.equal(default.params.W, one.params.W) and not torch.allclose(default.params.W, short.params.W)


def autograd_loss(ens, r, idx, W, b):
    x = ens.data.patches()[r:r + 1, idx]
    f = ens.net.output_patches(Params(W[None], None if b is None else b[None]), x)[0]
    return float(F.softplus(-ens.data.y[r, idx] * f).mean())


@pytest.mark.parametrize("state", ["coefficients", "weights"])
@pytest.mark.parametrize("model", MODELS)
def test_perturbed_loss_columns_equal_autograd_at_w_plus_eps(model, state):
    """The trajectory's perturbed_loss (L_I(W + eps)) and perturbed_loss_gain (minus L_I(W)) at step 1 are the
    first batch's at initialisation, by autograd at the oracle's eps; NaN for SGD and after the SAM -> SGD switch."""
    rules = {"sam": dict(optimizer="sam", sam_steps=2), "usam": dict(optimizer="usam", tau=0.4),
             "msam": dict(optimizer="msam", ascent_steps=3, ascent_step=0.5), "sgd": dict()}
    cfgs = [model_base(model, seed=s, log_every=1, **o) for s, o in zip((1, 2, 3, 4), rules.values())]
    res = train_ensemble(cfgs, progress=False, state=state)
    ens = WeightEnsemble(cfgs)
    tr = res.trajectory.set_index(["run", "step"])
    for r, c in enumerate(cfgs):
        idx = ens.perms[r // ens.G, 0, :ens.B]
        W, b = ens.W[r], None if ens.b is None else ens.b[r]
        row = tr.loc[(r, 1)]
        if c.optimizer == "sgd":
            assert np.isnan(row.perturbed_loss) and np.isnan(row.perturbed_loss_gain)
            continue
        params = [W] if b is None else [W, b]
        eps = oracle_eps(c, autograd_grad(ens, r, idx, W, b), params, ens, r, idx, 0)
        moved = [p + e for p, e in zip(params, eps)]
        at_eps = autograd_loss(ens, r, idx, moved[0], moved[1] if b is not None else None)
        clean = autograd_loss(ens, r, idx, W, b)
        assert abs(row.perturbed_loss - at_eps) <= 1e-10 * abs(at_eps), c.optimizer
        assert abs(row.perturbed_loss_gain - (at_eps - clean)) <= 1e-10 * abs(at_eps), c.optimizer
        assert abs(row.perturbed_loss - clean) > 1e-6          # the loss at W itself must not pass
    assert np.isnan(tr.loc[(0, 3)].perturbed_loss) and np.isfinite(tr.loc[(0, 2)].perturbed_loss)   # sam_steps=2


def test_cifar_config_maps_ascent_step_to_the_optimizer_ascent_lr():
    from theory_sim.cifar.config import CifarConfig
    from theory_sim.cifar.train import build_optimizer

    net = torch.nn.Linear(3, 2)
    opt = build_optimizer(CifarConfig(optimizer="msam", ascent_steps=3, rho=0.1, ascent_step=0.4), net, net,
                          torch.device("cpu"), 0)
    assert opt.param_groups[0]["ascent_lr"] == pytest.approx(0.04) and opt.steps_k == 3
    default = build_optimizer(CifarConfig(optimizer="msam", rho=0.1), net, net, torch.device("cpu"), 0)
    assert default.param_groups[0]["ascent_lr"] == 0.1
    for kw, msg in ((dict(optimizer="sam", ascent_step=0.5), "ascent_step is for optimizer 'msam'"),
                    (dict(optimizer="msam", ascent_step=0.0), "ascent_step must be in (0.0, inf]"),
                    (dict(optimizer="msam", ascent_step=float("nan")), "ascent_step must be a finite number")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            CifarConfig(**kw)


# ---------------------------------------------------------------------------------------------------------------
# Rand-SAM: coefficient space samples the projections and the norm of z exactly in distribution
# ---------------------------------------------------------------------------------------------------------------
def randsam_samples(ens, batch, N):
    xs, norms = [], []
    for step in range(N):
        u, zb, znorm = ens.randsam_parts(batch, step)
        xs.append((u[0, 0, 0] / znorm[0]).clone())
        norms.append(float(znorm[0]))
    return torch.stack(xs), np.asarray(norms)


@pytest.mark.parametrize("model,d,batch_size", [("c23", 40, 4), ("kou2023", 40, 12), ("c23", 8, 12)])
@pytest.mark.slow
def test_randsam_coefficient_sampling_matches_weight_space_in_distribution(model, d, batch_size):
    """Per filter, x = <z, basis_c> / ||z|| has mean 0 and covariance G_b / D, and ||z|| is chi with D = 2 m d
    (+ 2m biases) degrees of freedom, in both representations; d = 8 < 1 + BK = 13 is the rank-deficient case."""
    cfg = model_base(model, optimizer="randsam", d=d, batch_size=batch_size, seed=7)
    coef, dense = Ensemble([cfg]), WeightEnsemble([cfg])
    bc, bw = select_batch(coef, 0, 0), select_batch(dense, 0, 0)
    assert torch.allclose(bc.gram, bw.basis @ bw.basis.mT, atol=1e-12)
    N = 3000
    D = 2 * cfg.m * d + (2 * cfg.m if model == "kou2023" else 0)
    sigma = (bc.gram[0] / D).numpy()
    se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma ** 2) / N)   # of a covariance estimate
    mean_chi = math.sqrt(2) * math.exp(math.lgamma((D + 1) / 2) - math.lgamma(D / 2))
    stats = {}
    for name, ens, batch in (("coefficients", coef, bc), ("weights", dense, bw)):
        x, norms = randsam_samples(ens, batch, N)
        x = x.numpy()
        mean, cov = x.mean(0), np.cov(x.T)
        assert np.all(np.abs(mean) <= 5 * np.sqrt(np.diag(sigma) / N)), name
        assert np.all(np.abs(cov - sigma) <= 5 * se), (name, np.abs((cov - sigma) / se).max())
        assert abs(norms.mean() - mean_chi) <= 5 * math.sqrt((D - mean_chi ** 2) / N), name
        sq = norms ** 2
        assert abs(sq.mean() - D) <= 5 * math.sqrt(2 * D / N), name
        assert abs(sq.var() - 2 * D) <= 5 * 2 * D * math.sqrt((2 + 12 / D) / N), name
        stats[name] = cov
    assert np.all(np.abs(stats["coefficients"] - stats["weights"]) <= 5 * math.sqrt(2) * se)


def test_randsam_test_error_agrees_between_representations():
    """64 seeds of a short Rand-SAM run: the mean test error agrees within sampling error (z-test)."""
    cfgs = [BASE.replace(optimizer="randsam", tau=2.0, seed=s, epochs=4, sigma_0=0.01, n_mc=500) for s in range(64)]
    a = train_ensemble(cfgs, progress=False, log=False, state="coefficients").summary.test_error
    b = train_ensemble(cfgs, progress=False, log=False, state="weights").summary.test_error
    sgd = train_ensemble([c.replace(optimizer="sgd") for c in cfgs], progress=False, log=False).summary.test_error
    z = (a.mean() - b.mean()) / math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(z) < 4, z
    assert not np.allclose(a, sgd)  # the perturbation matters


def test_randsam_same_seed_same_numbers_whatever_the_ensemble():
    c = BASE.replace(optimizer="randsam", seed=5)
    alone = train_ensemble([c], progress=False)
    mixed = train_ensemble([BASE.replace(seed=1), c, BASE.replace(optimizer="randsam", seed=9),
                            BASE.replace(optimizer="sam", seed=2)], progress=False)
    assert torch.allclose(mixed.params.W[1], alone.params.W[0], rtol=0, atol=1e-12)
    traj = mixed.trajectory[mixed.trajectory.run == 1].drop(columns="run").reset_index(drop=True)
    pd.testing.assert_frame_equal(traj, alone.trajectory.drop(columns="run"), rtol=0, atol=1e-12)
    again = train_ensemble([c], progress=False)
    assert torch.equal(again.params.W, alone.params.W)
    other = train_ensemble([c.replace(seed=6)], progress=False)
    assert not torch.allclose(other.params.W, alone.params.W)


# ---------------------------------------------------------------------------------------------------------------
# One API, two representations: the tables
# ---------------------------------------------------------------------------------------------------------------
def mixed_family(base):
    return [base.replace(seed=1), base.replace(seed=2, optimizer="sam"),
            base.replace(seed=3, optimizer="usam", tau=0.4),
            base.replace(seed=4, optimizer="msam", ascent_steps=3, sam_steps=5),
            base.replace(seed=5, optimizer="sam", m_sharpness=2), base.replace(seed=6, optimizer="randsam")]


@pytest.mark.parametrize("case", ["asam", "sam_inf", "small_d"])
def test_automatic_switch_to_weight_space_gives_the_forced_tables(case):
    if case == "small_d":
        cfgs = mixed_family(BASE.replace(d=10))          # 1 + n K = 13 > d
    else:
        cfgs = [BASE.replace(seed=1), BASE.replace(seed=2, optimizer="sam"),
                BASE.replace(seed=3, **SPAN_LEAVING[case])]
    auto = train_ensemble(cfgs, progress=False)
    forced = train_ensemble(cfgs, progress=False, state="weights")
    assert auto.state == forced.state == "weights"
    pd.testing.assert_frame_equal(auto.summary, forced.summary, check_exact=True)
    pd.testing.assert_frame_equal(auto.trajectory, forced.trajectory, check_exact=True)
    assert (auto.summary.reconstruction_error <= 1e-12).all()   # W stays in W0 + span: only eps leaves it
    if case != "small_d":
        with pytest.raises(ConfigError, match="state must be 'weights'"):
            train_ensemble(cfgs, progress=False, state="coefficients")


@pytest.mark.parametrize("model", MODELS)
def test_forcing_weight_space_gives_the_coefficient_tables(model):
    cfgs = mixed_family(model_base(model))[:5]   # Rand-SAM's draws differ between the representations
    coef = train_ensemble(cfgs, progress=False)
    dense = train_ensemble(cfgs, progress=False, state="weights")
    assert coef.state == "coefficients" and dense.state == "weights"
    assert list(coef.summary.columns) == list(dense.summary.columns)
    assert list(coef.trajectory.columns) == list(dense.trajectory.columns)
    for table in ("summary", "trajectory"):
        a, b = getattr(coef, table), getattr(dense, table)
        for col in a.columns:
            if pd.api.types.is_float_dtype(a[col]) and col != "reconstruction_error":
                scale = max(float(np.nanmax(np.abs(a[col]))), 1e-300) if a[col].notna().any() else 1.0
                assert np.allclose(a[col], b[col], rtol=1e-10, atol=1e-10 * scale, equal_nan=True), (table, col)
            elif col != "reconstruction_error":
                assert a[col].equals(b[col]), (table, col)
    assert (dense.summary.reconstruction_error <= 1e-12).all()


def test_sgd_and_sam_ensembles_stay_in_coefficient_space():
    assert make_ensemble([BASE, BASE.replace(optimizer="sam")]).state == "coefficients"
    assert make_ensemble([BASE.replace(optimizer="asam")]).state == "weights"
    assert make_ensemble([BASE.replace(d=12)]).state == "weights"            # 1 + n K = 13 > 12
    assert make_ensemble([BASE.replace(d=13)]).state == "coefficients"
    with pytest.raises(ConfigError, match="state must be one of"):
        make_ensemble([BASE], state="dense")


# ---------------------------------------------------------------------------------------------------------------
# Invariants and divergence
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["coefficients", "weights"])
def test_rho_invariants_hold_for_every_rule(state):
    base = BASE.replace(epochs=8, log_every=1)
    cfgs = mixed_family(base)
    if state == "weights":
        cfgs += [base.replace(seed=7, **SPAN_LEAVING["asam"]), base.replace(seed=8, **SPAN_LEAVING["sam_inf"])]
    res = train_ensemble(cfgs, progress=False, state=state)
    assert (res.trajectory.rho_monotone_violations == 0).all()
    assert (res.trajectory.rhobar_min >= 0).all() and (res.trajectory.rhounder_max <= 0).all()
    assert not res.summary.diverged.any()


@pytest.mark.parametrize("state", ["coefficients", "weights"])
def test_divergent_family_run_is_flagged_and_the_others_unaffected(state):
    good = BASE.replace(seed=1, optimizer="msam", ascent_steps=3)
    bad = BASE.replace(seed=2, optimizer="sam", m_sharpness=2, eta=1e306, sigma_p=100.0)
    res = train_ensemble([good, bad], progress=False, state=state)
    alone = train_ensemble([good], progress=False, state=state)
    assert list(res.summary.diverged) == [False, True]
    assert np.isnan(res.summary.test_error[1])
    assert torch.allclose(res.params.W[0], alone.params.W[0], rtol=0, atol=1e-12)
    assert torch.isfinite(res.params.W).all()


@pytest.mark.parametrize("state", ["coefficients", "weights"])
def test_per_run_rule_options_in_one_ensemble_equal_separate_runs(state):
    """optimizer, ascent_steps and m_sharpness differ from run to run; runs sharing a seed share a data set (one
    matmul), and each run still gets its own numbers."""
    cfgs = [BASE.replace(seed=s, mu_norm=mu, **o) for s in (1, 2) for mu, o in zip(
        (1.0, 1.2, 1.4, 1.6, 1.8, 2.0), (dict(), dict(optimizer="msam", ascent_steps=2),
                                         dict(optimizer="msam", ascent_steps=3, m_sharpness=2),
                                         dict(optimizer="sam", m_sharpness=1), dict(optimizer="usam", tau=0.3),
                                         dict(optimizer="randsam")))]
    ens = train_ensemble(cfgs, progress=False, state=state)
    assert ens.data.G == 6
    for r, c in enumerate(cfgs):
        one = train_ensemble([c], progress=False, log=False, state=state)
        assert torch.allclose(ens.params.W[r], one.params.W[0], rtol=0, atol=1e-12), c
        assert abs(ens.summary.test_error[r] - one.summary.test_error[0]) <= 1e-12


def test_msam_with_one_step_is_sam_and_zero_radius_is_sgd():
    sam = train_ensemble([BASE.replace(optimizer="sam", seed=3)], progress=False, log=False)
    k1 = train_ensemble([BASE.replace(optimizer="msam", ascent_steps=1, seed=3)], progress=False, log=False)
    assert torch.equal(sam.params.W, k1.params.W)
    sgd = train_ensemble([BASE.replace(seed=3)], progress=False, log=False)
    for overrides in (dict(optimizer="usam", tau=0.0), dict(optimizer="randsam", sam_steps=0),
                      dict(optimizer="msam", c_tau=0.0)):
        zero = train_ensemble([BASE.replace(seed=3, **overrides)], progress=False, log=False)
        assert torch.equal(zero.params.W, sgd.params.W), overrides


# ---------------------------------------------------------------------------------------------------------------
# Configuration and CLI
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,msg", [
    (dict(ascent_steps=0), "ascent_steps must be in [1, 100]"), (dict(m_sharpness=-1), "m_sharpness must be in"),
    (dict(m_sharpness=3), "m_sharpness must be 0 (the whole batch) or divide batch_size=4"),
    (dict(m_sharpness=8), "m_sharpness must be in [0, 4]"), (dict(norm="1"), "norm must be one of"),
    (dict(asam_eta=-0.1), "asam_eta must be in [0.0, inf]"), (dict(optimizer="lookahead"), "optimizer must be"),
    (dict(ascent_step=0.0), "ascent_step must be in (0.0, inf]"),
    (dict(ascent_step=float("inf")), "ascent_step must be a finite number"),
])
def test_new_fields_are_validated(overrides, msg):
    with pytest.raises(ConfigError) as exc:
        BASE.replace(**overrides)
    assert msg in str(exc.value)


def test_rule_and_chunks_of_a_config():
    assert BASE.rule is None and BASE.replace(optimizer="sam", norm="inf").rule == "sam_inf"
    assert BASE.replace(optimizer="asam").rule == "asam"
    assert BASE.replace(optimizer="usam", m_sharpness=2).chunk_size == 2
    assert BASE.replace(optimizer="randsam", m_sharpness=2).chunk_size == 4   # does not apply: ignored


@pytest.mark.slow
def test_simulate_runs_every_rule_and_refuses_options_that_do_not_apply(tmp_path, capsys):
    tiny = ["--d", "30", "--n", "8", "--batch-size", "4", "--epochs", "2", "--seeds", "2", "--n-mc", "200",
            "--n-test", "0", "--no-progress"]
    for i, extra in enumerate([["--optimizer", "msam", "--ascent-steps", "3", "--m-sharpness", "2"],
                               ["--optimizer", "sam", "--norm", "inf", "--tau", "0.01", "--m-sharpness", "2"]]):
        out = tmp_path / f"run{i}"
        assert main(["simulate", *tiny, *extra, "--out", str(out)]) == 0
        s = pd.read_parquet(out / "summary.parquet")
        assert s.optimizer[0] == extra[1] and not s.diverged.any()
    capsys.readouterr()
    for extra, msg in [(["--optimizer", "sam", "--ascent-steps", "3"], "ascent_steps only applies to --optimizer msam"),
                       (["--optimizer", "randsam", "--m-sharpness", "2"], "m_sharpness only applies"),
                       (["--optimizer", "usam", "--norm", "inf"], "norm only applies to --optimizer sam"),
                       (["--optimizer", "sam", "--asam-eta", "0.5"], "asam_eta only applies"),
                       (["--optimizer", "sam", "--ascent-step", "0.5"], "ascent_step only applies to --optimizer msam"),
                       (["--optimizer", "msam", "--ascent-step", "-1"], "ascent_step must be in (0.0, inf]"),
                       (["--sam-steps", "3"], "sam_steps only applies"),
                       (["--optimizer", "msam", "--ascent-steps", "0"], "ascent_steps must"),
                       (["--optimizer", "sam", "--m-sharpness", "3"], "m_sharpness must")]:
        assert main(["simulate", *tiny, *extra, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()
    # a default value means "no effect" and is accepted, like --sam-steps none for sgd
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--optimizer", "asam", "--norm", "2", "--ascent-steps", "2",
                                              "--asam-eta", "0.2", "--sam-steps", "4"]))
    assert (cfg.optimizer, cfg.asam_eta, cfg.sam_steps, cfg.rule) == ("asam", 0.2, 4, "asam")
