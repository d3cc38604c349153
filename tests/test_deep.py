"""The deep patch-wise CNN (theory_sim.cnn.deep, docs/science.md §2.5) and the memorisation margins
(theory_sim.cnn.memorization, §6.7), float64: depth 2 is the c23 network, every rule's weight-space step equals
autograd on the plain definition, coefficient space equals weight space, the first layer rebuilt from gamma/rho,
Rand-SAM's norm over all parameters, the Gaussian test error against held-out points, sweeps over depth."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from theory_sim.cnn.deep import DeepCNN, network_for
from theory_sim.cnn.ensemble import Ensemble, WeightEnsemble
from theory_sim.cnn.memorization import memorization_summaries
from theory_sim.cnn.model import Params
from theory_sim.cnn.randsam import randsam_generator
from theory_sim.cnn.rules import update_gradient
from theory_sim.cnn.train import apply_step, select_batch, train_ensemble
from theory_sim.config import ConfigError, SimConfig

BASE = SimConfig(model="deep", depth=3, width=5, d=40, n=12, batch_size=4, epochs=3, m=4, P=3, mu_norm=1.5,
                 sigma_p=1.0, flip_p=0.3, eta=0.5, sigma_0=0.3, n_test=0, n_mc=200, log_every=3, trajectory_mc=200)
RULES = {"sgd": dict(), "sam": dict(optimizer="sam"), "usam": dict(optimizer="usam", tau=0.4),
         "msam_k3": dict(optimizer="msam", ascent_steps=3), "sam_m2": dict(optimizer="sam", m_sharpness=2),
         "randsam": dict(optimizer="randsam"), "asam": dict(optimizer="asam", tau=0.3),
         "sam_inf": dict(optimizer="sam", norm="inf", tau=0.02)}
DETERMINISTIC = ("sgd", "sam", "usam", "msam_k3", "sam_m2")


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------------------------
# depth 2 is today's c23 network
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["sgd", "sam", "msam_k3", "randsam", "asam", "usam"])
def test_depth_two_equals_the_c23_network(rule):
    c23 = [BASE.replace(model="c23", seed=s, **RULES[rule]) for s in (1, 2)]
    deep = [c.replace(model="deep", depth=2, width=7) for c in c23]   # width is unused at depth 2
    a, b = (train_ensemble(cs, progress=False) for cs in (c23, deep))
    assert b.params.b is None
    assert rel(b.params.W, a.params.W) <= 1e-12
    cols = ["train_loss", "test_error", "gamma_mean", "rhobar_mean", "margin_noise_flipped", "flipped_fit_frac"]
    np.testing.assert_allclose(b.trajectory[cols].to_numpy(), a.trajectory[cols].to_numpy(), rtol=1e-10, atol=1e-13)
    # the same check must fail for a network that differs: depth 3
    c = train_ensemble([x.replace(depth=3) for x in deep], progress=False)
    assert rel(c.params.W, a.params.W) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# the weight-space step equals autograd on the plain definition (full patches x, nothing of the trainer's)
# ---------------------------------------------------------------------------------------------------------------
def plain_forward(cfg, W, V, x):
    """f on x (n, P, d) by the definition of docs/science.md §2.5, written out layer by layer."""
    h = torch.einsum("jmd,npd->npjm", W, x)
    off, fan_in = 0, cfg.m
    for _ in range(cfg.depth - 2):
        Vl = V[:, off:off + cfg.width * fan_in].reshape(2, cfg.width, fan_in)
        h = torch.einsum("jom,npjm->npjo", Vl, torch.relu(h))
        off, fan_in = off + cfg.width * fan_in, cfg.width
    Fj = torch.relu(h).sum(dim=(1, 3)) / h.shape[-1]
    return Fj[:, 0] - Fj[:, 1]


def plain_grad(cfg, x, y, params):
    ts = [p.clone().requires_grad_(True) for p in params]
    return list(torch.autograd.grad(F.softplus(-y * plain_forward(cfg, *ts, x)).mean(), ts))


def norm(ts):
    return torch.sqrt(sum((t ** 2).sum() for t in ts))


def oracle_update(cfg, x, y, params, step, asam_hidden_adaptive=True):
    tau = cfg.sam_radius
    g = plain_grad(cfg, x, y, params)
    if cfg.rule is None:
        return [-cfg.eta * t for t in g]
    if cfg.rule == "randsam":   # the weight-space path's draws: filters, then hidden weights, from the run's generator
        gen = randsam_generator(cfg.rng_seed)
        for _ in range(step + 1):
            eps = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        eps = [tau * e / norm(eps) for e in eps]
    elif cfg.rule == "sam" and cfg.m_sharpness:
        M, total = cfg.m_sharpness, None
        for c in range(0, len(y), M):
            gc = plain_grad(cfg, x[c:c + M], y[c:c + M], params)
            gp = plain_grad(cfg, x[c:c + M], y[c:c + M], [p + tau * t / norm(gc) for p, t in zip(params, gc)])
            total = gp if total is None else [a + b for a, b in zip(total, gp)]
        return [-cfg.eta * t * M / len(y) for t in total]
    elif cfg.rule == "sam":
        eps = [tau * t / norm(g) for t in g]
    elif cfg.rule == "usam":
        eps = [tau * t for t in g]
    elif cfg.rule == "sam_inf":
        eps = [tau * torch.sign(t) for t in g]
    elif cfg.rule == "asam":
        T = [params[0].abs() + cfg.asam_eta,
             params[1].abs() + cfg.asam_eta if asam_hidden_adaptive else torch.ones_like(params[1])]
        tg = [a * b for a, b in zip(T, g)]
        eps = [tau * a * b / norm(tg) for a, b in zip(T, tg)]
    elif cfg.rule == "msam":
        eps = [tau * t / norm(g) for t in g]
        for _ in range(cfg.ascent_steps - 1):
            gi = plain_grad(cfg, x, y, [p + e for p, e in zip(params, eps)])
            eps = [e + tau * t / norm(gi) for e, t in zip(eps, gi)]
            if norm(eps) > tau:
                eps = [e * tau / norm(eps) for e in eps]
    return [-cfg.eta * t for t in plain_grad(cfg, x, y, [p + e for p, e in zip(params, eps)])]


@pytest.mark.parametrize("depth", [3, 4])
@pytest.mark.parametrize("rule", list(RULES))
def test_weight_space_step_equals_autograd_on_the_plain_definition(rule, depth):
    cfgs = [BASE.replace(depth=depth, seed=s, **RULES[rule]) for s in (1, 2)]
    ens = WeightEnsemble(cfgs)
    assert ens.b.shape == (2, 2, 5 * 4 + (depth - 3) * 25)
    for step in range(4):
        epoch, i = divmod(step, ens.n // ens.B)
        batch = select_batch(ens, epoch, i)
        before = [ens.W.clone(), ens.b.clone()]
        expected = []
        for r, c in enumerate(cfgs):
            idx = ens.perms[r // ens.G, epoch, i * ens.B:(i + 1) * ens.B]
            expected.append(oracle_update(c, ens.data.patches()[r, idx], ens.data.y[r, idx],
                                          [before[0][r], before[1][r]], step))
        grad, finite = update_gradient(ens, batch, step)
        apply_step(ens, batch, grad, finite)
        for r in range(len(cfgs)):
            assert rel(ens.W[r] - before[0][r], expected[r][0]) <= 1e-10, (rule, step, r)
            assert rel(ens.b[r] - before[1][r], expected[r][1]) <= 1e-10, (rule, step, r)
    assert float((ens.b - ens.init.b).abs().max()) > 1e-3   # the hidden weights moved


def test_asam_oracle_with_fixed_hidden_scale_differs():
    """The pairing check of the ASAM case: scaling the hidden weights by 1 (as ASAM treats biases) is a different
    step, so the test above can tell."""
    cfg = BASE.replace(optimizer="asam", tau=0.3, seed=1)
    ens = WeightEnsemble([cfg])
    batch = select_batch(ens, 0, 0)
    idx = ens.perms[0, 0, :ens.B]
    x, y, params = ens.data.patches()[0, idx], ens.data.y[0, idx], [ens.W[0].clone(), ens.b[0].clone()]
    wrong = oracle_update(cfg, x, y, params, 0, asam_hidden_adaptive=False)
    grad, finite = update_gradient(ens, batch, 0)
    apply_step(ens, batch, grad, finite)
    assert rel(ens.b[0] - params[1], wrong[1]) > 1e-3


@pytest.mark.parametrize("rule", DETERMINISTIC)
def test_coefficient_step_equals_weight_step(rule):
    cfgs = [BASE.replace(depth=4, seed=s, **RULES[rule]) for s in (1, 2)] + [BASE.replace(depth=4, seed=3)]
    coef, dense = Ensemble(cfgs), WeightEnsemble(cfgs)
    for step in range(6):
        epoch, i = divmod(step, coef.n // coef.B)
        bc, bw = select_batch(coef, epoch, i), select_batch(dense, epoch, i)
        gc, fc = update_gradient(coef, bc, step)
        gw, fw = update_gradient(dense, bw, step)
        assert rel(gw.coefs, gc.coefs) <= 1e-10 and rel(gw.db, gc.db) <= 1e-10
        apply_step(coef, bc, gc, fc)
        apply_step(dense, bw, gw, fw)
    assert rel(dense.weights().W, coef.weights().W) <= 1e-10
    assert rel(dense.b, coef.b) <= 1e-10


def test_first_layer_rebuilt_from_gamma_rho_and_same_seed_same_numbers():
    cfgs = [BASE.replace(depth=3, seed=s, optimizer=o) for s in (1, 2) for o in ("sgd", "sam")]
    res = train_ensemble(cfgs, progress=False)
    assert (res.summary.reconstruction_error <= 1e-10).all()
    alone = train_ensemble(cfgs[3:], progress=False)
    assert rel(alone.params.W[0], res.params.W[3]) <= 1e-12 and rel(alone.params.b[0], res.params.b[3]) <= 1e-12


def test_randsam_norm_covers_the_hidden_weights():
    """Coefficient space: ||z||^2 is chi^2 with D = 2 m d + 2 H degrees of freedom (filters and hidden weights)."""
    cfg = BASE.replace(optimizer="randsam", seed=7)
    ens = Ensemble([cfg])
    batch = select_batch(ens, 0, 0)
    N = 2000
    sq = np.array([float(ens.randsam_parts(batch, s)[2][0]) ** 2 for s in range(N)])
    D = 2 * cfg.m * cfg.d + 2 * ens.b.shape[-1]
    assert abs(sq.mean() - D) <= 5 * math.sqrt(2 * D / N)
    assert abs(sq.mean() - 2 * cfg.m * cfg.d) > 10 * math.sqrt(2 * D / N)   # the filters' part alone is refuted


def test_gaussian_test_error_agrees_with_heldout_points():
    cfgs = [BASE.replace(depth=3, seed=s, n_mc=4000, n_test=4000, epochs=6, sigma_0=0.05) for s in range(4)]
    s = train_ensemble(cfgs, progress=False, log=False).summary
    se = np.sqrt(s.test_error * (1 - s.test_error) / 4000 + s.test_error_se ** 2)
    assert (np.abs(s.test_error - s.test_error_heldout) <= 5 * se).all()
    assert (s.test_error < 0.45).any()   # not a trivial agreement at chance


def test_init_and_validation():
    net = network_for(BASE.replace(depth=4, width=3))
    assert isinstance(net, DeepCNN) and net.n_hidden == 3 * 4 + 3 * 3
    V = net.init([0, 1], [0.1, 0.1], 40).b
    assert V.shape == (2, 2, 21)
    # He init: entries of V_1 have variance 2/m
    big = network_for(BASE.replace(depth=3, width=200, m=50)).init([0], [0.1], 10).b
    assert abs(float(big.var()) - 2 / 50) < 0.003
    for kw, msg in ((dict(depth=1), "depth"), (dict(depth=9), "depth"), (dict(width=0), "width")):
        with pytest.raises(ConfigError, match=msg):
            BASE.replace(**kw)


# ---------------------------------------------------------------------------------------------------------------
# memorisation margins
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["c23", "kou2023", "deep"])
def test_signal_and_noise_margins_add_up_to_the_output(model):
    cfg = BASE.replace(model=model, project_noise=model != "kou2023", seed=3)
    ens = Ensemble([cfg])
    sig, z = ens.preactivations(ens.projections(), ens.b, ens.data.yhat)
    fs, fn = ens.net.output_parts(sig, z, ens.mult, ens.b)
    f = ens.net.output_patches(ens.weights(), ens.data.patches())
    assert rel(fs + fn, f) <= 1e-12
    # the signal part is f on inputs whose noise patches are zeroed out (no bias: a zero patch gives 0)
    if model != "kou2023":
        x = ens.data.patches()
        keep = (torch.arange(cfg.P)[None, None, :] == ens.data.pos[..., None]).to(x.dtype)[..., None]   # (1, n, P, 1)
        assert rel(ens.net.output_patches(ens.weights(), x * keep), fs) <= 1e-12
        assert rel(ens.net.output_patches(ens.weights(), x * (1 - keep)), fn) <= 1e-12
    m = memorization_summaries(ens.net, sig, z, ens.mult, ens.b, ens.data.y, ens.data.clean)
    fitted = (ens.data.y * f > 0)[0]
    clean = ens.data.clean[0]
    assert float(m["flipped_fit_frac"][0]) == pytest.approx(float(fitted[~clean].double().mean()))
    assert float(m["clean_fit_frac"][0]) == pytest.approx(float(fitted[clean].double().mean()))


def test_sgd_memorizes_flipped_labels_and_the_columns_are_logged():
    """A harmful-overfitting cell (large d, small ||mu||): SGD fits the flipped labels through noise."""
    cfg = SimConfig(model="deep", depth=3, d=2000, mu_norm=0.5, n=20, epochs=60, n_test=0, n_mc=500,
                    trajectory_mc=0, log_points=8, sigma_0=0.001, flip_p=0.3)
    res = train_ensemble([cfg.replace(seed=s) for s in range(2)], progress=False)
    s, t = res.summary, res.trajectory
    assert (res.data.y != res.data.yhat).any(1).all()   # every run has flipped labels
    assert (s.flipped_fit_frac == 1).all() and (s.margin_noise_flipped > -s.margin_signal_flipped).all()
    assert {"margin_noise_clean", "noise_dominated_frac"} <= set(t.columns)
    assert (t.groupby("run").step.min() == 0).all()


def test_sweep_spec_takes_depth_and_width_axes():
    from theory_sim.sweeps.spec import SweepSpec

    spec = SweepSpec.from_dict({"name": "t", "preset": "c23", "seeds": 2, "base": {"model": "deep", "n": 4,
                                "batch_size": 4, "epochs": 2}, "grid": {"mu_norm": {"values": [1.0, 2.0]}, "d": {"values": [40]},
                                "depth": {"values": [2, 3]}, "width": {"values": [4]}},
                                "optimizers": [{"label": "sgd", "optimizer": "sgd"}]})
    chunks = spec.chunks()
    for chunk in chunks:   # an ensemble shares its shapes: one depth per chunk
        assert len({c.depth for _, c in chunk}) == 1
    assert sorted({c.depth for ch in chunks for _, c in ch}) == [2, 3]
    assert "depth" in spec.run_key
