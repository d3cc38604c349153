"""The SAM family's perturbations on the two-layer CNN (docs/science.md §3.2, §8), written once against the state
interface of ``theory_sim.cnn.ensemble`` so they serve both representations:

    sam      eps = tau g / ||g||_F  (norm over the 2m filters, and biases or hidden weights, of THIS run)  [F21]
    sam, norm="inf"   eps = tau sign(g)                                                      [F21]
    usam     eps = tau g                                                                     unnormalised SAM
    randsam  eps = tau z / ||z||, z ~ N(0, I) fresh every step                               [T24]
    msam     K projected normalised-gradient ascent steps in the tau-ball (``msam_rule``)  [T24, F21 App. C.6]
    asam     eps = tau T^2 g / ||T g||, T = |w| + eta_a on the weights (hidden ones too), 1 on biases  [K21]
    m_sharpness = M: every chunk of M samples is perturbed with its own gradient; the step is the mean of the
             chunks' gradients at their own perturbed points (sam, usam, msam)                [F21]

with g = grad L_I(W). An SGD run is a run of radius 0, which every rule maps to eps = 0. ``update_gradient`` returns
the gradient each run steps with: at W for SGD (and after its ``sam_steps``), at W + eps for the SAM family.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from theory_sim.cnn.ensemble import Ensemble, Perturbation, StepBatch
from theory_sim.cnn.model import Gradient
from theory_sim.sam.perturbation import (
    ascent_step,
    expand_runs,
    perturbation,
    usam_perturbation,
)


def _as_perturbation(ens: Ensemble, batch: StepBatch, eps: list[torch.Tensor], finite=None) -> Perturbation:
    return Perturbation(ens.shift(batch, eps[0]), eps[1] if len(eps) > 1 else None, finite)


def _gradient_at(ens: Ensemble, batch: StepBatch, pert: Perturbation) -> Gradient:
    """The gradient at W + eps: the batch's projections shifted by <eps, basis_c>, the biases by eps_b."""
    return ens.gradient(batch, batch.proj + pert.shift, None if batch.b is None else batch.b + pert.db)


def sam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """SAM [F21]: eps = tau g / ||g||_2, the norm of the gradient itself (through the Gram matrix in coefficient
    space); a zero gradient gives eps = 0."""
    g = ens.grad_tensors(batch, grad)
    return _as_perturbation(ens, batch, perturbation("sam", g, radius, batch_dims=1, norm=ens.norm(batch, g)))


def usam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """Unnormalised SAM: eps = tau g (linear in g, so it stays in the span)."""
    return _as_perturbation(ens, batch, usam_perturbation(ens.grad_tensors(batch, grad), radius, batch_dims=1))


def msam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """Multi-step SAM [T24, F21 App. C.6], the rule of ``theory_sim.sam.optim.SAM`` (``steps_k = K``, rule sam,
    ``ascent_lr`` = alpha): eps_1 = tau g / ||g|| (SAM), then K - 1 times eps <- Proj_tau(eps + alpha g(W + eps) /
    ||g(W + eps)||) (``theory_sim.sam.perturbation.ascent_step``), alpha = ``ascent_step`` * tau, and the step takes
    the gradient at W + eps_K. So K = 1 is SAM and a step costs K + 1 gradients. Every iterate is a combination of
    gradients, hence stays in the span; runs with fewer steps (per-run K) keep their eps once done."""
    def norm(ts):
        return ens.norm(batch, ts)

    g = ens.grad_tensors(batch, grad)
    eps = perturbation("sam", g, radius, batch_dims=1, norm=norm(g))
    steps = batch.per_run(ens.ascent_steps)
    alpha = radius * batch.per_run(ens.ascent_step)   # ascent_step = 1: alpha = tau exactly (today's numbers)
    finite = torch.ones_like(grad.finite)
    for i in range(1, int(steps[radius > 0].max())):
        g_i = _gradient_at(ens, batch, _as_perturbation(ens, batch, eps))
        more = (steps > i) & (radius > 0)
        finite &= g_i.finite | ~more
        new = ascent_step(eps, ens.grad_tensors(batch, g_i), radius, alpha, batch_dims=1, norm_fn=norm)
        eps = [torch.where(expand_runs(more, e), n, e) for n, e in zip(new, eps)]
    return _as_perturbation(ens, batch, eps, finite)


