"""Test error of trained networks: an exact-in-distribution Gaussian estimator and the plain held-out estimator.

Label noise is independent of x, and a point counts as misclassified when y f(W, x) <= 0, so

    err = (1 - p) * P(yhat f <= 0) + p * P(yhat f >= 0)   ( = p + (1 - 2p) P_clean(yhat f <= 0) when P(f = 0) = 0 )

(docs/science.md §5); p is the Bayes error. A ReLU network outputs exactly 0 with positive probability when every unit is
inactive, so the tie term is kept rather than assumed away. For a clean point the signal patch is deterministic given yhat and every noise patch enters
only through z = (<w_{j,r}, xi>)_{j,r}, which is Gaussian N(0, sigma_p^2 W Pi W^T) in R^{2m} (Pi projects off mu,
or is I for the [K23] variant). So P_clean is estimated from 2m-dimensional Gaussian draws: a cost independent of
d. Both labels yhat = +-1 are evaluated on the same draws (antithetic), which halves the variance of the estimate.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from theory_sim.cnn.data import STREAM_MC, STREAM_TEST, generate_for
from theory_sim.cnn.model import Params, TwoLayerCNN, finite_runs
from theory_sim.sam.perturbation import expand_runs
from theory_sim.seeding import seed_words


def _normalised(params: Params) -> Params:
    """Scale each run's (W, b) by its largest entry. f is positively homogeneous in (W, b), so the sign of f — all a
    test error depends on — is unchanged, and huge-but-finite weights cannot overflow the estimators. A run with a
    non-finite entry (a diverged run) is left as it is; the estimators report NaN for it."""
    ts = params.tensors()
    # max |t| = max(max t, -min t): two vectorised reductions instead of an abs pass over W (NaN propagates alike)
    peak = torch.stack([torch.maximum(t.flatten(1).amax(1), -t.flatten(1).amin(1)) for t in ts]).amax(0)
    peak = torch.where((peak > 0) & torch.isfinite(peak), peak, torch.ones_like(peak))
    return Params.from_tensors([t / expand_runs(peak, t) for t in ts])


def _noise_factor(gram: torch.Tensor, sigma_p: torch.Tensor) -> torch.Tensor:
    """L (R, 2m, 2m) with L L^T = sigma_p^2 gram, by an eigendecomposition with negative eigenvalues clipped to 0
    (robust when 2m > d). Should the batched solver fail to converge, each run is factored on its own (in float64)
    and a run that still fails gets a NaN factor, hence a NaN test error, instead of aborting every run."""
    try:
        evals, evecs = torch.linalg.eigh(gram)
    except torch.linalg.LinAlgError:
        L = torch.full_like(gram, math.nan)
        for r in range(gram.shape[0]):
            try:
                ev, V = torch.linalg.eigh(gram[r].double())
            except torch.linalg.LinAlgError:
                continue
            L[r] = (V * ev.clamp(min=0).sqrt()[None, :]).to(gram.dtype)
        return L * sigma_p[:, None, None]
    return evecs * evals.clamp(min=0).sqrt()[:, None, :] * sigma_p[:, None, None]


def noise_gram(W: torch.Tensor, project_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(W Pi W^T (R, 2m, 2m), W[..., 0] (R, 2, m)): the noise pre-activations' covariance / sigma_p^2, and the
    weights' first coordinate (<w, mu> = ||mu|| w_1). Pi projects off mu = ||mu|| e_1, or is I."""
    R, _, m, d = W.shape
    A = W.reshape(R, 2 * m, d)
    gram = A @ A.transpose(1, 2)
    w0 = W[..., 0]
    if project_noise:
        gram = gram - w0.reshape(R, 2 * m, 1) * w0.reshape(R, 1, 2 * m)
    return gram, w0


