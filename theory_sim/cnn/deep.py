"""A deeper patch-wise ReLU CNN on the sparse-coding data (docs/science.md §2.5), the open question 2 of [C23]:
does SAM still keep the network from memorising noise when the two-layer network gets hidden layers?

    f(W, V, x) = F_{+1}(x) - F_{-1}(x),    F_j(x) = (1/q) sum_{p=1..P} sum_{u=1..q} relu(h^{L-1}_{j,u}(x^(p)))
    h^1_{j}(x^(p)) = (<w_{j,1}, x^(p)>, ..., <w_{j,m}, x^(p)>)                         (the c23 filters, no bias)
    h^{l+1}_{j}    = V_{j,l} relu(h^l_j),   V_{j,1} in R^{q x m},  V_{j,l} in R^{q x q} (l = 2 .. L-2)

with L = ``depth`` layers and q = ``width`` hidden units (q = m for L = 2: F_j is then [C23]'s (1/m) sum_r sum_p
relu(<w_{j,r}, x^(p)>), the c23 network exactly). Every layer acts on one patch at a time (1x1 convolutions over
the patch axis), so f is a sum over patches: the margin a training point gets splits exactly into the part of its
signal patch and the part of its noise patches (``output_parts``, theory_sim.cnn.memorization).

Init: w_{j,r}(0) ~ N(0, sigma_0^2 I_d) from the run's init stream, the same draws as the c23 network; the hidden
weights V_{j,l} have i.i.d. N(0, 2 / fan_in) entries (He init: the hidden layers keep the first layer's scale, so
the network starts in the same small-output regime as [C23]'s), drawn from the run's own STREAM_HIDDEN generator.

The first layer's gradient is still a combination of mu and the noise vectors (dL/dw_{j,r} = sum_i dL/dh^1_{j,r}
(x_i^(p)) x_i^(p)), so the trainer keeps W in coefficient space exactly as for the c23 network and gamma/rho mean the
same. The hidden weights are small (2 (q m + (L-3) q^2) numbers per run, independent of d) and live in the state's
``b`` slot (``Params.b`` (R, 2, H)), which every rule already treats as "the parameters besides the filters": norms
add ||V||^2, Rand-SAM draws them N(0, I), ASAM rescales them as weights. Their gradient, and the first layer's
gradient with respect to its pre-activations, come from autograd through the per-patch network (the forward pass
costs O(R n q^2), nothing in d).
"""
from __future__ import annotations

import numpy as np
import torch

from theory_sim.cnn.model import Gradient, Params, TwoLayerCNN, logistic_loss
from theory_sim.seeding import run_generators

STREAM_HIDDEN = 6   # the run's generator of the hidden weights (the streams 0..5 are theory_sim.cnn.data's)


def network_for(cfg) -> TwoLayerCNN:
    """The network of a config: ``DeepCNN`` for model "deep", else the two-layer network."""
    if cfg.model == "deep":
        return DeepCNN(cfg.m, cfg.P, cfg.depth, cfg.width)
    return TwoLayerCNN.for_config(cfg)


