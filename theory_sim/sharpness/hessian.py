"""Hessian spectrum tools built on Hessian-vector products only (the Hessian is never formed).

- ``top_eigenvalues``: Lanczos with full reorthogonalisation, or power iteration with deflation.
- ``hutchinson_trace``: Tr(H) = E[v^T H v] for Rademacher v, with a standard error.
- ``slq_density``: stochastic Lanczos quadrature estimate of the spectral density
  phi(t) = (1/D) sum_i delta(t - lambda_i), Gaussian-smoothed.
- ``grad_top_eigvec_cosine``: |cos(grad L, v_1)|, the alignment that drives SAM's implicit bias [W23].

[W23] Wen, Ma, Li. How Does Sharpness-Aware Minimization Minimize Sharpness? ICLR 2023, arXiv 2211.05729.
[F21] Foret, Kleiner, Mobahi, Neyshabur. Sharpness-Aware Minimization. ICLR 2021, arXiv 2010.01412.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from theory_sim.config import ConfigError, check_choice, check_float, check_int
from theory_sim.sharpness.estimate import Estimate, make_generator, rademacher
from theory_sim.sharpness.objective import Objective, flatten

Matvec = Callable[[torch.Tensor], torch.Tensor]


class Eigenpairs(NamedTuple):
    """Top-k eigenpairs: ``values`` (k,) in decreasing order, ``vectors`` (k, D) unit rows (or a list of
    per-parameter tensor lists with ``as_list=True``), ``residuals`` (k,) = ||H v - lambda v||, and the number of
    Hessian-vector products used."""

    values: torch.Tensor
    vectors: torch.Tensor | list
    residuals: torch.Tensor
    n_hvp: int


# --------------------------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------------------------
def lanczos(matvec: Matvec, v0: torch.Tensor, n_steps: int, *, restart: torch.Generator | None = None,
            callback: Callable[[list, list, int], bool] | None = None):
    """Lanczos tridiagonalisation of a symmetric operator with full reorthogonalisation.

    Builds an orthonormal basis Q of the Krylov space span{v0, H v0, ...} such that Q^T H Q = T is tridiagonal
    (diagonal ``alpha``, off-diagonal ``beta[:-1]``). Every new vector is orthogonalised against ALL previous ones
    (twice, "twice is enough"), which costs O(m D) memory but keeps the Ritz values free of the spurious copies that
    plain three-term Lanczos produces in floating point.

    Breakdown (beta ~ 0) means an invariant subspace has been found; beta is then set to exactly 0 and the
    iteration stops, unless ``restart`` is a generator: then it continues from a fresh random vector orthogonal to
    Q (a new diagonal block of T), which is how copies of a multiple eigenvalue are found — a single Krylov space
    contains one vector per distinct eigenvalue. ``callback(alpha, beta, start)`` (``start`` = first index of the
    current block) is called after every step; returning True stops.

    Returns ``alpha`` (m,), ``beta`` (m,) with ``beta[-1]`` the norm of the last residual, and Q (m, D).
    """
    dim = v0.numel()
    n_steps = min(n_steps, dim)
    Q = torch.zeros(n_steps, dim, dtype=v0.dtype, device=v0.device)
    Q[0] = v0 / v0.norm()
    alpha: list[float] = []
    beta: list[float] = []
    scale, start = 0.0, 0  # running estimate of ||H|| (relative breakdown threshold); first index of this block
    for j in range(n_steps):
        w = matvec(Q[j])
        a = torch.dot(w, Q[j])
        w = w - a * Q[j]
        if j > start:
            w = w - beta[-1] * Q[j - 1]
        for _ in range(2):
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = float(w.norm())
        scale = max(scale, abs(float(a)) + b)
        breakdown = b <= 1e-10 * max(scale, 1e-300)
        alpha.append(float(a))
        beta.append(0.0 if breakdown else b)
        if (callback is not None and callback(alpha, beta, start)) or j + 1 == n_steps:
            break
        if breakdown:
            if restart is None:
                break
            w = torch.randn(dim, dtype=v0.dtype, device=v0.device, generator=restart)
            for _ in range(2):
                w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
            start = j + 1
        Q[j + 1] = w / w.norm()
    m = len(alpha)
    return torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64), Q[:m]


def tridiag_eigh(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the symmetric tridiagonal T(alpha, beta[:len(alpha)-1]), in float64."""
    m = alpha.numel()
    T = torch.diag(alpha)
    if m > 1:
        off = beta[: m - 1]
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(T)