def randsam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """Rand-SAM [T24]: eps = tau z / ||z||, z ~ N(0, I) over the run's filters and biases, fresh every step
    (``randsam_parts``: drawn in full in weight space, only its projections and norm in coefficient space)."""
    u, zb, znorm = ens.randsam_parts(batch, step)
    scaled = perturbation("sam", [u] if zb is None else [u, zb], radius, batch_dims=1, norm=znorm)
    return Perturbation(scaled[0], scaled[1] if zb is not None else None)


def sam_inf_rule(ens, batch, grad, radius, step) -> Perturbation:
    """SAM with p = inf [F21]: eps = tau sign(g) coordinate-wise (weight space only: sign(g) leaves the span)."""
    return _as_perturbation(ens, batch, perturbation("sam_inf", ens.grad_tensors(batch, grad), radius, batch_dims=1))


def asam_rule(ens, batch, grad, radius, step) -> Perturbation:
    """ASAM [K21]: eps = tau T^2 g / ||T g||, T = |w| + eta_a on the weights, 1 on the biases (weight space only)."""
    params = [ens.W] if ens.b is None else [ens.W, ens.b]
    eps = perturbation("asam", ens.grad_tensors(batch, grad), radius, params=params,
                       adaptive=[True, ens.net.extra_is_weight][:len(params)], eta_a=[ens.asam_eta.reshape(-1, *([1] * (p.dim() - 1))) for p in params],
                       batch_dims=1)
    return _as_perturbation(ens, batch, eps)


RULE_FUNCTIONS = {"sam": sam_rule, "usam": usam_rule, "msam": msam_rule, "randsam": randsam_rule,
                  "sam_inf": sam_inf_rule, "asam": asam_rule}


# ----------------------------------------------------------------------------------------------------------------
# One step
# ----------------------------------------------------------------------------------------------------------------
def perturbed_gradient(ens: Ensemble, batch: StepBatch, grad: Gradient, radius: torch.Tensor,
                       step: int) -> tuple[Gradient, torch.Tensor]:
    """The gradient at W + eps, eps from each run's rule (radius 0: eps = 0, the gradient at W). With several
    rules in the ensemble each is applied with the radius of its own runs only and the shifts add up (exact: the
    others' are 0)."""
    if len(ens.present) == 1:  # one rule (plus SGD runs): the caller knows some radius is > 0
        pert = RULE_FUNCTIONS[ens.present[0]](ens, batch, grad, radius, step)
    else:
        pert = None
        for rule in ens.present:
            r = radius * batch.per_run(ens.uses[rule]).to(radius.dtype)
            if bool((r > 0).any()):
                pert = _add(pert, RULE_FUNCTIONS[rule](ens, batch, grad, r, step))
    grad = _gradient_at(ens, batch, pert)
    return grad, grad.finite if pert.finite is None else grad.finite & pert.finite


def _add(a: Perturbation | None, b: Perturbation) -> Perturbation:
    """Two rules' perturbations of disjoint sets of runs (each is exactly 0 on the other's runs)."""
    if a is None:
        return b
    finite = a.finite if b.finite is None else (b.finite if a.finite is None else a.finite & b.finite)
    return Perturbation(a.shift + b.shift, None if a.db is None else a.db + b.db, finite)


def chunk_batch(ens: Ensemble, batch: StepBatch) -> StepBatch:
    """The batch as R C virtual runs, run r's chunk c weighted 1/M_r on its samples (the chunk's mean loss)."""
    C = ens.C
    rep = lambda t: None if t is None else t.repeat_interleave(C, 0)  # noqa: E731
    return StepBatch(None, batch.gram, rep(batch.proj), rep(batch.y), rep(batch.yhat), batch.basis, rep(batch.b),
                     rep(batch.mu_norm), ens.chunk_weights, C)


