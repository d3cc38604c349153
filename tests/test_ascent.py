"""One projected normalized ascent (theory_sim.sam.perturbation.ascent_step) serves multi-step SAM in the CIFAR
optimizer, the batched CNN trainer and R_Max: the same iterates as a hand computation on a quadratic."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from theory_sim.sam.optim import SAM
from theory_sim.sam.perturbation import ascent_step, expand_runs, project_to_ball
from theory_sim.sharpness import Objective
from theory_sim.sharpness.notions import r_max

RHO, ALPHA, K = 0.3, 0.2, 4  # ascent length != rho, so a caller dropping alpha is caught


def quadratic(seed=0):
    """L(w) = w^T A w / 2 + b^T w on the flattened (3,) and (2, 2) tensors."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(7, 7, generator=g, dtype=torch.float64)
    A = m @ m.T / 7 + torch.eye(7, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    w = torch.randn(7, generator=g, dtype=torch.float64)
    return A, b, w


def split(v):
    return [v[:3].clone(), v[3:].reshape(2, 2).clone()]


def flat(ts):
    return torch.cat([t.detach().reshape(-1) for t in ts])


def hand_iterates(A, b, w, rule="sam", project=True):
    """eps_1 = SAM's eps; eps_{i+1} = Proj(eps_i + alpha d(g(w + eps_i))), d = g/||g|| (sam) or sign(g) (sam_inf),
    Proj the L2 ball (sam) or the box (sam_inf) of radius rho. Plain float64 vector arithmetic."""
    def direction(g):
        return g / g.norm() if rule == "sam" else torch.sign(g)

    def proj(v):
        if not project:
            return v
        return v * min(1.0, RHO / float(v.norm())) if rule == "sam" else v.clamp(-RHO, RHO)

    eps = [RHO * direction(A @ w + b)]
    for _ in range(K - 1):
        eps.append(proj(eps[-1] + ALPHA * direction(A @ (w + eps[-1]) + b)))
    return eps


def optimizer_iterates(A, b, w, rule):
    params = [nn.Parameter(t) for t in split(w.clone())]
    opt = SAM(params, torch.optim.SGD, rule=rule, rho=RHO, steps_k=K, ascent_lr=ALPHA, lr=0.1)

    def set_grad():
        for p, g in zip(params, split(A @ flat(params) + b)):
            p.grad = g

    set_grad()
    opt.first_step(zero_grad=True)
    out = [flat(params) - w]
    for _ in range(K - 1):
        set_grad()
        opt.ascent_step(zero_grad=True)
        out.append(flat(params) - w)
    return out


def r_max_iterates(A, b, w):
    """The points R_Max evaluates (SAM start, no restarts, K - 1 steps of length lr rho = alpha), and its value."""
    seen = []

    def fn(ps):
        seen.append(flat(ps))
        v = torch.cat([p.reshape(-1) for p in ps])
        return 0.5 * v @ A @ v + b @ v

    obj = Objective.from_function(fn, split(w))
    value = r_max(obj, RHO, n_steps=K - 1, n_restarts=0, lr=ALPHA / RHO)
    points = []
    for p in seen:  # consecutive duplicates (loss and gradient at one point) count once; w itself is not an iterate
        if not torch.equal(p, w) and not (points and torch.equal(points[-1], p)):
            points.append(p)
    return [p - w for p in points], value


def assert_same(got, want):
    assert len(got) == len(want)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=0, atol=1e-14)


@pytest.mark.parametrize("rule", ["sam", "sam_inf"])
def test_optimizer_ascent_matches_hand_computation(rule):
    A, b, w = quadratic()
    want = hand_iterates(A, b, w, rule)
    assert_same(optimizer_iterates(A, b, w, rule), want)
    # the projection is active on this path: without it the iterates leave the ball and the check fails
    unprojected = hand_iterates(A, b, w, rule, project=False)
    assert max(float(e.norm() if rule == "sam" else e.abs().max()) for e in unprojected) > RHO * 1.05
    with pytest.raises(AssertionError):
        assert_same(optimizer_iterates(A, b, w, rule), unprojected)


def test_r_max_takes_the_optimizer_ascent():
    A, b, w = quadratic()
    want = hand_iterates(A, b, w)
    got, value = r_max_iterates(A, b, w)
    assert_same(got, want)
    assert_same(got, optimizer_iterates(A, b, w, "sam"))

    def L(v):
        return float(0.5 * v @ A @ v + b @ v)

    assert value == pytest.approx(max(L(w + e) for e in want) - L(w), rel=1e-12, abs=1e-14)
    with pytest.raises(AssertionError):
        assert_same(got, hand_iterates(A, b, w, project=False))


def test_batched_ascent_step_is_one_step_per_run():
    """batch_dims=1 (the CNN trainer): runs with their own radius and ascent length step as if alone."""
    g = torch.Generator().manual_seed(3)
    eps = [torch.randn(3, 4, 2, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)]
    grads = [torch.randn_like(e) for e in eps]
    grads = [torch.cat([t[:2], torch.zeros_like(t[2:])]) for t in grads]  # run 2: zero gradient adds nothing
    rho = torch.tensor([0.1, 2.0, 0.5], dtype=torch.float64)
    alpha = torch.tensor([0.3, 0.05, 0.2], dtype=torch.float64)
    out = ascent_step(eps, grads, rho, alpha, batch_dims=1)
    for r in range(3):
        one = ascent_step([e[r] for e in eps], [t[r] for t in grads], float(rho[r]), float(alpha[r]))
        assert_same([o[r] for o in out], one)
    assert_same([o[2] for o in out], project_to_ball([e[2] for e in eps], float(rho[2])))
    assert expand_runs(rho, eps[0]).shape == (3, 1, 1)
    assert expand_runs(0.5, eps[0]) == 0.5
    with pytest.raises(ValueError, match="rule must be 'sam' or 'sam_inf'"):
        ascent_step(eps, grads, rho, rule="asam", batch_dims=1)