def _order(values: torch.Tensor, which: str) -> torch.Tensor:
    """Indices sorting Ritz values: decreasing (``LA``) or decreasing in magnitude (``LM``)."""
    key = values if which == "LA" else values.abs()
    return torch.argsort(key, descending=True)


def _lanczos_top(matvec: Matvec, dim: int, dtype, device, k: int, which: str, max_iter: int, tol: float,
                 gen: torch.Generator):
    counter = {"n": 0}

    def counted(v):
        counter["n"] += 1
        return matvec(v)

    def key(values):
        return values if which == "LA" else values.abs()

    def converged(alpha, beta, start) -> bool:
        # Ritz pair (theta_i, Q s_i) has residual ||H Q s_i - theta_i Q s_i|| = |beta_m * s_i[m]| (exact
        # arithmetic, full reorthogonalisation keeps it honest); stop once the k wanted ones are small.
        if len(alpha) < k or tol <= 0:
            return False
        a64, b64 = torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)
        theta, S = tridiag_eigh(a64, b64)
        idx = _order(theta, which)[:k]
        thresh = tol * float(theta.abs().max().clamp_min(1e-300))
        if not bool(((beta[-1] * S[-1, idx]).abs() <= thresh).all()):
            return False
        # The current block (after a restart) starts from a random vector orthogonal to all earlier blocks, so its
        # top Ritz value converges to the largest eigenvalue not seen yet: wait for it, and if it belongs to the
        # top k, or the first block just broke down, look further (another restart) for copies.
        bt, bS = tridiag_eigh(a64[start:], b64[start:])
        top = int(_order(bt, which)[0])
        if start > 0 and abs(beta[-1] * float(bS[-1, top])) > thresh:
            return False
        if beta[-1] == 0.0 and len(alpha) < dim:
            if start == 0 or float(key(bt[top])) >= float(key(theta[idx[-1]])) - thresh:
                return False
        return True

    v0 = torch.randn(dim, dtype=dtype, device=device, generator=gen)
    alpha, beta, Q = lanczos(counted, v0, max_iter, restart=gen, callback=converged)
    theta, S = tridiag_eigh(alpha, beta)
    idx = _order(theta, which)[:k]
    if idx.numel() < k:
        raise ConfigError(f"k must be <= the number of Lanczos steps taken ({idx.numel()}); raise max_iter")
    vecs = S[:, idx].T.to(dtype) @ Q
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    res = (beta[-1] * S[-1, idx]).abs()
    if tol > 0 and len(alpha) < dim and not bool((res <= tol * theta.abs().max().clamp_min(1e-300)).all()):
        warnings.warn(f"Lanczos: top-{k} Ritz pairs not converged to tol={tol} in {len(alpha)} steps "
                      f"(max relative residual {float(res.max() / theta.abs().max()):.2e}); raise max_iter",
                      RuntimeWarning, stacklevel=3)
    return theta[idx], vecs, res, counter["n"]


# --------------------------------------------------------------------------------------------------------------
# power iteration
# --------------------------------------------------------------------------------------------------------------
def _power_one(matvec: Matvec, found: list[torch.Tensor], shift: float, v: torch.Tensor, max_iter: int,
               tol: float, scale: float):
    """Dominant eigenpair of P (H + shift I) P, P = projector off the ``found`` eigenvectors (deflation)."""

    def project(x):
        for u in found:
            x = x - torch.dot(u, x) * u
        return x

    v = project(v)
    v = v / v.norm()
    lam, res, n = 0.0, math.inf, 0
    for n in range(1, max_iter + 1):
        w = project(matvec(v) + shift * v)
        lam = float(torch.dot(v, w))                       # Rayleigh quotient of the shifted operator
        res = float((w - lam * v).norm())                  # = ||H v - (lam - shift) v|| (shift cancels)
        v = w / w.norm()
        if res <= tol * max(abs(lam - shift), scale, 1e-300):
            break
    return lam - shift, v, res, n