def chunked_gradient(ens: Ensemble, batch: StepBatch, radius: torch.Tensor,
                     step: int) -> tuple[Gradient, torch.Tensor]:
    """m-sharpness [F21]: every chunk of M samples is perturbed with its own gradient (the rule on the chunk's mean
    loss), and the run steps with the mean over its chunks of their gradients at their own perturbed points, as
    ``theory_sim.sam.optim.SAM.step_chunked`` does with equal chunk weights."""
    vb = chunk_batch(ens, batch)
    R, C = ens.R, ens.C
    grad0 = ens.gradient(vb, vb.proj, vb.b)
    grad, finite = perturbed_gradient(ens, vb, grad0, vb.per_run(radius) * (vb.weights > 0).any(1), step)
    return _mean_over_chunks(grad, R, C, ens.chunk_scale, vb.weights > 0), (finite & grad0.finite).reshape(R, C).all(1)


def _mean_over_chunks(g: Gradient, R: int, C: int, scale: torch.Tensor, member: torch.Tensor) -> Gradient:
    """Run r's gradient (1/C_r) sum_c g_(r, c) from its virtual runs (padding chunks are exact zeros); f is each
    sample's output at its own chunk's point, the noise-active fraction the sum of the chunks' (each counts its own
    samples over the whole batch)."""
    def fold(t):
        return t.reshape(R, C, *t.shape[1:]).sum(1)

    def scaled(t):
        return fold(t) * expand_runs(scale, t)

    return Gradient(scaled(g.loss), fold(g.f * member), scaled(g.coefs), None if g.db is None else scaled(g.db),
                    scaled(g.a_sig), scaled(g.a_noise), fold(g.noise_active), g.finite.reshape(R, C).all(1))


def _where(mask: torch.Tensor, a: Gradient, b: Gradient) -> Gradient:
    """Per run: a where ``mask``, else b."""
    def pick(x, y):
        return None if x is None else torch.where(expand_runs(mask, x), x, y)

    return Gradient(pick(a.loss, b.loss), pick(a.f, b.f), pick(a.coefs, b.coefs), pick(a.db, b.db),
                    pick(a.a_sig, b.a_sig), pick(a.a_noise, b.a_noise), pick(a.noise_active, b.noise_active),
                    pick(a.finite, b.finite))


class UpdatePoint(NamedTuple):
    """The last update's batch loss at W (R,) and the runs it perturbed (R,): with the returned gradient's loss,
    L_I(W + eps), this gives the perturbed loss a rule reaches and its gain L_I(W + eps) - L_I(W)."""
    clean_loss: torch.Tensor
    perturbed: torch.Tensor


def update_gradient(ens: Ensemble, batch: StepBatch, step: int,
                    plain: Gradient | None = None) -> tuple[Gradient, torch.Tensor]:
    """The gradient each run steps with (at W for SGD, at W + eps for the SAM family) and whether its
    pre-activations at W and at every point it was evaluated were finite. ``plain``: the gradient at W on this
    batch, when the caller has it already. Leaves ``ens.update_point`` (``UpdatePoint``); the returned gradient's
    ``loss`` is the batch loss where it was taken, L_I(W + eps) (with m-sharpness: the mean over chunks of each
    chunk's loss at its own W + eps_c)."""
    grad = ens.gradient(batch, batch.proj, batch.b) if plain is None else plain
    finite = grad.finite
    radius = ens.tau * ((ens.sam_until > step) & ens.active).to(ens.dtype)
    # what the trajectory's perturbed_loss_gain compares with: L_I(W) on this batch, and which runs get an eps
    ens.update_point = UpdatePoint(grad.loss, radius > 0)
    if not bool((radius > 0).any()):
        return grad, finite
    if ens.chunked is None:
        grad, ok = perturbed_gradient(ens, batch, grad, radius, step)
        return grad, finite & ok
    whole = radius * (~ens.chunked).to(ens.dtype)
    if bool((whole > 0).any()):
        grad, ok = perturbed_gradient(ens, batch, grad, whole, step)
        finite = finite & ok
    if bool((radius * ens.chunked > 0).any()):
        chunked, ok = chunked_gradient(ens, batch, radius * ens.chunked.to(ens.dtype), step)
        grad, finite = _where(ens.chunked, chunked, grad), finite & ok
    return grad, finite

