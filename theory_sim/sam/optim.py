"""The SAM family as one optimizer: perturb, take the gradient there, restore, step the base optimizer.

Rules (``theory_sim.sam.perturbation``, shared with the two-layer CNN trainer) decide how the perturbation eps is built
from the gradient g at the current weights w:

- ``sam``      eps = rho g / ||g||_2                         SAM, p = 2           Foret et al. [F21] arXiv 2010.01412
- ``sam_inf``  eps = rho sign(g)                             SAM, p = inf         [F21]
- ``asam``     eps = rho T^2 g / ||T g||, T = |w| + eta_a    ASAM                 Kwon et al. [K21] arXiv 2102.11600
               (on the tensors ``asam_scope`` selects, T = 1 on the others; see ``SAM``)
- ``randsam``  eps = rho z / ||z||, z ~ N(0, I) every step   Rand-SAM             [T24] arXiv 2411.01714

Two variants change how often, and on which data, the rule is applied:

- multi-step SAM (``steps_k = k``): k steps of projected normalized gradient ascent inside the rho-ball,
  eps_{i+1} = Proj_rho(eps_i + alpha g(w + eps_i) / ||g(w + eps_i)||), alpha = rho by default, so k = 1 is SAM
  [T24, F21 App. C.6];
- m-sharpness (``step_chunked``): split the batch into chunks, perturb each chunk with its own gradient and average
  the chunks' SAM gradients [F21 Sec. 4]. Under DDP each replica already perturbs with its own gradient: the first
  pass runs in ``model.no_sync()`` and only the last pass all-reduces, which is exactly m-sharpness with m = the
  per-replica batch. ``bn_update`` says whether every chunk's clean pass updates BatchNorm's running statistics
  (``"per_chunk"``) or only the first chunk's (``"per_step"``).

Hyper-parameters of the perturbation are per param group, as in torch optimizers: ``rho``, ``eta_a``,
``asam_scope``, ``ascent_lr`` (and the optional ``adaptive``) given in a group dict override the constructor's value
for that group's tensors. With several groups the norm in eps is still one norm over all groups' tensors and each
group's rho scales its own tensors, as davda54/sam does: eps_k = rho_(group of k) * d_k / ||d||, d = g (SAM),
T g (ASAM, with each group's T) or z (Rand-SAM); sam_inf gives eps_k = rho_(group of k) sign(g_k).

The optimizer wraps any ``torch.optim`` optimizer, davda54/sam style::

    opt = SAM(model.parameters(), torch.optim.SGD, rule="sam", rho=0.05, lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn(model(x), y).backward()                 # clean pass: BatchNorm running stats are updated here only
    opt.first_step(zero_grad=True)                  # w <- w + eps
    with disable_running_stats(model):             # theory_sim.sam.bn
        loss_fn(model(x), y).backward()             # gradient at w + eps
    opt.second_step(zero_grad=True)                 # w <- w, then the base optimizer steps with that gradient

(multi-step SAM: ``opt.ascent_step(zero_grad=True)`` after each of the k - 1 extra backward passes at w + eps),
or ``opt.step(closure)`` with a closure that runs forward + backward (pass ``model=`` to let the optimizer handle
BatchNorm and DDP's no_sync itself). ``param_groups`` are the base optimizer's, so LR schedulers attach to ``opt``
as usual; weight decay lives in the base optimizer, so the perturbation sees the loss gradient only.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
from torch import nn

from theory_sim.config import check_choice, check_float, check_int
from theory_sim.sam import registry
from theory_sim.sam.bn import BN_UPDATES, disable_running_stats, no_sync
from theory_sim.sam.perturbation import RULES, ascent_step, perturbation

Closure = Callable[[], torch.Tensor]

SAM_DEFAULT_RHO = 0.05  # SAM's L2 radius on CIFAR-10 [F21]; also the default of the L2 rules below
ASAM_SCOPES = ("weights", "weights_and_bn", "all")
GROUP_KEYS = ("rho", "eta_a", "asam_scope", "ascent_lr")  # per-group hyper-parameters of the perturbation
# layers whose affine ``weight`` (gamma) asam_scope="weights_and_bn" scales: BatchNorm/SyncBatchNorm/InstanceNorm
# (_NormBase), GroupNorm, LayerNorm (and RMSNorm where torch has it)
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm) + \
    ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def inf_rho(rho_2: float, n_params: int) -> float:
    """The per-coordinate radius of the L_inf ball whose SAM perturbation has the L2 size of the L2 rule's.

    sam_inf's eps = rho_inf sign(g) has ||eps||_2 = rho_inf sqrt(#coordinates with g != 0), i.e. rho_inf sqrt(D) for
    a network with D parameters whose gradient has no exact zeros. rho_inf = rho_2 / sqrt(D) therefore moves the
    weights as far (in L2) as SAM's rho_2 does; reusing rho_2 itself as the per-coordinate radius would move them
    sqrt(D) times farther (about 300 on a WRN-28-10, D = 36.5M, for rho_2 = 0.05)."""
    check_float("rho_2", rho_2, lo=0.0)
    check_int("n_params", n_params, lo=1)
    return rho_2 / math.sqrt(n_params)


def _uniform(values: list):
    """The common value if all entries are equal (the scalar code path, bitwise as with one group), else the list."""
    return values[0] if values and all(v == values[0] for v in values) else values


class SAM(torch.optim.Optimizer):
    """Sharpness-aware wrapper around a base optimizer [F21, K21, T24].

    Args:
        params: parameters or parameter groups. A group dict may set any of ``rho``, ``eta_a``, ``asam_scope``,
            ``ascent_lr`` (overriding the arguments below for its tensors) and ``adaptive`` (True/False: ASAM
            scales all / none of the group's tensors, overriding ``asam_scope``).
        base_optimizer_cls: e.g. ``torch.optim.SGD``; built on the same param groups with ``**base_kwargs``.
        rule: one of ``theory_sim.sam.perturbation.RULES``.
        rho: perturbation radius. Default (None): 0.05 for the L2 rules (sam, asam, randsam), and for ``sam_inf`` the
            per-coordinate radius ``inf_rho(0.05, D)`` = 0.05 / sqrt(D), D = the number of parameters in all groups,
            so the default L_inf perturbation has the L2 size of the default L2 one. Several groups: one norm over
            all groups' tensors, each group's rho scaling its own tensors (davda54/sam's choice); multi-step SAM
            with rule ``sam`` needs one rho (and one ascent_lr) in all groups, its ball being over all parameters.
        steps_k: ascent steps (multi-step SAM, rules ``sam`` / ``sam_inf`` only); 1 = one-step rule.
        ascent_lr: step length of each normalized ascent step when ``steps_k > 1`` (default: the group's rho).
        eta_a: ASAM's offset in T = |w| + eta_a.
        asam_scope: which tensors ASAM scales by T = |w| + eta_a (T = 1 on the others):
            ``"weights"`` (default): tensors with more than one dimension (conv/linear weights); biases and all
            normalization-layer parameters use 1.
            ``"weights_and_bn"``: those plus the affine weight (gamma) of normalization layers (BatchNorm, GroupNorm,
            LayerNorm, ...); BatchNorm's beta and all biases use 1. This is the official ASAM code
            (SamsungLabs/ASAM ``asam.py``: T = |w| + eta on every parameter whose name contains "weight"); needs
            ``model=`` to find the normalization layers.
            ``"all"``: every tensor. davda54/sam's ``SAM(adaptive=True)`` is this scope with ``eta_a=0`` (it scales
            every tensor of the group by |w|, and adds 1e-12 to the norm).
        bn_update: m-sharpness (``step_chunked`` with several chunks) and BatchNorm's running statistics:
            ``"per_chunk"`` (default): every chunk's clean pass updates them (n_chunks updates per step);
            ``"per_step"``: only the first chunk's clean pass does (one update per step, from m examples, as on one
            DDP replica, whose statistics are the ones broadcast); the other chunks' clean passes normalise with
            their batch statistics but leave the running ones alone. Needs ``model=``. A single-chunk step is the
            same under both.
        model: optional; lets ``step(closure)`` freeze BatchNorm running stats in the perturbed passes and run the
            non-final passes of a DDP model in ``no_sync()``.
        generator: optional torch.Generator for Rand-SAM's directions (saved in ``state_dict``).
    """

    def __init__(self, params, base_optimizer_cls: type[torch.optim.Optimizer], *, rule: str = "sam",
                 rho: float | None = None, steps_k: int = 1, ascent_lr: float | None = None, eta_a: float = 0.01,
                 asam_scope: str = "weights", bn_update: str = "per_chunk", model: nn.Module | None = None,
                 generator: torch.Generator | None = None, **base_kwargs):
        check_choice("rule", rule, RULES)
        if rho is not None:
            check_float("rho", rho, lo=0.0)
        check_int("steps_k", steps_k, lo=1, hi=100)
        if ascent_lr is not None:
            check_float("ascent_lr", ascent_lr, lo=0.0, lo_open=True)
        check_float("eta_a", eta_a, lo=0.0)
        check_choice("asam_scope", asam_scope, ASAM_SCOPES)
        check_choice("bn_update", bn_update, BN_UPDATES)
        multi = registry.torch_rules(multi_step=True)
        if steps_k > 1 and rule not in multi:
            raise ValueError(f"steps_k > 1 (multi-step SAM) needs rule {' or '.join(map(repr, multi))}, got "
                             f"rule={rule!r}")
        if bn_update == "per_step" and model is None:
            raise ValueError("bn_update='per_step' needs model= (the optimizer must reach the BatchNorm layers)")
        super().__init__(params, dict(rho=rho, eta_a=eta_a, asam_scope=asam_scope, ascent_lr=ascent_lr,
                                      **base_kwargs))
        if rho is None:  # the default radius; a group may still set its own
            n_params = sum(p.numel() for g in self.param_groups for p in g["params"])
            rho = inf_rho(SAM_DEFAULT_RHO, max(n_params, 1)) if rule == "sam_inf" else SAM_DEFAULT_RHO
            self.defaults["rho"] = rho
            for g in self.param_groups:
                if g["rho"] is None:
                    g["rho"] = rho
        self._norm_weights = None if model is None else {
            id(m.weight) for m in model.modules()
            if isinstance(m, NORM_LAYERS) and isinstance(getattr(m, "weight", None), torch.Tensor)}
        for i, g in enumerate(self.param_groups):
            self._check_group(i, g, rule)
        if steps_k > 1 and rule == "sam":
            self._one_ball(self.param_groups)
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one list: schedulers on `self` drive the base optimizer
        self.rule, self.steps_k, self.ascent_lr = rule, steps_k, ascent_lr
        self.bn_update = bn_update
        self.model, self.generator = model, generator
        self.last_perturbation_norm: torch.Tensor | None = None  # ||eps|| of the last perturbation, for logging
        self._active: list[torch.nn.Parameter] | None = None  # the perturbed parameters between first/second step
        self._eps: list[torch.Tensor] | None = None  # kept only for multi-step ascent
        self._rhos: list[float] = []  # per active tensor: its group's rho and ascent step length
        self._alphas: list[float] = []

    # ---- per-group settings -----------------------------------------------------------------------------------
    def _check_group(self, i: int, g: dict, rule: str) -> None:
        where = f"param_groups[{i}]"
        check_float(f"{where} rho", g["rho"], lo=0.0)
        check_float(f"{where} eta_a", g["eta_a"], lo=0.0)
        check_choice(f"{where} asam_scope", g["asam_scope"], ASAM_SCOPES)
        if g["ascent_lr"] is not None:
            check_float(f"{where} ascent_lr", g["ascent_lr"], lo=0.0, lo_open=True)
        if g.get("adaptive") is not None:
            check_choice(f"{where} adaptive", g["adaptive"], (True, False))
        if rule == "asam" and g["asam_scope"] == "weights_and_bn" and g.get("adaptive") is None \
                and self._norm_weights is None:
            raise ValueError("asam_scope='weights_and_bn' needs model= (to find the normalization layers' weights)")

    @staticmethod
    def _one_ball(groups) -> None:
        """Multi-step SAM (rule sam) projects onto one L2 ball over all parameters: one rho, one step length."""
        rhos = {g["rho"] for g in groups}
        alphas = {g["rho"] if g["ascent_lr"] is None else g["ascent_lr"] for g in groups}
        if len(rhos) != 1 or len(alphas) != 1:
            raise ValueError(f"multi-step SAM with rule 'sam' needs one rho and one ascent_lr in all param groups (the "
                             f"ball is over all parameters), got rho {sorted(rhos)}, ascent_lr {sorted(alphas)}")

    def _scaled(self, p: torch.Tensor, g: dict) -> bool:
        """Whether ASAM scales tensor p (of group g) by |w| + eta_a."""
        flag = g.get("adaptive")
        if flag is not None:
            return bool(flag)
        scope = g["asam_scope"]
        if scope == "all" or p.dim() > 1:
            return True
        if scope == "weights_and_bn":
            if self._norm_weights is None:
                raise ValueError("asam_scope='weights_and_bn' needs model= (to find the normalization layers' "
                                 "weights)")
            return id(p) in self._norm_weights
        return False

    # ---- the two-step API -------------------------------------------------------------------------------------
    def _with_grad(self):
        """The parameters with a gradient, their gradients, and per tensor: ASAM's flag (None unless rule asam), the
        group's rho, eta_a and ascent step length."""
        params, grads, rhos, etas, alphas = [], [], [], [], []
        adaptive: list[bool] | None = [] if self.rule == "asam" else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                params.append(p)
                grads.append(p.grad)
                if adaptive is not None:
                    adaptive.append(self._scaled(p, g))
                rhos.append(g["rho"])
                etas.append(g["eta_a"])
                alphas.append(g["rho"] if g["ascent_lr"] is None else g["ascent_lr"])
        if not params:
            raise RuntimeError("SAM: no parameter has a gradient; run a forward/backward pass first")
        return params, grads, adaptive, rhos, etas, alphas

    def _set_perturbation(self, eps: list[torch.Tensor]) -> None:
        """w <- w_old + eps (w_old stored once per parameter, reused every step: no per-step allocation)."""
        olds = [self.state[p]["old_p"] for p in self._active]
        torch._foreach_copy_(self._active, olds)
        torch._foreach_add_(self._active, eps)
        self.last_perturbation_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(eps))).detach()

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Store w and move to w + eps, eps from the rule at the gradient currently in ``p.grad``."""
        if self._active is not None:
            raise RuntimeError("first_step called twice without second_step/restore in between")
        params, grads, adaptive, rhos, etas, alphas = self._with_grad()
        if self.steps_k > 1 and self.rule == "sam":
            self._one_ball(self.param_groups)
        for p in params:
            if "old_p" not in self.state[p]:
                self.state[p]["old_p"] = torch.empty_like(p, memory_format=torch.preserve_format)
        torch._foreach_copy_([self.state[p]["old_p"] for p in params], params)
        self._active, self._rhos, self._alphas = params, rhos, alphas
        # one value when all groups agree (the scalar path), else one per tensor; the norm is joint over all groups
        eps = perturbation(self.rule, grads, _uniform(rhos), params=params, adaptive=adaptive,
                           eta_a=_uniform(etas), generator=self.generator)
        self._eps = eps if self.steps_k > 1 else None
        torch._foreach_add_(params, eps)
        self.last_perturbation_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(eps))).detach()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def ascent_step(self, zero_grad: bool = False) -> None:
        """One more projected normalized ascent step (multi-step SAM) from the gradient at w + eps [T24]."""
        if self._active is None or self._eps is None:
            raise RuntimeError("ascent_step needs first_step first, and steps_k > 1")
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._active]
        # sam: one rho in all groups (checked in first_step); sam_inf: the L_inf ball is a box, each group's tensors
        # clipped to their own rho
        rho = self._rhos[0] if self.rule == "sam" else self._rhos
        eps = ascent_step(self._eps, grads, rho, _uniform(self._alphas), rule=self.rule)
        self._eps = eps
        self._set_perturbation(eps)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Back to the stored w (bitwise), keeping p.grad (the gradient taken at w + eps)."""
        if self._active is None:
            raise RuntimeError("restore called without first_step")
        torch._foreach_copy_(self._active, [self.state[p]["old_p"] for p in self._active])
        self._active, self._eps, self._rhos, self._alphas = None, None, [], []

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w and step the base optimizer with the gradient taken at w + eps."""
        self.restore()
        self.base_optimizer.step()
        self._opt_called = True  # tells an attached LR scheduler that the optimizer did step
        if zero_grad:
            self.zero_grad()

    # ---- the closure API --------------------------------------------------------------------------------------
    def step(self, closure: Closure | None = None) -> torch.Tensor:
        """Full SAM step; ``closure`` runs forward + backward and returns the loss (grads are zeroed before each
        call). Returns the clean-pass loss. Rand-SAM ignores the clean gradient but the clean pass still runs: it is
        the pass that updates BatchNorm's running statistics and gives the logged loss."""
        if closure is None:
            raise ValueError("SAM.step needs a closure (forward + backward); or call first_step/second_step")
        return self.step_chunked([closure])

    def step_chunked(self, closures: Sequence[Closure], weights: Sequence[float] | None = None) -> torch.Tensor:
        """m-sharpness [F21]: each closure computes the mean loss of one chunk of the batch; every chunk is perturbed
        with its own gradient and the chunks' SAM gradients are averaged with ``weights`` (default equal; pass the
        chunk fractions for unequal chunks). One chunk is plain SAM. BatchNorm's running statistics are updated by
        every chunk's clean pass (``bn_update="per_chunk"``) or by the first chunk's only (``"per_step"``)."""
        n = len(closures)
        weights = [1.0 / n] * n if weights is None else list(weights)
        if len(weights) != n or n == 0:
            raise ValueError("step_chunked needs one weight per closure and at least one closure")
        acc, total, owners = None, 0.0, []
        for c, (closure, w) in enumerate(zip(closures, weights)):
            self.zero_grad()
            frozen = disable_running_stats(self.model) if self.bn_update == "per_step" and c > 0 \
                else contextlib.nullcontext()
            with no_sync(self.model), torch.enable_grad(), frozen:
                loss = closure()  # clean pass, updates BatchNorm running stats (per_step: the first chunk's only)
            self.first_step(zero_grad=True)
            with disable_running_stats(self.model), torch.enable_grad():
                for _ in range(self.steps_k - 1):
                    with no_sync(self.model):
                        closure()
                    self.ascent_step(zero_grad=True)
                closure()  # gradient at w + eps; the only pass that all-reduces under DDP
            self.restore()
            total = total + w * loss.detach()
            if n > 1:  # acc = sum_c w_c grad L_c(w + eps_c), over the parameters the first chunk reached
                with torch.no_grad():
                    if acc is None:
                        owners = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
                        acc = torch._foreach_mul([p.grad for p in owners], w)
                    else:
                        torch._foreach_add_(acc, [p.grad if p.grad is not None else torch.zeros_like(p)
                                                  for p in owners], alpha=w)
        if acc is not None:
            self.zero_grad()
            for p, a in zip(owners, acc):
                p.grad = a
        self.base_optimizer.step()
        self._opt_called = True
        return total

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The base optimizer's state (momentum buffers, param groups incl. rho and lr) plus Rand-SAM's generator;
        the stored copy of w is transient and not saved."""
        return {"base": self.base_optimizer.state_dict(), "rule": self.rule, "steps_k": self.steps_k,
                "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("rule") != self.rule or state_dict.get("steps_k") != self.steps_k:
            raise ValueError(f"checkpoint is for rule={state_dict.get('rule')!r} steps_k={state_dict.get('steps_k')},"
                             f" this optimizer has rule={self.rule!r} steps_k={self.steps_k}")
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups  # load_state_dict built new group dicts: re-link
        for g in self.param_groups:  # a checkpoint from before a per-group setting existed: the constructor's value
            for k in GROUP_KEYS:
                g.setdefault(k, self.defaults[k])
        if self.generator is not None and state_dict.get("generator") is not None:
            self.generator.set_state(state_dict["generator"])