def _power_top(matvec: Matvec, dim: int, dtype, device, k: int, which: str, max_iter: int, tol: float,
               gen: torch.Generator):
    """Power iteration with deflation.

    Plain power iteration finds the eigenvalue of largest MAGNITUDE. For ``which="LA"`` (largest algebraic) the
    eigenvalues found in magnitude order are accepted while they are >= 0: every eigenvalue not found yet is smaller
    in magnitude, hence smaller. Once a negative one appears, the rest is searched on H + s I with s = |that
    eigenvalue| >= -lambda_min, where magnitude order is algebraic order (slower: the shift shrinks the gaps).
    """
    vals, vecs, ress, found = [], [], [], []
    shift, scale, n_hvp = 0.0, 0.0, 0
    while len(vals) < k:
        if len(found) >= dim:
            raise ConfigError(f"k must be <= D = {dim}")
        v0 = torch.randn(dim, dtype=dtype, device=device, generator=gen)
        lam, u, res, n = _power_one(matvec, found, shift, v0, max_iter, tol, scale)
        n_hvp += n
        if res > tol * max(abs(lam), scale, 1e-300):
            warnings.warn(f"power iteration: eigenpair {len(vals) + 1} not converged to tol={tol} in {max_iter} "
                          f"iterations (relative residual {res / max(abs(lam), scale, 1e-300):.2e})",
                          RuntimeWarning, stacklevel=3)
        scale = max(scale, abs(lam))
        found.append(u)
        if which == "LM" or shift > 0 or lam >= 0:
            vals.append(lam), vecs.append(u), ress.append(res)
        else:
            shift = -lam  # a negative eigenvalue of largest remaining magnitude: -lam >= -lambda_min
    values = torch.tensor(vals, dtype=torch.float64)
    order = _order(values, which)
    return values[order], torch.stack(vecs)[order], torch.tensor(ress, dtype=torch.float64)[order], n_hvp


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------
def _flat_matvec(obj: Objective, hvp_method: str | None) -> Matvec:
    return lambda v: obj.hvp(v, method=hvp_method)


def _graph_cache(obj: Objective, cache_graph: bool, hvp_method: str | None):
    """``obj.cached_graph()`` if asked for (double-backward HVPs only), else a no-op context."""
    if not isinstance(cache_graph, bool):
        raise ConfigError(f"cache_graph must be True or False, got {cache_graph!r}")
    if not cache_graph:
        return contextlib.nullcontext()
    if (hvp_method or obj.hvp_method) != "double_backward":
        raise ConfigError("cache_graph=True needs hvp_method='double_backward'")
    return obj.cached_graph()


def top_eigenvalues(obj: Objective, k: int = 1, *, method: str = "lanczos", which: str = "LA",
                    max_iter: int | None = None, tol: float | None = None, seed: int | torch.Generator = 0,
                    as_list: bool = False, hvp_method: str | None = None, cache_graph: bool = False) -> Eigenpairs:
    """The k largest eigenvalues of the Hessian H of ``obj`` at its point, with unit eigenvectors.

    ``which="LA"``: largest algebraic (lambda_1 >= lambda_2 >= ..., the sharpness of [W23, F21]);
    ``which="LM"``: largest in magnitude.

    ``method="lanczos"``: Lanczos with full reorthogonalisation (restarted on breakdown), stopped once the k wanted
    Ritz pairs have residual ||H v - theta v|| <= tol * max|theta| (default tol 1e-8, max_iter min(D, 100 + 2k)).
    Eigenvalue errors are then O(residual^2 / gap). ``tol=0`` runs exactly ``max_iter`` steps (for benchmarks).

    ``method="power"``: power iteration with deflation (see ``_power_top``), stopped at relative residual tol
    (default 1e-7, max_iter 2000 per eigenpair). Converges at rate lambda_2/lambda_1: slow for small gaps.

    A RuntimeWarning is issued when the requested tolerance is not reached. ``cache_graph=True``: see
    ``Objective.cached_graph`` (several times faster per HVP, much more memory).
    """
    check_int("k", k, 1, obj.dim)
    check_choice("method", method, ("lanczos", "power"))
    check_choice("which", which, ("LA", "LM"))
    if max_iter is None:
        max_iter = min(obj.dim, 100 + 2 * k) if method == "lanczos" else 2000
    check_int("max_iter", max_iter, k if method == "lanczos" else 1)
    if tol is None:
        tol = 1e-8 if method == "lanczos" else 1e-7
    check_float("tol", tol, 0.0)
    gen = make_generator(seed, obj.device)
    run = _lanczos_top if method == "lanczos" else _power_top
    with _graph_cache(obj, cache_graph, hvp_method):
        vals, vecs, res, n_hvp = run(_flat_matvec(obj, hvp_method), obj.dim, obj.dtype, obj.device, k, which,
                                     max_iter, tol, gen)
    vecs = [obj.unflatten(v) for v in vecs] if as_list else vecs
    return Eigenpairs(vals, vecs, res, n_hvp)


