"""The SAM-family optimizer (theory_sim.sam.optim) against hand-computed updates [F21, K21, T24]."""
from __future__ import annotations

import copy
import math
import os
import socket
import warnings

import pytest
import torch
from torch import nn

from theory_sim.config import ConfigError
from theory_sim.sam.bn import disable_running_stats
from theory_sim.sam.optim import SAM


# ---- a quadratic with two parameter tensors, gradients by hand ------------------------------------------------------
def quadratic(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(7, 7, generator=g, dtype=torch.float64)
    A = m @ m.T / 7 + torch.eye(7, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    w1 = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
    w2 = nn.Parameter(torch.randn(2, 2, generator=g, dtype=torch.float64))
    return A, b, [w1, w2]


def flat(ps):
    return torch.cat([p.detach().reshape(-1) for p in ps])


def qgrad(A, b, w):  # L(w) = w^T A w / 2 + b^T w on the flattened weights
    return A @ w + b


def set_qgrad(A, b, params):
    g = qgrad(A, b, flat(params))
    params[0].grad, params[1].grad = g[:3].clone(), g[3:].reshape(2, 2).clone()


def sam_two_step(opt, A, b, params):
    set_qgrad(A, b, params)
    opt.first_step(zero_grad=True)
    for _ in range(opt.steps_k - 1):
        set_qgrad(A, b, params)
        opt.ascent_step(zero_grad=True)
    set_qgrad(A, b, params)
    opt.second_step(zero_grad=True)


@pytest.mark.parametrize("rule", ["sam", "sam_inf"])
def test_sam_step_matches_hand_computed_update(rule):
    A, b, params = quadratic()
    eta, rho = 0.1, 0.05
    opt = SAM(params, torch.optim.SGD, rule=rule, rho=rho, lr=eta)
    w = flat(params)
    for _ in range(3):
        g = qgrad(A, b, w)
        eps = rho * g / g.norm() if rule == "sam" else rho * torch.sign(g)
        w = w - eta * qgrad(A, b, w + eps)
        sam_two_step(opt, A, b, params)
        torch.testing.assert_close(flat(params), w, rtol=0, atol=1e-14)


def test_multistep_sam_matches_projected_normalized_ascent():
    A, b, params = quadratic(1)
    eta, rho, k = 0.1, 0.3, 3
    opt = SAM(params, torch.optim.SGD, rule="sam", rho=rho, steps_k=k, lr=eta)
    w = flat(params)
    for _ in range(3):
        eps = torch.zeros_like(w)
        for _ in range(k):  # eps <- Proj_rho(eps + rho g(w+eps)/||g(w+eps)||)  [T24]
            g = qgrad(A, b, w + eps)
            eps = eps + rho * g / g.norm()
            eps = eps * min(1.0, rho / eps.norm().item())
        w = w - eta * qgrad(A, b, w + eps)
        sam_two_step(opt, A, b, params)
        torch.testing.assert_close(flat(params), w, rtol=0, atol=1e-14)
        assert opt.last_perturbation_norm.item() == pytest.approx(eps.norm().item(), abs=1e-12)


def test_multistep_k1_is_sam_and_msharpness_one_chunk_is_sam():
    torch.manual_seed(0)
    net0 = small_cnn()
    x, y = torch.randn(12, 3, 8, 8), torch.randint(0, 4, (12,))
    results = []
    for kw, chunked in [(dict(), False), (dict(steps_k=1), False), (dict(), True)]:
        net = _copy(net0)
        opt = SAM(net.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=net, **kw)
        for _ in range(3):
            closure = lambda: _backward(net, x, y)  # noqa: E731
            opt.step_chunked([closure]) if chunked else opt.step(closure)
        results.append(flat(net.parameters()))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_msharpness_averages_per_chunk_sam_gradients():
    """Two chunks: each chunk's gradient at its own w + eps_c, averaged with chunk weights [F21 Sec. 4]."""
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64)
    w = nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
    rho, eta = 0.2, 0.5
    chunks = [(X[:6], Y[:6]), (X[6:], Y[6:])]

    def grad(wv, xc, yc):  # L_c = mean (x w - y)^2 / 2
        return xc.T @ (xc @ wv - yc) / len(yc)

    expected = w.detach().clone()
    total = torch.zeros(4, dtype=torch.float64)
    for xc, yc in chunks:
        gc = grad(expected, xc, yc)
        total += len(yc) / 10 * grad(expected + rho * gc / gc.norm(), xc, yc)
    expected -= eta * total

    opt = SAM([w], torch.optim.SGD, rho=rho, lr=eta)

    def closure_for(xc, yc):
        def closure():
            loss = ((xc @ w - yc) ** 2).mean() / 2
            loss.backward()
            return loss
        return closure
    opt.step_chunked([closure_for(*c) for c in chunks], weights=[0.6, 0.4])
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-14)