class DeepCNN(TwoLayerCNN):
    """The L-layer network (stateless, batched over runs): the c23 first layer, L-2 hidden layers of ``width``
    units per patch, the fixed +-1 output. ``Params.b`` (R, 2, H) packs V_{j,1}, ..., V_{j,L-2} row-major (None
    for L = 2)."""

    def __init__(self, m: int, P: int, depth: int, width: int):
        super().__init__("c23", m, P)
        self.model, self.depth = "deep", depth
        self.width = width if depth > 2 else m
        self.a_f = 1.0 / self.width
        self.extra_is_weight = True
        self.shapes = [(self.width, m if l == 0 else self.width) for l in range(depth - 2)]
        self.n_hidden = sum(o * i for o, i in self.shapes)

    def init(self, seeds, sigma_0s, d: int, dtype=torch.float64, device="cpu", standard=None) -> Params:
        first = super().init(seeds, sigma_0s, d, dtype, device, standard)
        if self.depth == 2:
            return first
        V = np.empty((len(seeds), 2, self.n_hidden))
        for r, rng in enumerate(run_generators(seeds, STREAM_HIDDEN)):   # = run_rng(seed, STREAM_HIDDEN)
            V[r] = np.concatenate([rng.standard_normal((2, o * i)) * np.sqrt(2.0 / i) for o, i in self.shapes], 1)
        return Params(first.W, torch.as_tensor(V, dtype=dtype, device=device))

    def hidden(self, b: torch.Tensor) -> list[torch.Tensor]:
        """The hidden matrices V_l (..., 2, out, in) from the packed ``b`` (..., 2, H)."""
        out, off = [], 0
        for o, i in self.shapes:
            out.append(b[..., off:off + o * i].unflatten(-1, (o, i)))
            off += o * i
        return out

    def last_layer(self, pre: torch.Tensor, b: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
        """h^{L-1} (..., 2, q) from h^1 (..., 2, m); ``b`` (..., 2, H) broadcasts against the leading dims."""
        if self.depth == 2:
            return super().last_layer(pre, b, inplace)
        h = pre
        for V in self.hidden(b):
            h = (V @ torch.relu(h)[..., None])[..., 0]
        return h

    def preactivations_from_projections(self, proj, b, mu_norm, yhat, K):
        """The first layer's pre-activations: no bias (``b`` holds the hidden weights)."""
        return super().preactivations_from_projections(proj, None, mu_norm, yhat, K)

    def output_parts(self, sig, z, mult, b=None):
        """(signal patch's part of f, noise patches' part) (R, n) each, from h^1: sig (R, 2, m, n), z (R, 2, m, n, K)."""
        if self.depth == 2:
            return super().output_parts(sig, z, mult)
        hs = self.last_layer(sig.permute(0, 3, 1, 2), b[:, None])                 # (R, n, 2, q)
        hz = self.last_layer(z.permute(0, 3, 4, 1, 2), b[:, None, None])          # (R, n, K, 2, q)
        fs = self.a_f * torch.relu(hs).sum(-1)                                    # (R, n, 2)
        fn = self.a_f * mult * torch.relu(hz).sum(-1).sum(2)
        return fs[..., 0] - fs[..., 1], fn[..., 0] - fn[..., 1]

    def output_from_preactivations(self, sig, z, mult, b=None):
        if self.depth == 2:
            return super().output_from_preactivations(sig, z, mult)
        fs, fn = self.output_parts(sig, z, mult, b)
        return fs + fn

    def batch_gradient(self, proj, b, y, yhat, mu_norm, K, mult, weights=None) -> Gradient:
        """The gradient by autograd through the per-patch network, returned in the closed form's layout: the
        first layer's as coefficients on [e_1, xi_11, ..., xi_nK] (dL/dw_{j,r} = sum_i dL/dsig_{j,r,i} yhat_i mu +
        sum_{i,k} dL/dz_{j,r,i,k} xi_ik), the hidden weights' as ``db``."""
        sig, z = self.preactivations_from_projections(proj, None, mu_norm, yhat, K)
        leaves = [t.detach().requires_grad_() for t in (sig, z) + (() if b is None else (b,))]
        with torch.enable_grad():
            f = self.output_from_preactivations(leaves[0], leaves[1], mult, leaves[2] if b is not None else None)
            per = logistic_loss(y * f)
            loss = per.mean(-1) if weights is None else (per * weights).sum(-1)
            grads = torch.autograd.grad(loss.sum(), leaves)   # runs are independent: the sum's gradient is theirs
        dsig, dz = grads[0], grads[1]
        R, _, m, n = sig.shape
        a_sig = (dsig * yhat[:, None, None, :]).sum(-1)                           # (R, 2, m)
        coefs = torch.cat([(a_sig * mu_norm[:, None, None])[..., None], dz.reshape(R, 2, m, -1)], -1)
        act_z = (z > 0).to(f.dtype)
        finite = torch.isfinite(z).flatten(1).all(1) & torch.isfinite(sig).flatten(1).all(1) & torch.isfinite(f).all(1)
        if weights is None:
            active = act_z.flatten(1).mean(1)
        else:
            member = (weights > 0).to(f.dtype)[:, None, None, :, None]
            active = (act_z * member).flatten(1).sum(1) / act_z[0].numel()
        return Gradient(loss.detach(), f.detach(), coefs, None if b is None else grads[2], a_sig, dz, active,
                        finite)

    def output_patches(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Plain forward on the full input x (R, n, P, d), the definition above (the autograd oracle's)."""
        pre = torch.einsum("rjmd,rnpd->rnpjm", params.W, x)                       # (R, n, P, 2, m)
        h = pre if self.depth == 2 else self.last_layer(pre, params.b[:, None, None])
        Fj = self.a_f * torch.relu(h).sum(dim=(2, 4))                             # (R, n, 2)
        return Fj[..., 0] - Fj[..., 1]