def hutchinson_trace(obj: Objective, n_samples: int, *, seed: int | torch.Generator = 0,
                     hvp_method: str | None = None, cache_graph: bool = False) -> Estimate:
    """Hutchinson's estimator Tr(H) ~ (1/n) sum_i v_i^T H v_i, v_i Rademacher (E[v v^T] = I).

    Rademacher probes minimise the variance among i.i.d. probes: Var(v^T H v) = 2 sum_{i != j} H_ij^2.
    Returns an ``Estimate`` (value, standard error over the n samples, n).
    """
    check_int("n_samples", n_samples, 2)
    gen = make_generator(seed, obj.device)
    samples = torch.empty(n_samples, dtype=torch.float64)
    with _graph_cache(obj, cache_graph, hvp_method):
        for i in range(n_samples):
            v = rademacher((obj.dim,), obj.dtype, obj.device, gen)
            samples[i] = torch.dot(v, obj.hvp(v, method=hvp_method)).double()
    return Estimate.from_samples(samples)


@dataclass
class SpectralDensity:
    """SLQ spectral density. ``density`` on ``grid`` integrates to ~1. ``nodes``/``weights`` (n_probes, m): the
    Gauss quadrature of each probe (weights of a probe sum to 1; padded with weight 0 if Lanczos stopped early)."""

    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float

    def moment(self, p: int = 1) -> float:
        """(1/n_probes) sum_probes sum_j w_j theta_j^p, an unbiased estimate of Tr(H^p)/D for p <= 2m-1."""
        return float((self.weights * self.nodes.pow(p)).sum(dim=1).mean())


def slq_density(obj: Objective, n_probes: int, n_steps: int, *, grid: int | torch.Tensor = 1001,
                sigma: float | None = None, seed: int | torch.Generator = 0,
                hvp_method: str | None = None, cache_graph: bool = False) -> SpectralDensity:
    """Stochastic Lanczos quadrature (Lin, Saad, Yang 2016; Ghorbani, Krishnan, Xiao 2019).

    For a unit probe q = v/||v|| (v Rademacher), m Lanczos steps give T = S diag(theta) S^T and the Gauss quadrature
    q^T f(H) q ~ sum_j tau_j f(theta_j), tau_j = S[0, j]^2. Averaging over probes estimates (1/D) Tr f(H); with
    f = Gaussian kernel of width sigma this is the smoothed density
        phi(t) = (1/n_probes) sum_probes sum_j tau_j N(t; theta_j, sigma^2).
    Its mean sum_j tau_j theta_j = q^T H q exactly, so the mean of phi is Hutchinson's Tr(H)/D.

    ``grid``: number of points (spanning the nodes +- 6 sigma) or explicit points. ``sigma`` default: 1% of the node
    range. At most D Lanczos steps are taken.
    """
    check_int("n_probes", n_probes, 1)
    check_int("n_steps", n_steps, 1)
    if sigma is not None:
        check_float("sigma", sigma, 0.0, lo_open=True)
    if not torch.is_tensor(grid):
        check_int("grid", grid, 2)
    gen = make_generator(seed, obj.device)
    matvec = _flat_matvec(obj, hvp_method)
    steps = min(n_steps, obj.dim)
    nodes = torch.zeros(n_probes, steps, dtype=torch.float64)
    weights = torch.zeros(n_probes, steps, dtype=torch.float64)
    with _graph_cache(obj, cache_graph, hvp_method):
        for p in range(n_probes):
            v = rademacher((obj.dim,), obj.dtype, obj.device, gen)
            alpha, beta, _ = lanczos(matvec, v, steps)
            theta, S = tridiag_eigh(alpha, beta)
            m = theta.numel()
            nodes[p, :m], weights[p, :m] = theta, S[0].pow(2)
            nodes[p, m:] = theta[-1]  # padding, weight 0
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    if torch.is_tensor(grid):
        ts = grid.to(torch.float64)
    else:
        ts = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, grid, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((ts[:, None, None] - nodes[None]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    density = (kernel * weights[None]).sum(dim=2).mean(dim=1)
    return SpectralDensity(ts, density, nodes, weights, float(sigma))


def grad_top_eigvec_cosine(obj: Objective, *, v1: torch.Tensor | None = None, **eig_kwargs) -> float:
    """|cos(grad L(w), v_1(H))| in [0, 1] (eigenvectors have no sign). [W23]: under full-batch SAM near a
    minimiser the gradient aligns with the top eigenvector. ``v1`` (flat) skips the Lanczos call; returns nan if
    the gradient is exactly zero."""
    g = flatten(obj.grad())
    if v1 is None:
        v1 = top_eigenvalues(obj, 1, **eig_kwargs).vectors[0]
    gn = g.norm()
    if float(gn) == 0.0:
        return float("nan")
    return float((torch.dot(g, v1) / (gn * v1.norm())).abs())