# ---- ASAM [K21] and Rand-SAM [T24] ----------------------------------------------------------------------------------
def test_asam_scales_weights_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 2, (8,))
    rho, eta_a = 0.5, 0.01
    opt = SAM(net.parameters(), torch.optim.SGD, rule="asam", rho=rho, eta_a=eta_a, lr=0.1)
    nn.functional.cross_entropy(net(x), y).backward()
    before = [p.detach().clone() for p in net.parameters()]
    grads = [p.grad.clone() for p in net.parameters()]
    # T = |w| + eta_a on the two Linear weight matrices; 1 on their biases and on BatchNorm's gamma and beta
    T = [(w.abs() + eta_a) if w.dim() > 1 else torch.ones_like(w) for w in before]
    norm = torch.sqrt(sum(((t * gg) ** 2).sum() for t, gg in zip(T, grads)))
    opt.first_step()
    for p, w0, t, gg in zip(net.parameters(), before, T, grads):
        torch.testing.assert_close(p.detach() - w0, rho * t * t * gg / norm, rtol=1e-10, atol=1e-15)
    assert sum(1 for w0 in before if w0.dim() == 1) == 4  # biases and BN affine parameters were scaled by 1
    opt.restore()
    assert all(torch.equal(p, w0) for p, w0 in zip(net.parameters(), before))


def test_asam_group_flag_overrides_the_default():
    w = nn.Parameter(torch.tensor([2.0, -3.0], dtype=torch.float64))
    opt = SAM([{"params": [w], "adaptive": True}], torch.optim.SGD, rule="asam", rho=1.0, eta_a=0.0, lr=0.1)
    w.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.first_step()
    tg = torch.tensor([2.0, 3.0], dtype=torch.float64)  # T g with T = |w|
    torch.testing.assert_close(w.detach() - torch.tensor([2.0, -3.0], dtype=torch.float64), tg * tg / tg.norm())


def test_randsam_matches_seeded_draw_has_norm_rho_and_changes():
    A, b, params = quadratic(2)
    rho, eta = 0.07, 0.1
    opt = SAM(params, torch.optim.SGD, rule="randsam", rho=rho, lr=eta, generator=torch.Generator().manual_seed(5))
    ref = torch.Generator().manual_seed(5)
    w = flat(params)
    dirs = []
    for _ in range(3):
        z = torch.cat([torch.randn(3, generator=ref, dtype=torch.float64),
                       torch.randn(2, 2, generator=ref, dtype=torch.float64).reshape(-1)])
        eps = rho * z / z.norm()
        set_qgrad(A, b, params)
        opt.first_step(zero_grad=True)
        torch.testing.assert_close(flat(params) - w, eps, rtol=0, atol=1e-14)
        assert opt.last_perturbation_norm.item() == pytest.approx(rho, rel=1e-12)
        dirs.append(eps)
        w = w - eta * qgrad(A, b, w + eps)
        set_qgrad(A, b, params)
        opt.second_step(zero_grad=True)
        torch.testing.assert_close(flat(params), w, rtol=0, atol=1e-14)
    assert not torch.allclose(dirs[0], dirs[1]) and not torch.allclose(dirs[1], dirs[2])


# ---- BatchNorm, weight decay, the two APIs, bf16, checkpoints -------------------------------------------------------
def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 4))


def _copy(net):
    return copy.deepcopy(net)


def _backward(net, x, y):
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    return loss


