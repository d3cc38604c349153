"""The thing whose sharpness we measure: a loss as a function of a list of parameter tensors, at a fixed point.

``Objective`` wraps ``loss_fn(params: list[Tensor]) -> scalar`` and the point ``params`` (detached copies). Every
sharpness tool (HVP, Lanczos, Hutchinson, SLQ, R_Max/R_Asc/R_Avg) only needs ``loss``, ``grad`` and ``hvp`` from it,
so the same code serves

- a plain function of parameter tensors (``Objective.from_function``), e.g. one run of the batched two-layer CNN;
- any ``nn.Module`` + loss + data (``Objective.from_module``), where the parameters are substituted with
  ``torch.func.functional_call`` so the module itself is never mutated.

Data given as a DataLoader (or any iterable of ``(x, y)`` batches) defines the loss
``L(w) = sum_b (n_b / N) L_b(w)`` with ``L_b`` the (mean-reduced) loss of batch b; gradients and HVPs are
accumulated batch by batch, so a large batch never has to fit in memory at once.

Hessian-vector product ``H v = d/dt grad L(w + t v) |_{t=0}``, two implementations:

- ``"double_backward"`` (default): reverse-over-reverse, ``grad(<grad L(w), v>, w)`` with ``create_graph=True``.
- ``"func"``: forward-over-reverse, ``torch.func.jvp(torch.func.grad(L), (w,), (v,))``.

Default: ``"double_backward"``, never slower beyond noise in ``benchmarks/bench_hessian.py`` (CPU, 2 shared
cores, WRN-16-4, float32): batch 64 best-of-7 2.1 s vs 2.0 s for ``"func"`` (a gradient: 0.5 s), batch 128 5.7 s
vs 7.1 s; on a small float64 MLP 1.2 ms vs 2.0 ms. It also works with any autograd op (no forward-mode formulas
needed) and allows ``cached_graph`` (each further HVP at the same point ~1.5x cheaper).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from theory_sim.config import ConfigError, check_choice

HVP_METHODS = ("double_backward", "func")
DEFAULT_HVP_METHOD = "double_backward"

Params = list[torch.Tensor]
Term = Callable[[Params], torch.Tensor]  # params -> scalar loss of one batch


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one 1-D vector (the order defines the coordinates of the Hessian)."""
    return torch.cat([t.reshape(-1) for t in tensors])