def standard_draws(configs, n_mc: int, K: int, width: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """(R, n_mc, K, width) standard normal draws, each run's from its own generator seeded from (seed, STREAM_MC):
    same seed, same numbers, whatever the ensemble. Re-using them across logged steps gives smooth trajectories."""
    out = torch.empty(len(configs), n_mc, K, width, dtype=dtype)
    gen = torch.Generator()
    # seed r = SeedSequence([rng_seed, STREAM_MC]).generate_state(1, uint64)[0] >> 1, hashed for every run at once
    for r, seed in enumerate(seed_words([(c.rng_seed, STREAM_MC) for c in configs])):
        gen.manual_seed(seed)
        torch.randn(n_mc, K, width, generator=gen, dtype=dtype, out=out[r])
    return out.to(device)


def gaussian_test_error(net: TwoLayerCNN, params: Params, configs, n_mc: int, chunk: int = 32,
                        draws: torch.Tensor | None = None):
    """Return (test_error, standard_error), each of shape (R,), from n_mc Gaussian draws per run.

    ``draws`` may hold pre-computed ``standard_draws`` (then n_mc is taken from it). A run with non-finite weights
    gets NaN for both.
    """
    params = _normalised(params)
    gram, w0 = noise_gram(params.W, configs[0].project_noise)
    return gaussian_test_error_from_gram(net, gram, w0, params.b, configs, n_mc, chunk, draws)


def gaussian_test_error_from_gram(net: TwoLayerCNN, gram: torch.Tensor, w0: torch.Tensor, b: torch.Tensor | None,
                                  configs, n_mc: int, chunk: int = 32, draws: torch.Tensor | None = None):
    """The estimator from the 2m x 2m Gram W Pi W^T, the first coordinates w0 of the filters and the biases — all
    it needs, so the trainer evaluates it without materialising W.

    Runs whose Gram, w0, bias or signal pre-activations are not finite (diverged weights, or a product that
    overflowed) get NaN for both outputs; the others are computed as usual (docs/science.md §3.3).
    """
    R, _, m = w0.shape
    ok = finite_runs(gram, w0, b)
    if not bool(ok.all()):
        err = torch.full((R,), math.nan, dtype=gram.dtype, device=gram.device)
        se = err.clone()
        idx = ok.nonzero().flatten()
        if len(idx):
            sub = [configs[i] for i in idx.tolist()]
            e, s = gaussian_test_error_from_gram(net, gram[idx], w0[idx], None if b is None else b[idx], sub, n_mc,
                                                 chunk, None if draws is None else draws[idx.to(draws.device)])
            err[idx], se[idx] = e, s
        return err, se
    c0 = configs[0]
    K = 1 if c0.noise_patches == "shared" else c0.P - 1
    mult = c0.P - 1 if c0.noise_patches == "shared" else 1
    dtype, device = gram.dtype, gram.device
    sigma_p = torch.tensor([c.sigma_p for c in configs], dtype=dtype, device=device)
    flip_p = torch.tensor([c.flip_p for c in configs], dtype=dtype, device=device)
    mu_norm = torch.tensor([c.mu_norm for c in configs], dtype=dtype, device=device)
    # scale invariance again (f is homogeneous in (W, b)): keeps huge-but-finite weights from overflowing
    peak = torch.maximum(gram.diagonal(dim1=1, dim2=2).clamp(min=0).amax(1).sqrt(), w0.flatten(1).abs().amax(1))
    if b is not None:
        peak = torch.maximum(peak, b.flatten(1).abs().amax(1))
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    gram = gram / peak[:, None, None] / peak[:, None, None]   # twice: peak**2 itself may overflow
    w0 = w0 / peak[:, None, None]
    b = b / peak[:, None, None] if b is not None else torch.zeros_like(w0)
    L = _noise_factor(gram, sigma_p)
    scale = net.a_f * net.a_p
    s = w0 * mu_norm[:, None, None]                                               # <w_{j,r}, mu>, (R, 2, m)
    bad = ~finite_runs(s, L)   # ||mu|| beyond the dtype's range, or a factorisation that failed: NaN, not 0
    errs, ses = [], []
    for lo in range(0, R, chunk):
        hi = min(R, lo + chunk)
        u = draws[lo:hi] if draws is not None else standard_draws(configs[lo:hi], n_mc, K, 2 * m, dtype, device)
        n_mc = u.shape[1]
        z = torch.bmm(u.reshape(hi - lo, -1, 2 * m), L[lo:hi].transpose(1, 2))   # (r, M K, 2m)
        # + bias (in place: the largest tensor), or the deep model's hidden layers
        z = net.last_layer(z.reshape(hi - lo, n_mc, K, 2, m), b[lo:hi, None, None], inplace=True).relu_()
        noise = scale * mult * z.sum(dim=(2, 4))                                 # (r, M, 2): per sign j
        noise_f = noise[..., 0] - noise[..., 1]                                   # (r, M)
        p = flip_p[lo:hi, None]
        e = 0.0
        for yhat in (1.0, -1.0):  # both true labels on the same draws (antithetic pairs)
            sig = scale * torch.relu(net.last_layer(yhat * s[lo:hi], b[lo:hi])).sum(-1)   # (r, 2)
            margin = yhat * ((sig[:, 0] - sig[:, 1])[:, None] + noise_f)          # (r, M)
            e = e + 0.5 * ((1 - p) * (margin <= 0).to(dtype) + p * (margin >= 0).to(dtype))
        errs.append(e.mean(1))
        ses.append(e.std(1) / math.sqrt(n_mc))
    err, se = torch.cat(errs), torch.cat(ses)
    return err.masked_fill(bad, math.nan), se.masked_fill(bad, math.nan)


def heldout_test_error(net: TwoLayerCNN, params: Params, configs, n_test: int, chunk: int = 8) -> torch.Tensor:
    """Fraction of n_test fresh samples (labels flipped with prob. p, as in training) with y f(W, x) <= 0; NaN for a
    run with non-finite weights or outputs (a NaN output would otherwise silently count as correct)."""
    out = []
    for lo in range(0, len(configs), chunk):
        hi = min(len(configs), lo + chunk)
        # in W's dimension: a dimension-free run's frame, where fresh noise's projection is all the network sees
        data = generate_for(configs[lo:hi], stream=STREAM_TEST, n=n_test, dtype=params.W.dtype,
                            device=params.W.device, d=params.W.shape[-1])
        sub = _normalised(Params.from_tensors([t[lo:hi] for t in params.tensors()]))
        f = net.output(sub, data)
        err = (data.y * f <= 0).to(params.W.dtype).mean(1)
        out.append(err.masked_fill(~(finite_runs(*sub.tensors()) & finite_runs(f)), math.nan))
    return torch.cat(out)
