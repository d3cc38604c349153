"""Sharpness toolkit against the dense Hessian on small float64 models, and the R_* notions against their formulas.

Models have a few hundred parameters, so ``torch.autograd.functional.hessian`` of the flattened loss is the ground
truth. Every stochastic check is seeded (deterministic) and uses a 3-standard-error band.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian
from torch.utils.data import DataLoader, TensorDataset

from theory_sim.config import ConfigError
from theory_sim.sharpness import (
    HVP_METHODS,
    Objective,
    flatten,
    grad_top_eigvec_cosine,
    hutchinson_trace,
    r_asc,
    r_avg,
    r_max,
    slq_density,
    top_eigenvalues,
)

DT = torch.float64




# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------
def mlp_problem(n=40):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).to(DT)
    x = torch.randn(n, 5, dtype=DT, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


class TinyBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = torch.tanh(self.bn1(self.conv1(x)))
        x = torch.tanh(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.flatten(1)))


def bn_problem():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = TinyBNNet().to(DT)
    x = torch.randn(12, 2, 6, 6, dtype=DT, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    # non-trivial running statistics, so that eval mode differs from train mode
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(2.0 * x + 1.0)
    model.eval()
    return model, x, y


def objective(kind: str) -> Objective:
    if kind == "mlp":
        model, x, y = mlp_problem()
        return Objective.from_module(model, F.cross_entropy, (x, y), train_mode=False)
    model, x, y = bn_problem()
    return Objective.from_module(model, F.cross_entropy, (x, y), train_mode=(kind == "bn_train"))


KINDS = ["mlp", "bn_train", "bn_eval"]
_dense_cache: dict = {}


def dense_hessian(kind: str) -> torch.Tensor:
    if kind not in _dense_cache:
        obj = objective(kind)
        _dense_cache[kind] = hessian(lambda w: obj(obj.unflatten(w)), flatten(obj.params))
    return _dense_cache[kind]


def quadratic(eigs, seed=0):
    """L(x) = x^T A x / 2 with A = Q diag(eigs) Q^T, a random rotation; returns (objective at 0, A, Q)."""
    g = torch.Generator().manual_seed(seed)
    D = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(D, D, dtype=DT, generator=g))
    A = Q @ torch.diag(torch.tensor(eigs, dtype=DT)) @ Q.T
    obj = Objective.from_function(lambda ps: 0.5 * ps[0] @ A @ ps[0], [torch.zeros(D, dtype=DT)])
    return obj, A, Q


# ----------------------------------------------------------------------------------------------------------------
# Hessian tools vs the dense Hessian
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", HVP_METHODS)
def test_hvp_equals_dense(kind, method):
    obj, H = objective(kind), dense_hessian(kind)
    v = torch.randn(obj.dim, dtype=DT, generator=torch.Generator().manual_seed(3))
    hv = obj.hvp(v, method=method)
    assert torch.allclose(hv, H @ v, rtol=0, atol=1e-12 * float(H.abs().max()) * math.sqrt(obj.dim))
    hv_list = obj.hvp(obj.unflatten(v), method=method)  # list in -> list out
    assert torch.equal(flatten(hv_list), hv)
    if method == "double_backward":  # a stored first-order graph gives the same products, repeatedly
        with obj.cached_graph():
            for _ in range(2):
                assert torch.allclose(obj.hvp(v), hv, rtol=0, atol=1e-15 * float(hv.abs().max()))


def test_dense_hessians_differ_between_bn_modes():
    # guards the BN tests below: train and eval mode really are different functions of the weights
    assert not torch.allclose(dense_hessian("bn_train"), dense_hessian("bn_eval"), atol=1e-6)
    assert abs(float(objective("bn_train").loss() - objective("bn_eval").loss())) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["lanczos", pytest.param("power", marks=pytest.mark.slow)])
def test_top_eigenvalues_match_dense(kind, method):
    obj, H = objective(kind), dense_hessian(kind)
    evals, evecs = torch.linalg.eigh(H)
    k = 3
    res = top_eigenvalues(obj, k, method=method)
    expected = evals.flip(0)[:k]
    assert evals[0] < 0  # indefinite Hessians: "top" must mean largest algebraic, not largest magnitude
    assert torch.all((res.values - expected).abs() <= 1e-6 * expected.abs())
    # eigenvectors: unit norm, H v = lambda v
    assert torch.allclose(res.vectors.norm(dim=1), torch.ones(k, dtype=DT))
    for lam, v in zip(res.values, res.vectors):
        assert float((H @ v - lam * v).norm()) <= 1e-4 * float(expected.abs().max())


def test_largest_magnitude_option():
    obj, H = objective("mlp"), dense_hessian("mlp")
    evals = torch.linalg.eigvalsh(H)
    expected = evals[torch.argsort(evals.abs(), descending=True)][:4]
    for method in ("lanczos", "power"):
        got = top_eigenvalues(obj, 4, method=method, which="LM").values
        assert torch.allclose(got, expected, rtol=1e-6, atol=0)
    # the most negative eigenvalue dominates in magnitude: power iteration must switch to the shifted operator
    quad, _, _ = quadratic([3.0, -5.0, 2.0, 1.0, -0.5, 0.1, -2.5])
    for method in ("lanczos", "power"):
        assert torch.allclose(top_eigenvalues(quad, 3, method=method).values,
                              torch.tensor([3.0, 2.0, 1.0], dtype=DT), rtol=1e-8)
        assert torch.allclose(top_eigenvalues(quad, 2, method=method, which="LM").values,
                              torch.tensor([-5.0, 3.0], dtype=DT), rtol=1e-8)


def test_lanczos_repeated_eigenvalues_and_list_output():
    # eigenvalue 3 with multiplicity 2: one Krylov space sees it once; the restart on breakdown finds both copies
    obj, A, Q = quadratic([3.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    res = top_eigenvalues(obj, 3, as_list=True)
    assert torch.allclose(res.values, torch.tensor([3.0, 3.0, 2.0], dtype=DT), rtol=1e-10)
    assert isinstance(res.vectors[0], list) and res.vectors[0][0].shape == (6,)


@pytest.mark.parametrize("kind", ["mlp", "bn_train"])
def test_hutchinson_trace_within_3_se(kind):
    obj, H = objective(kind), dense_hessian(kind)
    est = hutchinson_trace(obj, 300, seed=5)
    assert est.stderr > 0 and est.n == 300
    assert abs(est.value - float(H.trace())) <= 3 * est.stderr
    lo, hi = est.ci(0.99)
    assert lo < est.value < hi


@pytest.mark.slow
def test_slq_density_normalised_and_mean_is_trace_over_d():
    obj, H = objective("mlp"), dense_hessian("mlp")
    dens = slq_density(obj, n_probes=20, n_steps=60, seed=2)
    assert abs(float(torch.trapezoid(dens.density, dens.grid)) - 1.0) < 1e-6
    assert torch.allclose(dens.weights.sum(dim=1), torch.ones(20, dtype=DT))
    # the mean of the smoothed density equals the quadrature mean (a Gaussian kernel keeps the mean) ...
    mean_grid = float(torch.trapezoid(dens.grid * dens.density, dens.grid))
    assert abs(mean_grid - dens.moment(1)) < 1e-8
    # ... which is the average of q^T H q over the unit probes: Tr(H)/D within 3 standard errors
    per_probe = (dens.weights * dens.nodes).sum(dim=1)
    se = float(per_probe.std()) / math.sqrt(20)
    assert abs(dens.moment(1) - float(H.trace()) / obj.dim) <= 3 * se
    # the spectrum lies within [lambda_min, lambda_max]
    evals = torch.linalg.eigvalsh(H)
    assert float(dens.nodes.min()) >= float(evals[0]) - 1e-8 and float(dens.nodes.max()) <= float(evals[-1]) + 1e-8


def test_slq_full_lanczos_recovers_spectrum():
    eigs = [5.0, 4.0, 2.5, 1.0, 0.2]
    obj, _, _ = quadratic(eigs)
    dens = slq_density(obj, n_probes=3, n_steps=50, sigma=0.01, grid=torch.linspace(-1, 6, 7001, dtype=DT))
    assert dens.nodes.shape == (3, 5)  # at most D steps
    assert torch.allclose(dens.nodes.sort(dim=1).values, torch.tensor(eigs, dtype=DT).sort().values.expand(3, 5),
                          atol=1e-10)
    # second moment of an exact quadrature is q^T A^2 q; its average estimates Tr(A^2)/D
    assert dens.moment(2) > 0 and abs(float(torch.trapezoid(dens.density, dens.grid)) - 1) < 1e-6


def test_grad_top_eigvec_cosine_matches_dense():
    obj, H = objective("mlp"), dense_hessian("mlp")
    v1 = torch.linalg.eigh(H).eigenvectors[:, -1]
    g = flatten(obj.grad())
    expected = float((g @ v1).abs() / g.norm())
    assert abs(grad_top_eigvec_cosine(obj) - expected) < 1e-6
    # on a quadratic at x = v1 + 0.01 v2 the gradient A x is almost along v1
    quad, A, Q = quadratic([4.0, 1.0, 0.5])
    x = Q[:, 0] + 0.01 * Q[:, 1]
    q2 = Objective.from_function(lambda ps: 0.5 * ps[0] @ A @ ps[0], [x])
    expected = 4.0 / math.sqrt(16.0 + 0.01 ** 2)
    assert abs(grad_top_eigvec_cosine(q2) - expected) < 1e-9


def test_parameters_entering_linearly_have_zero_hessian_blocks():
    # p1 enters linearly: its gradient does not depend on the weights, which must not break double backward
    p0, p1 = torch.randn(3, dtype=DT), torch.randn(2, dtype=DT)
    obj = Objective.from_function(lambda ps: (ps[0] ** 2).sum() * 1.5 + ps[1].sum(), [p0, p1])
    v = torch.randn(5, dtype=DT)
    for method in HVP_METHODS:
        assert torch.allclose(obj.hvp(v, method=method), torch.cat([3.0 * v[:3], torch.zeros(2, dtype=DT)]))


# ----------------------------------------------------------------------------------------------------------------
# data handling, BatchNorm
# ----------------------------------------------------------------------------------------------------------------
def test_dataloader_objective_equals_full_batch():
    model, x, y = mlp_problem(n=40)
    full = Objective.from_module(model, F.cross_entropy, (x, y), train_mode=False)
    # 40 = 16 + 16 + 8: unequal batches, so the weighting by batch size matters; shuffling must not matter
    loaders = [DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
               DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)]
    objs = [Objective.from_module(model, F.cross_entropy, loaders[0], train_mode=False),
            Objective.from_module(model, F.cross_entropy, loaders[1], train_mode=False, cache=False)]
    v = torch.randn(full.dim, dtype=DT, generator=torch.Generator().manual_seed(0))
    for obj in objs:
        assert torch.allclose(obj.loss(), full.loss(), rtol=1e-13, atol=0)
        assert torch.allclose(flatten(obj.grad()), flatten(full.grad()), rtol=0, atol=1e-14)
        for method in HVP_METHODS:
            assert torch.allclose(obj.hvp(v, method=method), full.hvp(v, method=method), rtol=0, atol=1e-13)
        assert torch.allclose(top_eigenvalues(obj, 2).values, top_eigenvalues(full, 2).values, rtol=1e-10)
        assert torch.allclose(top_eigenvalues(obj, 2, cache_graph=True).values, top_eigenvalues(full, 2).values,
                              rtol=1e-10)
    with pytest.raises(ConfigError, match="shuffle"):
        Objective.from_module(model, F.cross_entropy, loaders[0], train_mode=False, cache=False)


def test_train_mode_matches_module_forward_and_is_required():
    model, x, y = bn_problem()
    for train_mode in (True, False):
        ref = copy.deepcopy(model)  # a fresh copy: its train-mode forward updates its running stats
        ref.train(train_mode)
        ref.drop.eval()  # the objective never applies dropout
        obj = Objective.from_module(model, F.cross_entropy, (x, y), train_mode=train_mode)
        with torch.no_grad():
            assert torch.allclose(obj.loss(), F.cross_entropy(ref(x), y), rtol=1e-13)
    with pytest.raises(TypeError):
        Objective.from_module(model, F.cross_entropy, (x, y))  # no silent default
    with pytest.raises(ConfigError, match="train_mode"):
        Objective.from_module(model, F.cross_entropy, (x, y), train_mode=1)


@pytest.mark.parametrize("train_mode", [True, False])
def test_bn_running_stats_and_module_untouched(train_mode):
    model, x, y = bn_problem()
    model.train()  # the module's own flag must survive, whatever train_mode the objective uses
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = [m.training for m in model.modules()]
    obj = Objective.from_module(model, F.cross_entropy, (x, y), train_mode=train_mode)
    v = torch.randn(obj.dim, dtype=DT)
    obj.loss(), obj.grad(), obj.hvp(v, method="double_backward"), obj.hvp(v, method="func")
    top_eigenvalues(obj, 2), top_eigenvalues(obj, 1, method="power"), hutchinson_trace(obj, 4)
    top_eigenvalues(obj, 1, cache_graph=True)
    slq_density(obj, 2, 10), grad_top_eigvec_cosine(obj)
    r_asc(obj, 0.1), r_max(obj, 0.1, n_steps=3, n_restarts=1), r_avg(obj, 0.1, 4)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    assert [m.training for m in model.modules()] == flags


# ----------------------------------------------------------------------------------------------------------------
# sharpness notions
# ----------------------------------------------------------------------------------------------------------------
def test_r_asc_is_its_formula():
    obj = objective("mlp")
    model, x, y = mlp_problem()
    rho = 0.07
    ps = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    loss = F.cross_entropy(torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()],
                                                                      ps)), (x,)), y)
    g = torch.autograd.grad(loss, ps)
    gnorm = math.sqrt(sum(float((t ** 2).sum()) for t in g))
    with torch.no_grad():
        for p, gi in zip(model.parameters(), g):
            p.add_(rho * gi / gnorm)
        shifted = F.cross_entropy(model(x), y)
    assert abs(r_asc(obj, rho) - float(shifted - loss.detach())) < 1e-14


@pytest.mark.parametrize("kind", ["mlp", "bn_train"])
def test_r_max_dominates_r_asc_and_r_avg(kind):
    obj = objective(kind)
    for rho in (0.01, 0.1):
        # with no steps and no restarts the only candidate is SAM's point rho g/||g||: R_Asc exactly
        assert r_max(obj, rho, n_steps=0, n_restarts=0) == pytest.approx(r_asc(obj, rho), rel=1e-12)
        rmax = r_max(obj, rho, n_steps=20, n_restarts=2)
        assert rmax >= r_asc(obj, rho)
        avg = r_avg(obj, rho, 64)
        assert rmax >= avg.value + 3 * avg.stderr


@pytest.mark.slow
def test_quadratic_exact_values():
    """At the minimum of L = x^T A x / 2: R_Max = rho^2 lambda_1/2, R_Avg = rho^2 Tr(A)/(2D), R_Asc = 0 (g = 0)."""
    eigs = [2.0, 1.6, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1]
    obj, A, _ = quadratic(eigs)
    D = len(eigs)
    for rho in (1e-3, 0.5, 3.0):  # exact at every radius for a quadratic
        assert abs(r_max(obj, rho, n_steps=200) / (rho ** 2 * eigs[0] / 2) - 1) < 1e-8
        est = r_avg(obj, rho, 4000, seed=1)
        exact = rho ** 2 * sum(eigs) / (2 * D)
        assert abs(est.value - exact) <= 3 * est.stderr
        lo, hi = est.ci(0.999)
        assert lo < exact < hi
        assert r_asc(obj, rho) == 0.0


@pytest.mark.slow
def test_ratios_tend_to_one_near_a_minimum_of_a_non_quadratic_loss():
    """L = x^T A x/2 + (u.x)^3 + |x|^4 has a minimum at 0 with Hessian A: the quadratic limits hold as rho -> 0."""
    eigs = [2.0, 1.5, 1.0, 0.6, 0.4, 0.2]
    quad, A, _ = quadratic(eigs, seed=3)
    u = torch.linspace(-1.0, 1.0, 6, dtype=DT)
    obj = Objective.from_function(lambda ps: 0.5 * ps[0] @ A @ ps[0] + (u @ ps[0]) ** 3 + (ps[0] @ ps[0]) ** 2,
                                  [torch.zeros(6, dtype=DT)])
    lam1 = eigs[0]
    errs_max, errs_avg = [], []
    for rho in (0.3, 0.1, 0.03, 0.01):
        errs_max.append(abs(r_max(obj, rho, n_steps=100) / (rho ** 2 * lam1 / 2) - 1))
        # common random numbers: the same directions for the loss and for its quadratic part
        errs_avg.append(abs(r_avg(obj, rho, 200, seed=4).value / r_avg(quad, rho, 200, seed=4).value - 1))
    assert all(a > b for a, b in zip(errs_max, errs_max[1:])) and errs_max[-1] < 0.02
    assert all(a > b for a, b in zip(errs_avg, errs_avg[1:])) and errs_avg[-1] < 0.01
    est = r_avg(quad, 0.01, 4000, seed=4)
    assert abs(est.value - 0.01 ** 2 * sum(eigs) / (2 * 6)) <= 3 * est.stderr


# ----------------------------------------------------------------------------------------------------------------
# validation and seeding
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, name", [
    (lambda o: r_max(o, 0.0), "rho"),
    (lambda o: r_asc(o, -1.0), "rho"),
    (lambda o: r_avg(o, float("nan")), "rho"),
    (lambda o: r_avg(o, 0.1, n_samples=1), "n_samples"),
    (lambda o: r_max(o, 0.1, n_restarts=-1), "n_restarts"),
    (lambda o: r_max(o, 0.1, lr=0.0), "lr"),
    (lambda o: top_eigenvalues(o, 0), "k"),
    (lambda o: top_eigenvalues(o, 10 ** 6), "k"),
    (lambda o: top_eigenvalues(o, 1, method="arnoldi"), "method"),
    (lambda o: top_eigenvalues(o, 1, which="SA"), "which"),
    (lambda o: top_eigenvalues(o, 1, seed=-3), "seed"),
    (lambda o: hutchinson_trace(o, 1), "n_samples"),
    (lambda o: slq_density(o, 0, 10), "n_probes"),
    (lambda o: slq_density(o, 2, 10, sigma=0.0), "sigma"),
    (lambda o: o.hvp(torch.zeros(o.dim, dtype=DT), method="finite_difference"), "method"),
    (lambda o: top_eigenvalues(o, 1, hvp_method="func", cache_graph=True), "cache_graph"),
])
def test_bad_arguments_raise_config_error_naming_the_parameter(call, name):
    obj = objective("mlp")
    with pytest.raises(ConfigError, match=name):
        call(obj)


def test_same_seed_same_numbers():
    obj = objective("mlp")
    runs = []
    for _ in range(2):
        runs.append((top_eigenvalues(obj, 2).values, top_eigenvalues(obj, 1, method="power").values,
                     hutchinson_trace(obj, 5, seed=7), slq_density(obj, 2, 8, seed=7).density,
                     r_max(obj, 0.1, n_steps=5, n_restarts=2, seed=7), r_avg(obj, 0.1, 10, seed=7)))
    a, b = runs
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
    assert a[2] == b[2] and a[4] == b[4] and a[5] == b[5]
    assert hutchinson_trace(obj, 5, seed=8) != a[2] and r_avg(obj, 0.1, 10, seed=8) != a[5]
    gen = torch.Generator().manual_seed(7)  # a Generator is accepted and advanced
    assert r_avg(obj, 0.1, 10, seed=gen) == a[5] and r_avg(obj, 0.1, 10, seed=gen) != a[5]
