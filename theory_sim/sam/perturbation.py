"""Perturbation rules of the SAM family: one mechanism, pluggable rules.

Every member of the family is "perturb the weights by eps, take the gradient there, restore, step the base
optimizer" [F21, K21, T24]; they differ only in how eps is built from the gradient g (and the weights w):

- ``sam``     : eps = rho g / ||g||_2                                   (SAM, p = 2)            [F21]
- ``sam_inf`` : eps = rho sign(g)                                       (SAM, p = inf)          [F21]
- ``asam``    : eps = rho T^2 g / ||T g||_2, T = |w| + eta_a on the scaled tensors, 1 on the others   [K21]
- ``randsam`` : eps = rho z / ||z||_2, z ~ N(0, I) fresh at every call  (Rand-SAM)              [T24]

Multi-step SAM [T24, F21 App. C.6] and [W23]'s R_Max take projected normalized ascent steps in the rho-ball:
``ascent_step`` is that step, written once for the CIFAR optimizer (``theory_sim.sam.optim.SAM.ascent_step``), the
two-layer CNN trainer (``theory_sim.cnn.rules.msam_rule``) and ``theory_sim.sharpness.notions.r_max``; the callers
only loop over it.

The same functions serve a single model (``batch_dims=0``: one norm over all tensors) and the batched ensemble of
two-layer CNNs (``batch_dims=1``: the leading axis of every tensor is the run, every run gets its own norm and
its own rho) — so the CIFAR optimizer and the theory trainer share one implementation.
"""
from __future__ import annotations

from typing import Sequence

import torch

from theory_sim.sam import registry

RULES = registry.torch_rules()   # the rules ``perturbation`` builds (theory_sim.sam.registry)


def expand_runs(x: torch.Tensor | float, like: torch.Tensor, batch_dims: int = 1) -> torch.Tensor | float:
    """Broadcast a per-run quantity (shape = batch shape, e.g. (R,)) against a tensor with ``batch_dims`` leading
    axes (e.g. (R, ...)) by appending singleton axes; a float or 0-d tensor is returned as it is."""
    if not torch.is_tensor(x) or x.dim() == 0:
        return x
    return x.reshape(x.shape + (1,) * (like.dim() - batch_dims))


def group_norm(tensors: Sequence[torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
    """L2 norm over all tensors jointly, reduced over every axis except the first ``batch_dims``."""
    total = None
    for t in tensors:
        sq = t.pow(2).sum(dim=tuple(range(batch_dims, t.dim()))) if t.dim() > batch_dims else t.pow(2)
        total = sq if total is None else total + sq
    return total.sqrt()


def _per_tensor(name: str, value, n: int) -> list | None:
    """``value`` as one entry per tensor if it is a list/tuple (per-tensor radii or offsets), else ``None``."""
    if not isinstance(value, (list, tuple)):
        return None
    if len(value) != n:
        raise ValueError(f"{name}: a sequence needs one entry per tensor ({n}), got {len(value)}")
    return list(value)


def _scale_to_radius(dirs: Sequence[torch.Tensor], rho, batch_dims: int, norm=None) -> list[torch.Tensor]:
    """rho * d / ||d|| with a zero direction mapped to a zero perturbation (no 0/0). ``rho`` may be a list with one
    radius per tensor: the norm stays joint over all tensors, tensor k is scaled by rho[k]."""
    norm = group_norm(dirs, batch_dims) if norm is None else norm
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))

    def scale_for(r):
        return torch.where(norm > 0, torch.as_tensor(r, dtype=norm.dtype, device=norm.device) / safe,
                           torch.zeros_like(norm))

    rhos = _per_tensor("rho", rho, len(dirs))
    if rhos is None:
        scale = scale_for(rho)
        return [d * expand_runs(scale, d, batch_dims) for d in dirs]
    scales: dict = {}  # one scale per distinct radius
    out = []
    for d, r in zip(dirs, rhos):
        key = id(r) if torch.is_tensor(r) else r
        if key not in scales:
            scales[key] = scale_for(r)
        out.append(d * expand_runs(scales[key], d, batch_dims))
    return out


