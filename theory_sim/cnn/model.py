"""Two-layer convolutional ReLU network, batched over R independent runs [C23 Def. 2.2, K23].

    f(W, x) = F_{+1}(W_{+1}, x) - F_{-1}(W_{-1}, x),
    F_j(W_j, x) = a_f * sum_{r=1..m} a_p * sum_{p=1..P} relu(<w_{j,r}, x^(p)> + b_{j,r})

- ``c23``: a_f = 1/m, a_p = 1, no bias, w_{j,r}(0) ~ N(0, sigma_0^2 I_d) [C23].
- ``kou2023``: a_f = 1 (sum over filters), a_p = 1/P (mean over patches), a bias, PyTorch's default Conv1d init
  U(-1/sqrt(d), 1/sqrt(d)) for weights and biases — the public script of [K23]. Its cross-entropy on the logits
  (F_{-1}, F_{+1}) equals the logistic loss of f, so both variants share one loss.

Weights are stored as W of shape (R, 2, m, d) (index 0 is j = +1, index 1 is j = -1) and b of shape (R, 2, m)
(or None). Because the signal patch is yhat*mu and every noise patch is a stored noise vector, the network needs
only <w, mu> and <w, xi>: the forward pass is one batched matmul (R, 2m, d) x (R, d, n K) and the gradient, written
in closed form below, one more. The closed form also yields the coefficients that drive the signal-noise
decomposition (docs/science.md §4), so the tracker is exact at no extra cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from theory_sim.cnn.data import STREAM_INIT, Batch
from theory_sim.seeding import run_generators


@dataclass
class Params:
    W: torch.Tensor                 # (R, 2, m, d)
    b: torch.Tensor | None = None   # (R, 2, m)

    def tensors(self) -> list[torch.Tensor]:
        return [self.W] if self.b is None else [self.W, self.b]

    @staticmethod
    def from_tensors(ts) -> "Params":
        return Params(ts[0], ts[1] if len(ts) > 1 else None)

    def clone(self) -> "Params":
        return Params.from_tensors([t.clone() for t in self.tensors()])


@dataclass
class Gradient:
    """Closed-form loss and gradient of the mean logistic loss over a batch, for every run."""

    loss: torch.Tensor      # (R,) mean logistic loss on the batch
    f: torch.Tensor         # (R, n) network outputs
    coefs: torch.Tensor     # (R, 2, m, 1 + n K): dW = coefs @ basis = coefs[..., 0] e_1 + sum coefs[..., ik] xi_ik
    db: torch.Tensor | None
    a_sig: torch.Tensor     # (R, 2, m): dW = a_sig * mu + sum_{i,k} a_noise_{i,k} xi_{i,k}
    a_noise: torch.Tensor   # (R, 2, m, n, K)
    noise_active: torch.Tensor  # (R,) fraction of noise pre-activations > 0 where the gradient was taken
    finite: torch.Tensor        # (R,) all pre-activations finite (else the run has diverged)
    dW: torch.Tensor | None = None  # (R, 2, m, d), materialised by ``loss_and_grad``

    def tensors(self) -> list[torch.Tensor]:
        return [self.dW] if self.db is None else [self.dW, self.db]

    def coefficient_tensors(self) -> list[torch.Tensor]:
        return [self.coefs] if self.db is None else [self.coefs, self.db]


SIGNS = (1.0, -1.0)  # the sign j of filter block 0 and 1


def logistic_loss(z: torch.Tensor) -> torch.Tensor:
    """l(z) = log(1 + exp(-z)), computed stably."""
    return F.softplus(-z)


def relu_derivative(x: torch.Tensor) -> torch.Tensor:
    """relu'(x) = 1.0 where x > 0, else 0.0 (also for NaN), in x's dtype. Written straight into a float tensor:
    ``(x > 0).to(dtype)`` goes through a bool tensor, a pass that costs ~40x more on CPU."""
    return torch.gt(x, 0, out=torch.empty_like(x))


def finite_runs(*tensors: torch.Tensor | None) -> torch.Tensor:
    """(R,) whether every entry of each run (leading dimension) is finite in all the given tensors (None: skipped).

    A finite sum means every entry is finite (an inf or NaN entry makes every partial sum inf or NaN, and neither
    ever turns finite again), so one sum per run settles the common case. Only where a sum is not finite — an
    entry that is, or finite entries whose sum overflowed — are max and min read: they propagate NaN and show
    +-inf, so both are finite exactly when every entry is. All vectorised reductions (``torch.isfinite(t).all``
    builds bool tensors, ~10x the time on CPU; one sum is ~4x cheaper than max and min)."""
    ok = None
    for t in tensors:
        if t is None:
            continue
        flat = t.reshape(t.shape[0], -1)
        if flat.shape[1] == 0:
            row = torch.ones(t.shape[0], dtype=torch.bool, device=t.device)
        else:
            row = torch.isfinite(flat.sum(1))
            # on CPU the check costs nothing; a GPU would wait on it, so there both reductions always run
            if flat.device.type != "cpu" or not bool(row.all()):
                row = row | (torch.isfinite(flat.amax(1)) & torch.isfinite(flat.amin(1)))
        ok = row if ok is None else ok & row
    return ok


class TwoLayerCNN:
    """The architecture (stateless): parameters live in ``Params`` so R runs are one batched computation."""

    def __init__(self, model: str, m: int, P: int):
        self.model, self.m, self.P = model, m, P
        self.bias = model == "kou2023"
        self.a_f = 1.0 if model == "kou2023" else 1.0 / m
        self.a_p = 1.0 / P if model == "kou2023" else 1.0
        self.extra_is_weight = False   # Params.b holds biases (ASAM does not rescale them)

    @classmethod
    def for_config(cls, cfg) -> "TwoLayerCNN":
        return cls(cfg.model, cfg.m, cfg.P)

    # ---------------------------------------------------------------------------------------------------------
    def init(self, seeds, sigma_0s, d: int, dtype=torch.float64, device="cpu",
             standard: torch.Tensor | None = None) -> Params:
        """Per-run initialisation from the run's own generator (so a run does not depend on its ensemble).
        ``standard`` (R, 2, m, k): the runs' standard normal filters already drawn in their data's frame
        (dimension-free data, docs/science.md §2.6), scaled here by sigma_0."""
        R, m = len(seeds), self.m
        if standard is not None:
            scale = torch.as_tensor(np.asarray(sigma_0s, dtype=float))[:, None, None, None]
            return Params((standard * scale).to(dtype=dtype, device=device), None)
        # run by run in the target dtype (each run's float64 draws cast as a whole array would be)
        W = torch.empty(R, 2, m, d, dtype=dtype)
        b = torch.empty(R, 2, m, dtype=dtype) if self.bias else None
        for r, rng in enumerate(run_generators(seeds, STREAM_INIT)):   # = run_rng(seed, STREAM_INIT)
            if self.bias:  # PyTorch Conv1d default: kaiming_uniform(a=sqrt 5) -> U(+-1/sqrt(fan_in)), fan_in = d
                bound = 1.0 / np.sqrt(d)
                W[r] = torch.from_numpy(rng.uniform(-bound, bound, size=(2, m, d)))
                b[r] = torch.from_numpy(rng.uniform(-bound, bound, size=(2, m)))
            else:
                w = rng.standard_normal((2, m, d))
                w *= sigma_0s[r]
                W[r] = torch.from_numpy(w)
        as_t = lambda a: None if a is None else a.to(device)  # noqa: E731
        return Params(as_t(W), as_t(b))

    def signs(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(SIGNS, dtype=like.dtype, device=like.device)

    # ---------------------------------------------------------------------------------------------------------
    def projections(self, params: Params, data: Batch) -> torch.Tensor:
        """<w_{j,r}, e_1> and <w_{j,r}, xi_{i,k}> for every filter: (R, 2, m, 1 + n K). One matmul per group of runs
        sharing a data set: (G 2m x d) x (d x (1 + n K))."""
        W = params.W
        R, _, m, d = W.shape
        return torch.bmm(W.reshape(data.U, -1, d), data.basis.transpose(1, 2)).reshape(R, 2, m, -1)

    def preactivations_from_projections(self, proj: torch.Tensor, b: torch.Tensor | None, mu_norm: torch.Tensor,
                                        yhat: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal-patch pre-activations (R, 2, m, n) and noise-patch pre-activations (R, 2, m, n, K)."""
        R, _, m, _ = proj.shape
        s = proj[..., 0] * mu_norm[:, None, None]                                 # <w_{j,r}, mu>
        z = proj[..., 1:].reshape(R, 2, m, yhat.shape[1], K)                      # <w_{j,r}, xi_{i,k}>
        if b is None:
            return s[..., None] * yhat[:, None, None, :], z
        # b + s yhat in one pass: yhat = +-1 makes the product exact, so this equals (s yhat) + b bit for bit
        return torch.addcmul(b[..., None], s[..., None], yhat[:, None, None, :]), z + b[..., None, None]

    def preactivations(self, params: Params, data: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.preactivations_from_projections(self.projections(params, data), params.b, data.mu_norm,
                                                    data.yhat, data.K)

    def output_from_preactivations(self, sig: torch.Tensor, z: torch.Tensor, mult: int,
                                   b: torch.Tensor | None = None) -> torch.Tensor:
        """f from the pre-activations (their biases already added: ``b`` is used by the deep model only, whose
        ``b`` slot holds the hidden weights, theory_sim.cnn.deep)."""
        # one noise patch (K = 1) sums to itself and mult = 1 scales by nothing: skipping those passes over the
        # (R, 2, m, n K) pre-activations leaves every value as it was
        noise = torch.relu(z)
        noise = noise[..., 0] if noise.shape[-1] == 1 else noise.sum(-1)
        if mult != 1:
            noise = noise * mult
        per_filter = torch.relu(sig) + noise                                     # (R, 2, m, n)
        Fj = self.a_f * self.a_p * per_filter.sum(2)                             # (R, 2, n)
        return Fj[:, 0] - Fj[:, 1]

    def output(self, params: Params, data: Batch) -> torch.Tensor:
        """f(W, x_i) for every run and sample: (R, n)."""
        sig, z = self.preactivations(params, data)
        return self.output_from_preactivations(sig, z, data.noise_multiplicity, params.b)

    def output_parts(self, sig: torch.Tensor, z: torch.Tensor, mult: int,
                     b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """f split over patches (R, n) each: the signal patch's contribution and the noise patches' (f is their
        sum: the network is a sum over patches). What theory_sim.cnn.memorization reads."""
        scale = self.a_f * self.a_p
        fs = scale * torch.relu(sig).sum(2)                                       # (R, 2, n)
        fn = scale * mult * torch.relu(z).sum(-1).sum(2)
        return fs[:, 0] - fs[:, 1], fn[:, 0] - fn[:, 1]

    def last_layer(self, pre: torch.Tensor, b: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
        """The pre-activations (..., 2, m) of the units the fixed output sums, from the first layer's bias-free ones
        (..., 2, m) and ``b`` broadcast to them: the bias added (the deep model applies its hidden layers).
        ``inplace``: add the bias into ``pre`` (the caller's buffer, no copy)."""
        if b is None:
            return pre
        return pre.add_(b) if inplace else pre + b

    def batch_gradient(self, proj: torch.Tensor, b: torch.Tensor | None, y: torch.Tensor, yhat: torch.Tensor,
                       mu_norm: torch.Tensor, K: int, mult: int, weights: torch.Tensor | None = None) -> Gradient:
        """The gradient at the projections ``proj`` (and ``b``): what the trainer's state calls."""
        sig, z = self.preactivations_from_projections(proj, b, mu_norm, yhat, K)
        return self.gradient(sig, z, y, yhat, mu_norm, mult, b is not None, weights)

    def loss(self, params: Params, data: Batch) -> torch.Tensor:
        """(R,) mean logistic loss L_S(W) = mean_i l(y_i f(W, x_i))."""
        return logistic_loss(data.y * self.output(params, data)).mean(-1)

    def gradient(self, sig: torch.Tensor, z: torch.Tensor, y: torch.Tensor, yhat: torch.Tensor,
                 mu_norm: torch.Tensor, mult: int, bias: bool, weights: torch.Tensor | None = None) -> Gradient:
        """Closed-form gradient of the mean logistic loss [C23 Sec. 3], from the pre-activations, as coefficients on
        the basis [e_1, xi_11, ..., xi_nK]:

            dL/dw_{j,r} = (1/B) sum_i l'_i y_i j a_f a_p [relu'(<w,yhat_i mu>+b) yhat_i mu
                                                       + c_K sum_k relu'(<w,xi_ik>+b) xi_ik],
        with l'_i = -sigmoid(-y_i f_i) and c_K = P-1 for shared noise patches (1 for independent ones).

        ``weights`` (R, n) replaces the 1/B of every sample (the loss is then sum_i weights_i l_i): an m-sharpness
        chunk is the batch with weight 1/M on its M samples and 0 elsewhere. ``noise_active`` then counts the
        samples of non-zero weight only, over the whole batch's count, so the chunks' fractions add up.
        """
        f = self.output_from_preactivations(sig, z, mult)
        margin = y * f
        B = f.shape[-1]
        if weights is None:
            g = -torch.sigmoid(-margin) * y / B                                  # (R, n) = dL/df_i
        else:
            g = -torch.sigmoid(-margin) * y * weights
        coef = g[:, None, None, :] * (self.signs(f)[None, :, None, None] * (self.a_f * self.a_p))  # (R,2,1,n)
        act_sig, act_z = relu_derivative(sig), relu_derivative(z)
        # yhat = +-1 and act in {0, 1}: every product is exact, so taking coef * yhat on the small (R, 2, 1, n)
        # tensor first gives the same bits as (coef * act_sig) * yhat, with one pass fewer over (R, 2, m, n)
        a_sig = ((coef * yhat[:, None, None, :]) * act_sig).sum(-1)               # (R, 2, m)
        R, _, m, n, K = z.shape
        # the coefficients written in place (no concatenation); mult = 1 and, for db, a single noise patch skip
        # passes that would leave every value as it is
        coefs = torch.empty(R, 2, m, 1 + n * K, dtype=f.dtype, device=f.device)
        torch.mul(a_sig, mu_norm[:, None, None], out=coefs[..., 0])
        a_noise = torch.mul(coef[..., None], act_z, out=coefs[..., 1:].view(R, 2, m, n, K))  # (R, 2, m, n, K)
        if mult != 1:
            a_noise.mul_(mult)
        db = None
        if bias:
            count = act_z[..., 0] if K == 1 else act_z.sum(-1)
            db = (coef * (act_sig + (count if mult == 1 else mult * count))).sum(-1)
        # Non-finite weights show in the pre-activations: every weight coordinate meets mu or a noise vector with a
        # non-zero entry (a coordinate no data vector touches never moves). A cheap check on (R, 2m, 1 + nK) values.
        finite = finite_runs(z, sig)
        if weights is None:
            return Gradient(logistic_loss(margin).mean(-1), f, coefs, db, a_sig, a_noise, act_z.flatten(1).mean(1),
                            finite)
        member = (weights > 0).to(f.dtype)[:, None, None, :, None]
        active = (act_z * member).flatten(1).sum(1) / act_z[0].numel()
        return Gradient((logistic_loss(margin) * weights).sum(-1), f, coefs, db, a_sig, a_noise, active, finite)

    def loss_and_grad(self, params: Params, data: Batch) -> Gradient:
        """Loss and gradient at W, with dW = coefs @ basis materialised (R, 2, m, d): ``batch_gradient``, the one the
        trainer's state calls too, at W's projections."""
        grad = self.batch_gradient(self.projections(params, data), params.b, data.y, data.yhat, data.mu_norm, data.K,
                                   data.noise_multiplicity)
        R, _, m, d = params.W.shape
        grad.dW = torch.bmm(grad.coefs.reshape(data.U, -1, grad.coefs.shape[-1]), data.basis).reshape(R, 2, m, d)
        return grad

    # ---------------------------------------------------------------------------------------------------------
    def output_patches(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Plain forward on the full input x (R, n, P, d): the definition of docs/science.md §2, used as the autograd oracle
        (it never uses the compact signal/noise structure)."""
        pre = torch.einsum("rjmd,rnpd->rjmnp", params.W, x)
        if params.b is not None:
            pre = pre + params.b[..., None, None]
        Fj = self.a_f * self.a_p * torch.relu(pre).sum(dim=(2, 4))               # (R, 2, n)
        return Fj[:, 0] - Fj[:, 1]
