"""Closed-form gradients of the batched two-layer CNN against autograd on the plain definition (float64)."""
import pytest
import torch

from theory_sim.cnn.data import generate_for
from theory_sim.cnn.model import Params, TwoLayerCNN, logistic_loss
from theory_sim.cnn.reference import PatchCNN
from theory_sim.config import SimConfig
from theory_sim.sam.perturbation import perturbation

CASES = [("c23", "shared", True), ("c23", "independent", True), ("kou2023", "shared", False),
         ("kou2023", "independent", False)]


def setup(model, noise_patches, project, P=3, R=3, n=12, d=9, m=4):
    cfgs = [SimConfig(d=d, n=n, P=P, m=m, batch_size=n, model=model, noise_patches=noise_patches,
                      project_noise=project, mu_norm=1.0 + r, flip_p=0.3, seed=11 + r, sigma_0=0.5)
            for r in range(R)]
    net = TwoLayerCNN.for_config(cfgs[0])
    data = generate_for(cfgs)
    params = net.init([c.seed for c in cfgs], [c.sigma_0 for c in cfgs], d)
    assert (data.y != data.yhat).any(), "flipped labels must be present"
    return cfgs, net, data, params


def autograd_loss_grad(net, params, data):
    ts = [t.clone().requires_grad_(True) for t in params.tensors()]
    f = net.output_patches(Params.from_tensors(ts), data.patches())
    loss = logistic_loss(data.y * f).mean(-1)
    grads = torch.autograd.grad(loss.sum(), ts)  # runs are independent: d(sum)/d(run r) = d(loss_r)
    return loss.detach(), list(grads)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("model,noise_patches,project", CASES)
def test_closed_form_gradient_equals_autograd(model, noise_patches, project):
    cfgs, net, data, params = setup(model, noise_patches, project)
    g = net.loss_and_grad(params, data)
    loss, grads = autograd_loss_grad(net, params, data)
    assert torch.allclose(g.loss, loss, rtol=1e-13, atol=0)
    for mine, ref in zip(g.tensors(), grads):
        assert rel_err(mine, ref) <= 1e-10
    # the decomposition coefficients rebuild the gradient: dW = a_sig mu + sum a_noise xi
    rebuilt = g.a_sig[..., None] * data.mu[:, None, None] + torch.einsum("rjmnk,rnkd->rjmd", g.a_noise, data.xi)
    assert rel_err(rebuilt, g.dW) <= 1e-12


@pytest.mark.parametrize("model,noise_patches,project", CASES)
def test_sam_gradient_at_perturbed_point_equals_autograd(model, noise_patches, project):
    cfgs, net, data, params = setup(model, noise_patches, project)
    sub = data.select(torch.tensor([[0, 3, 5, 7]] * 3))
    g = net.loss_and_grad(params, sub)
    tau = torch.tensor([0.3, 0.7, 1.1], dtype=torch.float64)
    eps = perturbation("sam", g.tensors(), tau, batch_dims=1)
    # per-run radius: ||eps_r|| = tau_r over all of the run's parameters
    norms = torch.sqrt(sum(e.flatten(1).pow(2).sum(1) for e in eps))
    assert torch.allclose(norms, tau, rtol=1e-13)
    pert = Params.from_tensors([p + e for p, e in zip(params.tensors(), eps)])
    g2 = net.loss_and_grad(pert, sub)
    _, grads = autograd_loss_grad(net, pert, sub)
    for mine, ref in zip(g2.tensors(), grads):
        assert rel_err(mine, ref) <= 1e-10
    # and the SAM step direction equals autograd's full two-pass SAM computed run by run
    for r in range(3):
        ts = [t[r:r + 1].clone().requires_grad_(True) for t in params.tensors()]
        one = lambda tt: logistic_loss(sub.y[r:r + 1] * net.output_patches(  # noqa: E731
            Params.from_tensors(tt), sub.patches()[r:r + 1])).mean()
        gr = torch.autograd.grad(one(ts), ts)
        gn = torch.sqrt(sum((x ** 2).sum() for x in gr))
        moved = [(t + tau[r] * x / gn).detach().requires_grad_(True) for t, x in zip(ts, gr)]
        gsam = torch.autograd.grad(one(moved), moved)
        for mine, ref in zip(g2.tensors(), gsam):
            assert rel_err(mine[r:r + 1], ref) <= 1e-10


@pytest.mark.parametrize("model,noise_patches,project", CASES)
def test_compact_forward_equals_conv1d_reference(model, noise_patches, project):
    cfgs, net, data, params = setup(model, noise_patches, project)
    f = net.output(params, data)
    assert torch.allclose(f, net.output_patches(params, data.patches()), rtol=1e-12, atol=1e-14)
    x = data.patches()
    for r in range(3):
        ref = PatchCNN(9, 3, 4, model).double().load_filters(params.W[r], None if params.b is None else params.b[r])
        out = ref(x[r].reshape(12, -1))
        assert torch.allclose(out, f[r], rtol=1e-12, atol=1e-14)
        W, b = ref.filters()
        assert torch.equal(W, params.W[r])


def test_kou2023_init_matches_pytorch_conv_default_range():
    cfgs, net, data, params = setup("kou2023", "shared", False, d=400)
    bound = 1 / 400 ** 0.5
    assert params.W.abs().max() <= bound and params.b.abs().max() <= bound
    assert params.W.abs().max() > 0.95 * bound  # uniform, fills the range