def perturbation(rule: str, grads: Sequence[torch.Tensor], rho, *, params: Sequence[torch.Tensor] | None = None,
                 adaptive: Sequence[bool] | None = None, eta_a: float = 0.01, batch_dims: int = 0,
                 generator: torch.Generator | None = None, norm: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Return eps (one tensor per gradient) for the given rule.

    ``rho`` is a float or a tensor of the batch shape (one radius per run), or a list/tuple with one such radius per
    tensor (per-parameter-group radii, davda54/sam style: the norm in ``sam``/``asam``/``randsam`` stays joint over
    all tensors and tensor k is scaled by rho[k]). ``params`` and ``adaptive`` are needed for ASAM only:
    ``adaptive[k]`` says whether tensor k is scaled by |w| + eta_a or by 1 [K21]; ``eta_a`` is a float or a list
    with one offset per tensor. ``norm`` (rule ``sam``) overrides ||g||: the two-layer CNN trainer passes gradients as
    coefficients on a non-orthonormal basis, whose Euclidean norm is not the norm of the gradient itself.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "sam":
        return _scale_to_radius(grads, rho, batch_dims, norm=norm)
    if rule == "sam_inf":
        rhos = _per_tensor("rho", rho, len(grads)) or [rho] * len(grads)
        return [torch.sign(g) * expand_runs(torch.as_tensor(r, dtype=g.dtype, device=g.device), g, batch_dims)
                for g, r in zip(grads, rhos)]
    if rule == "randsam":
        zs = [torch.randn(g.shape, dtype=g.dtype, device=g.device, generator=generator) for g in grads]
        return _scale_to_radius(zs, rho, batch_dims)
    # asam
    if params is None:
        raise ValueError("asam needs params (the current weights)")
    adaptive = [True] * len(grads) if adaptive is None else list(adaptive)
    etas = _per_tensor("eta_a", eta_a, len(grads)) or [eta_a] * len(grads)
    scales = [(p.abs() + e) if a else torch.ones_like(p) for p, a, e in zip(params, adaptive, etas)]
    tg = [t * g for t, g in zip(scales, grads)]
    norm = group_norm(tg, batch_dims)
    # eps = rho T (T g) / ||T g||
    return [t * d for t, d in zip(scales, _scale_to_radius(tg, rho, batch_dims, norm=norm))]


def project_to_ball(eps: Sequence[torch.Tensor], rho, batch_dims: int = 0,
                    norm: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Project eps onto the L2 ball of radius rho (one radius per run with ``batch_dims=1``). ``norm`` overrides
    ||eps|| (shape = batch shape), as in ``perturbation``: coefficients on a non-orthonormal basis."""
    norm = group_norm(eps, batch_dims) if norm is None else norm
    rho_t = torch.as_tensor(rho, dtype=norm.dtype, device=norm.device)
    factor = torch.where(norm > rho_t, rho_t / torch.where(norm > 0, norm, torch.ones_like(norm)),
                         torch.ones_like(norm))
    return [e * expand_runs(factor, e, batch_dims) for e in eps]


def usam_perturbation(grads: Sequence[torch.Tensor], rho, batch_dims: int = 0) -> list[torch.Tensor]:
    """USAM, unnormalised SAM: eps = rho g (no division by ||g||; rho a float or one radius per run)."""
    return [g * expand_runs(torch.as_tensor(rho, dtype=g.dtype, device=g.device), g, batch_dims) for g in grads]


def ascent_step(eps: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rho, alpha=None, *,
                batch_dims: int = 0, norm_fn=None, rule: str = "sam") -> list[torch.Tensor]:
    """One step of projected normalized gradient ascent in the rho-ball, g the gradient at w + eps:

        rule "sam"      eps <- Proj_{||.||_2 <= rho}(eps + alpha g / ||g||_2)     (a zero g adds nothing)
        rule "sam_inf"  eps <- clip(eps + alpha sign(g), -rho, rho)             (the L_inf ball is a box)

    alpha = rho by default, so one step from eps = 0 is SAM's eps. The step of multi-step SAM [T24, F21 App. C.6]
    (``SAM.ascent_step``, ``cnn.rules.msam_rule``) and of R_Max (``sharpness.notions.r_max``, alpha = lr rho).
    ``rho``/``alpha`` are floats or one radius per run (``batch_dims=1``); rule ``sam_inf`` also takes one per
    tensor (a list). ``norm_fn(tensors) -> norm`` (shape = batch shape, rule sam) replaces the Euclidean norm: the
    two-layer CNN trainer holds eps and g as coefficients on a non-orthonormal basis, whose norm is a quadratic
    form in the Gram matrix."""
    alpha = rho if alpha is None else alpha
    if rule == "sam_inf":
        rhos = _per_tensor("rho", rho, len(eps)) or [rho] * len(eps)
        step = perturbation("sam_inf", grads, alpha, batch_dims=batch_dims)
        return [_clip(e + s, r, batch_dims) for e, s, r in zip(eps, step, rhos)]
    if rule != "sam":
        raise ValueError(f"ascent_step: rule must be 'sam' or 'sam_inf', got {rule!r}")
    norm_fn = norm_fn or (lambda ts: group_norm(ts, batch_dims))
    step = _scale_to_radius(grads, alpha, batch_dims, norm=norm_fn(grads))
    eps = [e + s for e, s in zip(eps, step)]
    return project_to_ball(eps, rho, batch_dims, norm=norm_fn(eps))


def _clip(e: torch.Tensor, r, batch_dims: int) -> torch.Tensor:
    """e clipped to [-r, r] coordinate-wise, r a float or one radius per run."""
    if not torch.is_tensor(r):
        return e.clamp(-r, r)
    r = expand_runs(r.to(e.dtype), e, batch_dims)
    return torch.maximum(torch.minimum(e, r), -r)
