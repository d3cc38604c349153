"""The three notions of sharpness of [W23] (docs/science.md §7), each a difference of losses on the rho-ball around w.

- worst direction   R_Max(w) = max_{||v|| <= 1} L(w + rho v) - L(w)            ~ rho^2 lambda_1(H) / 2
- ascent direction  R_Asc(w) = L(w + rho g/||g||) - L(w),  g = grad L(w)       (what SAM evaluates [F21])
- average direction R_Avg(w) = E_{z ~ N(0,I)} L(w + rho z/||z||) - L(w)       ~ rho^2 Tr(H) / (2D)

The asymptotics hold at a minimiser as rho -> 0 (second-order Taylor expansion; E[u u^T] = I/D for u uniform on the
unit sphere). [W23] shows full-batch SAM regularises lambda_1 (R_Max's limit) and batch-size-1 SAM the trace
(R_Avg's limit), while R_Asc on its own can be anything between rho^2 lambda_min/2 and rho^2 lambda_1/2 near the
minimiser manifold.

[W23] Wen, Ma, Li. How Does Sharpness-Aware Minimization Minimize Sharpness? ICLR 2023, arXiv 2211.05729.
[F21] Foret, Kleiner, Mobahi, Neyshabur. Sharpness-Aware Minimization. ICLR 2021, arXiv 2010.01412.
"""
from __future__ import annotations

import torch

from theory_sim.config import check_float, check_int
from theory_sim.sam.perturbation import ascent_step, group_norm, perturbation
from theory_sim.sharpness.estimate import Estimate, make_generator
from theory_sim.sharpness.objective import Objective


def _check_rho(rho) -> None:
    check_float("rho", rho, 0.0, lo_open=True)


def r_asc(obj: Objective, rho: float) -> float:
    """R_Asc = L(w + rho g/||g||) - L(w), exactly (two loss evaluations and one gradient).

    The perturbation is SAM's eps [F21]; at a point with g = 0 the direction is undefined and eps = 0 (R_Asc = 0).
    """
    _check_rho(rho)
    eps = perturbation("sam", obj.grad(), rho)
    return float(obj.loss(obj.shifted(eps)) - obj.loss())


def r_max(obj: Objective, rho: float, n_steps: int = 50, n_restarts: int = 4, lr: float = 1.0, *,
          seed: int | torch.Generator = 0) -> float:
    """R_Max = max_{||eps|| <= rho} L(w + eps) - L(w), by projected normalised gradient ascent on the ball.

        eps <- Proj_{||eps|| <= rho}( eps + lr * rho * g(w + eps) / ||g(w + eps)|| )

    (``theory_sim.sam.perturbation.ascent_step``, the step of multi-step SAM with ascent length lr * rho).
    Steps are normalised (length lr * rho), so ``lr`` is a fraction of the radius and does not depend on the
    scale of the loss. On a quadratic at its minimum with lr >= 1 this is essentially power iteration for v_1.
    Starts: the SAM point rho g/||g|| (so the result is >= R_Asc) and ``n_restarts`` uniform random points on the
    sphere. Every iterate lies in the ball, so the best loss seen is a valid lower bound of the true maximum;
    that best value is returned.
    """
    _check_rho(rho)
    check_int("n_steps", n_steps, 0)
    check_int("n_restarts", n_restarts, 0)
    check_float("lr", lr, 0.0, lo_open=True)
    gen = make_generator(seed, obj.device)
    starts = [perturbation("sam", obj.grad(), rho)]
    starts += [perturbation("randsam", obj.params, rho, generator=gen) for _ in range(n_restarts)]
    best = -float("inf")
    for eps in starts:
        for step in range(n_steps + 1):
            value, g = obj.value_and_grad(obj.shifted(eps))
            best = max(best, float(value))
            if step == n_steps:
                break
            if float(group_norm(g)) == 0.0:  # stationary point of the ascent: nothing more to gain here
                break
            eps = ascent_step(eps, g, rho, alpha=lr * rho)
    return best - float(obj.loss())


def r_avg(obj: Objective, rho: float, n_samples: int = 256, *, seed: int | torch.Generator = 0) -> Estimate:
    """R_Avg = E_u L(w + rho u) - L(w), u = z/||z|| uniform on the unit sphere, by Monte Carlo.

    Returns an ``Estimate`` (mean, standard error, n); ``.ci(0.95)`` gives a confidence interval. The directions
    are Rand-SAM perturbations [T24] drawn from ``seed``: the same seed gives the same directions, so estimates at
    different rho (or of different objectives with the same parameter shapes) use common random numbers.
    """
    _check_rho(rho)
    check_int("n_samples", n_samples, 2)
    gen = make_generator(seed, obj.device)
    base = obj.loss()
    samples = torch.empty(n_samples, dtype=torch.float64)
    for i in range(n_samples):
        eps = perturbation("randsam", obj.params, rho, generator=gen)
        samples[i] = (obj.loss(obj.shifted(eps)) - base).double()
    return Estimate.from_samples(samples)