def _bn_state(net):
    bn = net[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def test_batchnorm_running_stats_come_from_the_clean_pass_only():
    torch.manual_seed(0)
    net = small_cnn()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    ref = _copy(net)
    ref(x)  # one clean forward: what the running stats must be after a SAM step
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    _backward(net, x, y)
    opt.first_step(zero_grad=True)
    with disable_running_stats(net):
        _backward(net, x, y)
    opt.second_step(zero_grad=True)
    for a, b in zip(_bn_state(net), _bn_state(ref)):
        assert torch.equal(a, b)
    assert net[1].track_running_stats  # restored after the block
    # the closure API with model= does the same
    net2 = _copy(ref)
    ref2 = _copy(ref)
    ref2(x)
    opt2 = SAM(net2.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, model=net2)
    opt2.step(lambda: _backward(net2, x, y))
    for a, b in zip(_bn_state(net2), _bn_state(ref2)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rule", ["sam", "asam", "randsam"])
def test_closure_api_equals_two_step_api(rule):
    torch.manual_seed(1)
    net_a = small_cnn()
    net_b = _copy(net_a)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    kw = dict(rule=rule, rho=0.1, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt_a = SAM(net_a.parameters(), torch.optim.SGD, generator=torch.Generator().manual_seed(0), **kw)
    opt_b = SAM(net_b.parameters(), torch.optim.SGD, model=net_b, generator=torch.Generator().manual_seed(0), **kw)
    for _ in range(3):
        opt_a.zero_grad()
        la = _backward(net_a, x, y)
        opt_a.first_step(zero_grad=True)
        with disable_running_stats(net_a):
            _backward(net_a, x, y)
        opt_a.second_step(zero_grad=True)
        lb = opt_b.step(lambda: _backward(net_b, x, y))
        assert torch.equal(la, lb)
    assert torch.equal(flat(net_a.parameters()), flat(net_b.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(_bn_state(net_a), _bn_state(net_b)))


def test_weight_decay_stays_out_of_the_perturbation():
    A, b, params = quadratic(4)
    shifts = []
    for wd in (0.0, 0.5):
        ps = [nn.Parameter(p.detach().clone()) for p in params]
        opt = SAM(ps, torch.optim.SGD, rho=0.05, lr=0.1, weight_decay=wd)
        w0 = flat(ps)
        set_qgrad(A, b, ps)
        g = flat([p.grad for p in ps])
        opt.first_step(zero_grad=True)
        shifts.append(flat(ps) - w0)
        torch.testing.assert_close(shifts[-1], 0.05 * g / g.norm(), rtol=0, atol=1e-15)
        set_qgrad(A, b, ps)
        opt.second_step()
        expected = w0 - 0.1 * (qgrad(A, b, w0 + shifts[-1]) + wd * w0)  # wd applied by SGD, at w
        torch.testing.assert_close(flat(ps), expected, rtol=0, atol=1e-14)


def test_bf16_autocast_step_on_cpu():
    torch.manual_seed(0)
    net = small_cnn()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, model=net)
    before = flat(net.parameters())

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
            assert out.dtype == torch.bfloat16
            loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert torch.isfinite(loss)
    after = flat(net.parameters())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert opt.last_perturbation_norm.item() == pytest.approx(0.05, rel=1e-5)


def test_scheduler_state_dict_and_resume_are_exact():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))

    def make(net):
        opt = SAM(net.parameters(), torch.optim.SGD, rule="randsam", rho=0.1, lr=0.1, momentum=0.9,
                  generator=torch.Generator().manual_seed(1), model=net)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)

    net = small_cnn()
    net_b = _copy(net)
    opt, sched = make(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" warning
        for i in range(4):
            opt.step(lambda: _backward(net, x, y))
            sched.step()
            if i == 1:
                # deep copies: state_dict() hands out the live momentum buffers
                state = copy.deepcopy((net.state_dict(), opt.state_dict(), sched.state_dict()))
    # the scheduler attached to the wrapper drives the base optimizer: cosine at step 4 of 10
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(0.4 * math.pi)) / 2)
    opt_b, sched_b = make(net_b)
    net_b.load_state_dict(state[0])
    opt_b.load_state_dict(state[1])
    sched_b.load_state_dict(state[2])
    assert opt_b.param_groups is opt_b.base_optimizer.param_groups
    for _ in range(2):
        opt_b.step(lambda: _backward(net_b, x, y))
        sched_b.step()
    assert torch.equal(flat(net.parameters()), flat(net_b.parameters()))
    assert opt_b.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_bad_parameters_are_rejected_with_their_names():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match="rule"):
        SAM(p, torch.optim.SGD, rule="adam", lr=0.1)
    with pytest.raises(ConfigError, match="rho"):
        SAM(p, torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ConfigError, match="steps_k"):
        SAM(p, torch.optim.SGD, steps_k=0, lr=0.1)
    with pytest.raises(ValueError, match="steps_k > 1"):
        SAM(p, torch.optim.SGD, rule="asam", steps_k=2, lr=0.1)
    opt = SAM(p, torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        opt.first_step()
    with pytest.raises(ValueError, match="closure"):
        opt.step()


# ---- DDP: the first pass runs without all-reduce, so each replica perturbs with its own gradient -------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = small_cnn()
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9, model=ddp)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    x, y = X[rank * 8:(rank + 1) * 8], Y[rank * 8:(rank + 1) * 8]
    for _ in range(3):
        opt.step(lambda: _backward(ddp, x, y))
    torch.save([p.detach() for p in net.parameters()], os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_sam_replicas_stay_in_sync_and_equal_msharpness(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p0, p1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))  # replicas identical after the steps
    # in one process: m-sharpness with m = the per-replica batch gives the same weights ...
    torch.manual_seed(0)
    net = small_cnn()
    net_sam = _copy(net)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9, model=net)
    for _ in range(3):
        opt.step_chunked([lambda: _backward(net, X[:8], Y[:8]), lambda: _backward(net, X[8:], Y[8:])])
    for a, b in zip(p0, net.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    # ... which is not SAM with the all-reduced gradient (so the first pass really skipped the all-reduce); the
    # halves keep their own BatchNorm statistics, as on two replicas
    opt_sam = SAM(net_sam.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9, model=net_sam)

    def both_halves():
        loss = sum(nn.functional.cross_entropy(net_sam(X[h:h + 8]), Y[h:h + 8]) / 2 for h in (0, 8))
        loss.backward()
        return loss
    for _ in range(3):
        opt_sam.step(both_halves)
    assert max((a - b.detach()).abs().max().item() for a, b in zip(p0, net_sam.parameters())) > 1e-4


# ---- per-group hyper-parameters (davda54/sam semantics: one joint norm, each group's rho on its own tensors) -------
def _two_group_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(net(x), y).backward()
    return net


def test_asam_per_group_rho_and_eta_a_with_one_joint_norm():
    net = _two_group_net()
    first = list(net[0].parameters()) + list(net[1].parameters())  # Linear weight, bias, BN gamma, beta
    second = list(net[2].parameters())  # Linear weight, bias
    groups = [{"params": first, "rho": 0.5, "eta_a": 0.01}, {"params": second, "rho": 1.5, "eta_a": 0.2}]
    opt = SAM(groups, torch.optim.SGD, rule="asam", rho=9.0, eta_a=9.0, lr=0.1)  # constructor values overridden
    ps = first + second
    before = [p.detach().clone() for p in ps]
    grads = [p.grad.clone() for p in ps]
    rho = [0.5] * 4 + [1.5] * 2
    eta = [0.01] * 4 + [0.2] * 2
    T = [(w.abs() + e) if w.dim() > 1 else torch.ones_like(w) for w, e in zip(before, eta)]
    norm = torch.sqrt(sum(((t * g) ** 2).sum() for t, g in zip(T, grads)))  # ||T g|| jointly over both groups
    opt.first_step()
    for p, w0, t, g, r in zip(ps, before, T, grads, rho):
        torch.testing.assert_close(p.detach() - w0, r * t * t * g / norm, rtol=1e-12, atol=1e-15)
    opt.restore()
    assert all(torch.equal(p, w0) for p, w0 in zip(ps, before))


def _davda54_first_step(groups):
    """davda54/sam ``SAM.first_step`` (sam.py @3c3afdb), for comparison: one grad norm over all groups,
    ||(|p| if adaptive else 1) * grad||, then e_w = (p^2 if adaptive else 1) * grad * rho_group / (norm + 1e-12)."""
    norm = torch.norm(torch.stack([((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
                                   for g in groups for p in g["params"] if p.grad is not None]), p=2)
    return [(torch.pow(p, 2) if g["adaptive"] else 1.0) * p.grad * (g["rho"] / (norm + 1e-12))
            for g in groups for p in g["params"] if p.grad is not None]


@pytest.mark.parametrize("rule", ["sam", "asam"])
def test_multi_group_perturbation_matches_davda54(rule):
    net = _two_group_net()
    a, b = list(net[0].parameters()) + list(net[1].parameters()), list(net[2].parameters())
    adaptive = rule == "asam"
    ref = _davda54_first_step([{"params": a, "rho": 0.3, "adaptive": adaptive},
                               {"params": b, "rho": 2.0, "adaptive": adaptive}])
    # davda54's adaptive SAM = every tensor scaled by |w|, no offset: asam_scope="all", eta_a=0
    opt = SAM([{"params": a, "rho": 0.3}, {"params": b, "rho": 2.0}], torch.optim.SGD, rule=rule,
              asam_scope="all", eta_a=0.0, lr=0.1)
    before = [p.detach().clone() for p in a + b]
    opt.first_step()
    for p, w0, e in zip(a + b, before, ref):
        torch.testing.assert_close(p.detach() - w0, e, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("rule", ["sam", "sam_inf", "randsam"])
def test_per_group_rho_in_the_one_step_rules(rule):
    A, b, params = quadratic(5)
    eta, rhos = 0.1, (0.05, 0.2)
    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    opt = SAM([{"params": [params[0]], "rho": rhos[0]}, {"params": [params[1]], "rho": rhos[1]}], torch.optim.SGD,
              rule=rule, lr=eta, generator=gen)
    r = torch.cat([torch.full((3,), rhos[0], dtype=torch.float64), torch.full((4,), rhos[1], dtype=torch.float64)])
    w = flat(params)
    for _ in range(3):
        g = qgrad(A, b, w)
        if rule == "sam":
            eps = r * g / g.norm()
        elif rule == "sam_inf":
            eps = r * torch.sign(g)
        else:
            z = torch.cat([torch.randn(3, generator=ref, dtype=torch.float64),
                           torch.randn(2, 2, generator=ref, dtype=torch.float64).reshape(-1)])
            eps = r * z / z.norm()
        w = w - eta * qgrad(A, b, w + eps)
        sam_two_step(opt, A, b, params)
        torch.testing.assert_close(flat(params), w, rtol=0, atol=1e-14)


def test_multistep_per_group_rho():
    A, b, params = quadratic(6)
    eta, rhos, k = 0.1, (0.1, 0.4), 3
    # sam_inf: the box is a product set, so each group keeps its own half-width (and step length alpha = its rho)
    opt = SAM([{"params": [params[0]], "rho": rhos[0]}, {"params": [params[1]], "rho": rhos[1]}], torch.optim.SGD,
              rule="sam_inf", steps_k=k, lr=eta)
    r = torch.cat([torch.full((3,), rhos[0], dtype=torch.float64), torch.full((4,), rhos[1], dtype=torch.float64)])
    w = flat(params)
    for _ in range(2):
        eps = torch.zeros_like(w)
        for _ in range(k):
            eps = torch.maximum(torch.minimum(eps + r * torch.sign(qgrad(A, b, w + eps)), r), -r)
        w = w - eta * qgrad(A, b, w + eps)
        sam_two_step(opt, A, b, params)
        torch.testing.assert_close(flat(params), w, rtol=0, atol=1e-14)
    # the L2 rule projects onto one ball over all parameters: one rho is required
    with pytest.raises(ValueError, match="one rho"):
        SAM([{"params": [params[0]], "rho": 0.1}, {"params": [params[1]], "rho": 0.2}], torch.optim.SGD,
            rule="sam", steps_k=2, lr=eta)
    with pytest.raises(ConfigError, match=r"param_groups\[1\] eta_a"):
        SAM([{"params": [params[0]]}, {"params": [params[1]], "eta_a": -1.0}], torch.optim.SGD, rule="asam", lr=eta)


def test_per_group_settings_survive_state_dict_and_old_checkpoints():
    net = _two_group_net()
    a, b = list(net[0].parameters()), list(net[2].parameters())

    def make():
        return SAM([{"params": a, "eta_a": 0.3, "asam_scope": "all"}, {"params": b, "rho": 2.0}], torch.optim.SGD,
                   rule="asam", rho=0.5, lr=0.1)
    opt = make()
    state = copy.deepcopy(opt.state_dict())
    opt2 = make()
    opt2.load_state_dict(state)
    assert [(g["rho"], g["eta_a"], g["asam_scope"]) for g in opt2.param_groups] == \
        [(0.5, 0.3, "all"), (2.0, 0.01, "weights")]
    for g in state["base"]["param_groups"]:  # a checkpoint written before asam_scope / ascent_lr were group keys
        del g["asam_scope"], g["ascent_lr"]
    opt3 = make()
    opt3.load_state_dict(state)
    assert all(g["asam_scope"] == "weights" and g["ascent_lr"] is None for g in opt3.param_groups)
    opt3.first_step()
    opt3.restore()


# ---- ASAM's scope: which tensors get T = |w| + eta_a ----------------------------------------------------------------
@pytest.mark.parametrize("scope", ["weights", "weights_and_bn", "all"])
def test_asam_scope_matches_hand_computation(scope):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3), nn.LayerNorm(3)).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    with torch.no_grad():  # gamma away from 1 so that |gamma| + eta is not a near-constant
        net[1].weight.uniform_(0.5, 2.0)
        net[3].weight.uniform_(0.5, 2.0)
    nn.functional.cross_entropy(net(x), y).backward()
    rho, eta_a = 0.5, 0.05
    opt = SAM(net.parameters(), torch.optim.SGD, rule="asam", rho=rho, eta_a=eta_a, asam_scope=scope, model=net,
              lr=0.1)
    names = [n for n, _ in net.named_parameters()]
    before = [p.detach().clone() for p in net.parameters()]
    grads = [p.grad.clone() for p in net.parameters()]
    scaled = {"weights": [w.dim() > 1 for w in before],  # 0.weight, 2.weight
              "weights_and_bn": ["weight" in n for n in names],  # SamsungLabs/ASAM asam.py: `if 'weight' in n`
              "all": [True] * len(before)}[scope]                # davda54/sam adaptive=True (there with eta = 0)
    assert sum(scaled) == {"weights": 2, "weights_and_bn": 4, "all": 8}[scope]
    T = [(w.abs() + eta_a) if s else torch.ones_like(w) for w, s in zip(before, scaled)]
    norm = torch.sqrt(sum(((t * g) ** 2).sum() for t, g in zip(T, grads)))
    opt.first_step()
    for p, w0, t, g in zip(net.parameters(), before, T, grads):
        torch.testing.assert_close(p.detach() - w0, rho * t * t * g / norm, rtol=1e-12, atol=1e-15)


def test_asam_scope_weights_and_bn_needs_the_model_and_the_group_flag_wins():
    net = _two_group_net()
    with pytest.raises(ValueError, match="needs model="):
        SAM(net.parameters(), torch.optim.SGD, rule="asam", asam_scope="weights_and_bn", lr=0.1)
    with pytest.raises(ConfigError, match="asam_scope"):
        SAM(net.parameters(), torch.optim.SGD, rule="asam", asam_scope="bn", lr=0.1)
    SAM(net.parameters(), torch.optim.SGD, rule="sam", asam_scope="weights_and_bn", lr=0.1)  # not ASAM: no need
    # a group's explicit `adaptive` overrides the scope: no model needed, every tensor of the group scaled
    opt = SAM([{"params": net.parameters(), "adaptive": False}], torch.optim.SGD, rule="asam", rho=0.1,
              asam_scope="weights_and_bn", lr=0.1)
    g = flat([p.grad for p in net.parameters()])
    w0 = flat(net.parameters())
    opt.first_step()
    torch.testing.assert_close(flat(net.parameters()) - w0, 0.1 * g / g.norm(), rtol=1e-12, atol=1e-15)


# ---- the inf-norm default radius ------------------------------------------------------------------------------------
def test_inf_norm_default_radius_has_the_l2_size_of_sams():
    from theory_sim.cifar.config import CifarConfig, wrn_num_params
    from theory_sim.cifar.wrn import WideResNet
    from theory_sim.sam.optim import inf_rho

    cfg = CifarConfig(depth=16, width=4, norm="inf")
    torch.manual_seed(0)
    model = WideResNet(16, 4, 10)
    n = sum(p.numel() for p in model.parameters())
    assert wrn_num_params(16, 4, "cifar10") == n and n > 2_000_000
    assert cfg.rho == pytest.approx(0.05 / math.sqrt(n), rel=1e-12) == inf_rho(0.05, n)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    l2 = []
    for rule, rho in [("sam", CifarConfig(depth=16, width=4).rho), ("sam_inf", cfg.rho)]:
        opt = SAM(model.parameters(), torch.optim.SGD, rule=rule, rho=rho, lr=0.1)
        opt.zero_grad()
        _backward(model, x, y)
        opt.first_step()
        opt.restore()
        l2.append(opt.last_perturbation_norm.item())
    assert l2[0] == pytest.approx(0.05, rel=1e-5)
    assert 0.5 * l2[0] <= l2[1] <= 2 * l2[0]  # (0.05 per coordinate would be an L2 step of 0.05 sqrt(D) ~ 83)
    # the optimizer's own default (rho unset) is the same rule on its parameters; an explicit rho stays as given
    opt = SAM(model.parameters(), torch.optim.SGD, rule="sam_inf", lr=0.1)
    assert opt.param_groups[0]["rho"] == inf_rho(0.05, n)
    assert SAM(model.parameters(), torch.optim.SGD, rule="sam", lr=0.1).param_groups[0]["rho"] == 0.05
    assert CifarConfig(depth=16, width=4, norm="inf", rho=0.05).rho == 0.05
    assert CifarConfig(norm="inf", dataset="cifar100").rho == pytest.approx(0.1 / math.sqrt(36_536_884), rel=1e-12)


# ---- m-sharpness and BatchNorm's running statistics ---------------------------------------------------------------
@pytest.mark.parametrize("mode,per_step", [("per_chunk", 3), ("per_step", 1)])
def test_msharpness_bn_updates_per_step(mode, per_step):
    torch.manual_seed(0)
    net = small_cnn()
    ref, ref_chunk = _copy(net), _copy(net)
    x, y = torch.randn(12, 3, 8, 8), torch.randint(0, 4, (12,))
    chunks = list(zip(x.split(4), y.split(4)))
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=net, bn_update=mode)
    opt_ref = SAM(ref.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=ref)
    for step in range(2):
        n0 = net[1].num_batches_tracked.item()
        opt.step_chunked([(lambda xc=xc, yc=yc: _backward(net, xc, yc)) for xc, yc in chunks])
        assert net[1].num_batches_tracked.item() - n0 == per_step
        opt_ref.step_chunked([(lambda xc=xc, yc=yc: _backward(ref, xc, yc)) for xc, yc in chunks])
        assert net[1].track_running_stats  # restored after the frozen chunks
    # the weights do not depend on the mode (training-mode BatchNorm normalises with batch statistics)
    assert torch.equal(flat(net.parameters()), flat(ref.parameters()))
    if mode == "per_step":  # after the first step: exactly one clean forward of the first chunk
        net1 = _copy(ref_chunk)
        opt1 = SAM(net1.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=net1, bn_update=mode)
        opt1.step_chunked([(lambda xc=xc, yc=yc: _backward(net1, xc, yc)) for xc, yc in chunks])
        ref_chunk(chunks[0][0])
        assert all(torch.equal(a, b) for a, b in zip(_bn_state(net1), _bn_state(ref_chunk)))
    else:
        assert all(torch.equal(a, b) for a, b in zip(_bn_state(net), _bn_state(ref)))  # the default mode


def test_bn_update_per_step_needs_the_model():
    with pytest.raises(ValueError, match="needs model="):
        SAM([nn.Parameter(torch.zeros(2))], torch.optim.SGD, bn_update="per_step", lr=0.1)
    with pytest.raises(ConfigError, match="bn_update"):
        SAM([nn.Parameter(torch.zeros(2))], torch.optim.SGD, bn_update="once", lr=0.1)


# ---- the CIFAR trainer's options ------------------------------------------------------------------------------------
def test_cifar_flags_reach_the_optimizer():
    import argparse

    from theory_sim.cifar.config import CifarConfig
    from theory_sim.cifar.train import add_arguments, build_optimizer, config_from_args
    from theory_sim.cifar.wrn import WideResNet

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--out", "x", "--optimizer", "asam", "--asam-scope", "weights_and_bn",
                                         "--m-sharpness", "32", "--bn-update", "per_step", "--depth", "10",
                                         "--width", "1"]))
    assert (cfg.asam_scope, cfg.bn_update, cfg.rho) == ("weights_and_bn", "per_step", 0.5)
    model = WideResNet(10, 1, 10)
    opt = build_optimizer(cfg, model, model, torch.device("cpu"), seed=1)
    assert opt.bn_update == "per_step" and opt.param_groups[0]["asam_scope"] == "weights_and_bn"
    assert len(opt._norm_weights) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    default = config_from_args(p.parse_args(["--out", "x"]))
    assert (default.asam_scope, default.bn_update) == ("weights", "per_chunk")
    with pytest.raises(ConfigError, match="asam_scope"):
        CifarConfig(optimizer="sam", asam_scope="all")
    with pytest.raises(ConfigError, match="bn_update"):
        CifarConfig(bn_update="per_step")