class Objective:
    """A scalar loss L(w) of a list of parameter tensors, and the point w where sharpness is measured.

    Do not call the constructor directly; use ``from_function`` or ``from_module``. ``batches()`` yields
    ``(weight, term)`` pairs with ``L(w) = sum weight * term(w)``; a single-function objective has one term.
    The point is fixed (L(w) is cached): to measure elsewhere, build a new Objective.
    """

    def __init__(self, batches: Callable[[], Iterable[tuple[float, Term]]], params: Sequence[torch.Tensor],
                 names: Sequence[str] | None = None, hvp_method: str = DEFAULT_HVP_METHOD):
        check_choice("hvp_method", hvp_method, HVP_METHODS)
        params = list(params)
        if not params or not all(torch.is_tensor(p) and p.is_floating_point() for p in params):
            raise ConfigError("params must be a non-empty list of floating-point tensors")
        if len({(p.dtype, p.device) for p in params}) != 1:
            raise ConfigError("params must all share one dtype and device")
        self._batches = batches
        self.params: Params = [p.detach().clone() for p in params]
        self.names = list(names) if names is not None else [f"p{i}" for i in range(len(params))]
        self.hvp_method = hvp_method
        self._base_loss: torch.Tensor | None = None
        self._graphs: list | None = None  # set inside ``cached_graph()``

    # --- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def from_function(cls, fn: Callable[[Params], torch.Tensor], params: Sequence[torch.Tensor], *,
                      hvp_method: str = DEFAULT_HVP_METHOD) -> "Objective":
        """L(w) = fn(w) for a function of a list of tensors returning a scalar; ``params`` is the point w."""
        obj = cls(lambda: [(1.0, fn)], params, hvp_method=hvp_method)
        obj._check_scalar()
        return obj

    @classmethod
    def from_module(cls, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data,
                    *, train_mode: bool, cache: bool = True, hvp_method: str = DEFAULT_HVP_METHOD) -> "Objective":
        """L(w) = loss_fn(model_w(x), y), averaged over ``data`` weighted by batch size.

        ``data`` is one batch ``(x, y)`` or a DataLoader / iterable of ``(x, y)`` batches; ``loss_fn`` must be
        mean-reduced over the batch. ``w`` = the module's parameters that require grad, copied now.

        ``train_mode`` (required, no default) selects how BatchNorm normalises: True = batch statistics (the loss
        the optimizer sees during training), False = running statistics (the loss at evaluation). In train mode the
        BN running buffers are replaced by None inside the functional call, so no computation here ever updates
        them; the module's own buffers and train/eval flags are left untouched. Dropout is always disabled: a
        random loss has no Hessian. With several batches and ``train_mode=True`` each batch is normalised by its
        own statistics, so the objective depends on how the data is batched.

        ``cache=True`` stores the batches on the first pass, so every HVP of a Lanczos run sees the same function
        even if the loader shuffles or augments. ``cache=False`` streams the loader on every call (for data that
        does not fit in memory); it must then yield the same batches each pass, so a shuffling loader is refused.
        """
        if not isinstance(train_mode, bool):
            raise ConfigError(f"train_mode must be True (BatchNorm batch statistics) or False (running "
                              f"statistics), got {train_mode!r}")
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("model has no parameters with requires_grad=True")
        names, params = zip(*trainable)
        # In train mode BN uses batch statistics, so its running buffers are irrelevant to the output; passing None
        # means F.batch_norm neither reads nor updates them (and torch.func never sees an in-place write).
        bn_buffers = {f"{mod_name}.{b}" if mod_name else b
                      for mod_name, mod in model.named_modules()
                      if isinstance(mod, nn.modules.batchnorm._BatchNorm)
                      for b in ("running_mean", "running_var", "num_batches_tracked")}
        buffers = {n: (None if train_mode and n in bn_buffers else b.detach().clone())
                   for n, b in model.named_buffers()}

        def make_term(x: torch.Tensor, y: torch.Tensor) -> Term:
            def term(ps: Params) -> torch.Tensor:
                with _mode(model, train_mode):
                    out = functional_call(model, ({n: p for n, p in zip(names, ps)}, buffers), (x,))
                return loss_fn(out, y)
            return term

        if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
            x, y = data
            batches = _const([(1.0, make_term(x, y))])
        elif cache:
            pairs = [(x, y) for x, y in data]
            batches = _const(_weighted([(len(y), make_term(x, y)) for x, y in pairs]))
        else:
            sampler = getattr(data, "sampler", None)
            if not isinstance(data, torch.utils.data.DataLoader) or isinstance(sampler,
                                                                                 torch.utils.data.RandomSampler):
                raise ConfigError("cache=False needs a DataLoader that yields the same batches every pass "
                                  "(shuffle=False); use cache=True otherwise")
            n_total = len(data.dataset)

            def batches() -> Iterator[tuple[float, Term]]:
                for x, y in data:
                    yield len(y) / n_total, make_term(x, y)
        obj = cls(batches, params, names=names, hvp_method=hvp_method)
        obj._check_scalar()
        return obj

    # --- shape helpers ------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """D, the number of scalar parameters (size of the Hessian)."""
        return sum(p.numel() for p in self.params)

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return flatten(tensors)

    def unflatten(self, vec: torch.Tensor) -> Params:
        """Inverse of ``flatten``: a 1-D vector of length D -> tensors shaped like ``params``."""
        if vec.dim() != 1 or vec.numel() != self.dim:
            raise ConfigError(f"vector must be 1-D of length {self.dim}, got shape {tuple(vec.shape)}")
        return [c.view_as(p) for c, p in zip(vec.split([p.numel() for p in self.params]), self.params)]

    def shifted(self, eps: Sequence[torch.Tensor]) -> Params:
        """w + eps."""
        return [p + e for p, e in zip(self.params, eps)]

    # --- loss, gradient, HVP ------------------------------------------------------------------------------------
    def __call__(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """L(params), differentiable (e.g. for ``torch.autograd.functional.hessian`` on small models)."""
        return sum(w * term(list(params)) for w, term in self._batches())

    def loss(self, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """L(params) (default: at the point w), a detached 0-dim tensor."""
        if params is None and self._base_loss is not None:
            return self._base_loss
        ps = self.params if params is None else list(params)
        with torch.no_grad():
            total = self(ps).detach()
        if params is None:
            self._base_loss = total
        return total

    def value_and_grad(self, params: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, Params]:
        """(L(params), grad L(params)) from one forward/backward per batch."""
        ps = self.params if params is None else list(params)
        total, grads = None, None
        for w, term in self._batches():
            leaves = [p.detach().requires_grad_(True) for p in ps]
            value = term(leaves)
            g = torch.autograd.grad(value, leaves, allow_unused=True, materialize_grads=True)
            total = w * value.detach() if total is None else total + w * value.detach()
            grads = [w * gi for gi in g] if grads is None else [a + w * gi for a, gi in zip(grads, g)]
        return total, grads

    def grad(self, params: Sequence[torch.Tensor] | None = None) -> Params:
        """grad L(params) (default: at the point w), one tensor per parameter."""
        return self.value_and_grad(params)[1]

    def hvp(self, v, method: str | None = None):
        """H v with H = Hessian of L at w; ``v`` is a list of tensors (-> list) or a flat vector (-> flat)."""
        method = self.hvp_method if method is None else method
        check_choice("method", method, HVP_METHODS)
        flat = torch.is_tensor(v)
        vs = self.unflatten(v) if flat else list(v)
        if len(vs) != len(self.params) or any(a.shape != p.shape for a, p in zip(vs, self.params)):
            raise ConfigError("v must match the shapes of params")
        out = None
        if method == "double_backward" and self._graphs is not None:
            for w, leaves, live, g in self._graphs:
                hv = _backward_through_gradient(leaves, live, g, vs, retain_graph=True)
                out = [w * h for h in hv] if out is None else [a + w * h for a, h in zip(out, hv)]
        else:
            for w, term in self._batches():
                hv = _hvp_double_backward(term, self.params, vs) if method == "double_backward" \
                    else _hvp_func(term, self.params, vs)
                out = [w * h for h in hv] if out is None else [a + w * h for a, h in zip(out, hv)]
        return flatten(out) if flat else out

    @contextlib.contextmanager
    def cached_graph(self):
        """Within this block, double-backward HVPs reuse one first-order graph per batch.

        An HVP normally costs a forward, a backward with ``create_graph=True`` and a backward through that
        gradient. All HVPs of a Lanczos run are taken at the same w, so the first two can be done once: each HVP is
        then a single backward through the stored gradient graph (WRN-16-4 on CPU: 1.5 s instead of 2.1 s per
        HVP on 64 images; see benchmarks/bench_hessian.py). The price is memory: every batch's graph (activations
        and their gradients) is held until the block exits (WRN-16-4: ~1.6 GB per 64 CIFAR images).
        """
        graphs = []
        for w, term in self._batches():
            leaves = [p.detach().requires_grad_(True) for p in self.params]
            g = torch.autograd.grad(term(leaves), leaves, create_graph=True, allow_unused=True,
                                    materialize_grads=True)
            live = [i for i, gi in enumerate(g) if gi.requires_grad]
            graphs.append((w, leaves, live, g))
        self._graphs = graphs
        try:
            yield self
        finally:
            self._graphs = None

    def _check_scalar(self) -> None:
        value = self.loss()
        if value.dim() != 0:
            raise ConfigError(f"the loss must be a scalar (0-dim) tensor, got shape {tuple(value.shape)}")


def _hvp_double_backward(term: Term, params: Params, v: Params) -> Params:
    """Reverse-over-reverse: H v = grad_w <grad_w L(w), v>."""
    leaves = [p.detach().requires_grad_(True) for p in params]
    g = torch.autograd.grad(term(leaves), leaves, create_graph=True, allow_unused=True, materialize_grads=True)
    # A gradient that does not depend on w (e.g. a parameter entering linearly) has a zero Hessian block.
    live = [i for i, gi in enumerate(g) if gi.requires_grad]
    return _backward_through_gradient(leaves, live, g, v, retain_graph=False)


def _backward_through_gradient(leaves: Params, live: list[int], g, v: Params, retain_graph: bool) -> Params:
    if not live:
        return [torch.zeros_like(p) for p in leaves]
    hv = torch.autograd.grad([g[i] for i in live], leaves, grad_outputs=[v[i] for i in live],
                             allow_unused=True, materialize_grads=True, retain_graph=retain_graph)
    return [h.detach() for h in hv]


def _hvp_func(term: Term, params: Params, v: Params) -> Params:
    """Forward-over-reverse: H v = d/dt grad L(w + t v) at t = 0."""
    _, hv = torch.func.jvp(torch.func.grad(term), (list(params),), (list(v),))
    return [h.detach() for h in hv]


def _const(items: list) -> Callable[[], list]:
    return lambda: items


def _weighted(sized: list[tuple[int, Term]]) -> list[tuple[float, Term]]:
    n_total = sum(n for n, _ in sized)
    if n_total == 0:
        raise ConfigError("data must contain at least one sample")
    return [(n / n_total, term) for n, term in sized]


@contextlib.contextmanager
def _mode(model: nn.Module, train_mode: bool):
    """Put the module in train/eval mode (dropout always off) and restore every submodule's flag afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.train(train_mode)
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag
