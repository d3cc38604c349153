"""Many small WideResNets trained as ONE computation: torch.func.vmap over stacked parameters, as the theory model
batches its runs (docs/science.md §9.5).

``train_stacked(configs)`` trains R runs of ``CifarConfig`` that share the data and the loop's shape (dataset,
n_train / n_test, epochs, batch size, depth, width, the base optimizer's hyper-parameters) and one SAM-family rule
(optimizer and ascent_steps); they may differ in seed, label noise and radius. Each run keeps what it would have had
alone in ``theory_sim.cifar.train``: its init (``torch.manual_seed(seed)`` before building the model), its noisy
labels (``symmetric_label_noise(..., seed)``), its batch order (``epoch_indices(n, epoch, seed)``), its Rand-SAM
generator (seeded ``seed * 1000 + 1``), SGD with momentum / Nesterov / weight decay and the per-step cosine schedule
of ``torch.optim.SGD`` + ``CosineAnnealingLR``, and the perturbation of ``theory_sim.sam.optim.SAM`` (the same
``theory_sim.sam.perturbation`` code, with one norm and one radius per run: ``batch_dims=1``).
tests/test_digits.py checks that the stacked runs equal separate runs of that single-model optimizer to round-off
in float64 (in float32 a few ASAM trajectories of these tiny GroupNorm WRNs amplify round-off: the single-model
run itself then drifts from its float64 twin, so two float32 summation orders need not agree).

Normalisation: the WRN's BatchNorm keeps running statistics that a training step updates in place, which vmap over
stacked buffers does not express without a functional BN. The stacked runs therefore use the GroupNorm variant of
the WRN (``WideResNet(norm="group")``, min(8, C) groups): no buffers, no train/eval difference, and a model's output
on a sample does not depend on the rest of its batch. Augmentation is not applied (the digits have none).

At the end every run reports its test accuracy, its accuracy on the (possibly noisy) training labels, the fraction of
its noisy labels it memorised (predicts the noisy label) and the fraction it still predicts correctly, and lambda_1 and
Tr(H) of its training loss on the labels it was trained on (``theory_sim.sharpness``: Lanczos and Hutchinson, as
``theory_sim.cifar.train.final_sharpness``).
"""
from __future__ import annotations

import copy
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from theory_sim.cifar.config import CifarConfig
from theory_sim.cifar.data import Augment, epoch_indices, load_dataset, symmetric_label_noise
from theory_sim.cifar.wrn import WideResNet
from theory_sim.config import ConfigError, check_shared
from theory_sim.sam.perturbation import ascent_step, perturbation

# the fields every run of one stacked computation shares (the rest: seed, label_noise, rho, asam_eta)
SHARED_FIELDS = ("dataset", "data_dir", "optimizer", "ascent_steps", "ascent_step", "norm", "m_sharpness", "asam_scope", "epochs",
                 "batch_size", "lr", "momentum", "nesterov", "weight_decay", "label_smoothing", "depth", "width",
                 "dropout", "cutout", "n_train", "n_test")


def check_stack(configs: list[CifarConfig]) -> None:
    check_shared(configs, SHARED_FIELDS, "runs trained as one stacked computation")
    c0 = configs[0]
    if c0.norm != "2" or c0.m_sharpness or c0.dropout or c0.cutout or c0.label_smoothing:
        raise ConfigError("stacked training supports norm '2', m_sharpness 0, dropout 0, cutout 0 and label_smoothing "
                          f"0; got norm={c0.norm!r}, m_sharpness={c0.m_sharpness}, dropout={c0.dropout}, "
                          f"cutout={c0.cutout}, label_smoothing={c0.label_smoothing}")
    if c0.asam_scope != "weights":
        raise ConfigError(f"stacked training supports asam_scope 'weights', got {c0.asam_scope!r}")


def make_model(cfg: CifarConfig, in_channels: int, num_classes: int, seed: int, base: int = 16) -> torch.nn.Module:
    """The GroupNorm WRN of one run (stage widths base * (1, k, 2k, 4k)), initialised from its seed as
    ``theory_sim.cifar.train.train`` seeds torch."""
    torch.manual_seed(seed)
    return WideResNet(cfg.depth, cfg.width, num_classes, in_channels=in_channels, norm="group", base=base)


class Stack:
    """R models as stacked parameters (a list of (R, ...) tensors, in ``model.parameters()`` order) and the
    vmapped loss / gradient of a base copy on the meta device."""

    def __init__(self, models: list[torch.nn.Module]):
        params, _ = stack_module_state(models)
        self.names = list(params)
        self.tensors = [params[k].detach().clone() for k in self.names]
        self.base = copy.deepcopy(models[0]).to("meta")

        def loss(tensors, x, y):
            logits = functional_call(self.base, dict(zip(self.names, tensors)), (x,))
            return F.cross_entropy(logits, y), (logits.argmax(1) == y).sum()

        self._grad = vmap(grad_and_value(loss, has_aux=True))
        self._logits = vmap(lambda tensors, x: functional_call(self.base, dict(zip(self.names, tensors)), (x,)))

    def grad(self, tensors, x, y):
        """Per run: the gradient (list of (R, ...)), the mean loss (R,) and the correct count (R,) on its batch."""
        g, (loss, correct) = self._grad(tensors, x, y)
        return g, loss, correct

    def logits(self, x, chunk: int = 500) -> torch.Tensor:
        """(R, N, classes) on inputs x (R, N, ...) (each run its own inputs, or the same expanded)."""
        with torch.no_grad():
            return torch.cat([self._logits(self.tensors, x[:, i:i + chunk]) for i in range(0, x.shape[1], chunk)], 1)

    def module(self, r: int) -> torch.nn.Module:
        """Run r's parameters loaded into an ordinary nn.Module (for the sharpness tools)."""
        m = copy.deepcopy(self.base).to_empty(device="cpu")
        with torch.no_grad():
            for p, t in zip(m.parameters(), self.tensors):
                p.copy_(t[r])
        return m


def perturbed(stack: Stack, cfg: CifarConfig, g, x, y, rho: torch.Tensor, eta_a: torch.Tensor, gens):
    """eps of the run's rule, as ``theory_sim.sam.optim.SAM.first_step`` (+ ``ascent_step`` for msam) computes it
    for one model, with one norm and one radius per run."""
    w = stack.tensors
    rule = cfg.rule
    if rule == "randsam":   # each run draws from its own generator, its tensors in parameter order, as SAM does
        z = [torch.empty_like(t) for t in w]
        for r, gen in enumerate(gens):
            for t in z:
                t[r] = torch.randn(t.shape[1:], generator=gen, dtype=t.dtype)
        return perturbation("sam", z, rho, batch_dims=1)
    if rule == "asam":      # scope "weights": the tensors with more than one dimension (per run)
        return perturbation("asam", g, rho, params=w, adaptive=[t.dim() > 2 for t in w],
                            eta_a=[eta_a.reshape(-1, *([1] * (t.dim() - 1))) for t in w], batch_dims=1)
    eps = perturbation("sam", g, rho, batch_dims=1)
    for _ in range(cfg.ascent_steps - 1):   # msam: projected normalised ascent steps of length ascent_step * rho
        gi, _, _ = stack.grad([a + e for a, e in zip(w, eps)], x, y)
        eps = ascent_step(eps, gi, rho, cfg.ascent_step * rho, batch_dims=1)
    return eps


def train_stacked(configs: list[CifarConfig], log=print, sharpness: bool = True, base: int = 16) -> pd.DataFrame:
    """Train every run in ``configs`` as one vmapped computation; one row per run (its config fields and the final
    metrics). ``sharpness``: lambda_1 and Tr(H) of each run's training loss on its first ``sharpness_samples``
    training images."""
    check_stack(configs)
    c0, R = configs[0], len(configs)
    arr = load_dataset(c0.dataset, c0.data_dir)
    x_tr, y_tr, x_te, y_te = arr.x_train, arr.y_train, arr.x_test, arr.y_test
    if c0.n_train:
        x_tr, y_tr = x_tr[:c0.n_train], y_tr[:c0.n_train]
    if c0.n_test:
        x_te, y_te = x_te[:c0.n_test], y_te[:c0.n_test]
    noisy = [symmetric_label_noise(y_tr, c.label_noise, arr.num_classes, c.seed) if c.label_noise > 0
             else (y_tr.copy(), np.zeros(len(y_tr), dtype=bool)) for c in configs]
    Y = torch.as_tensor(np.stack([n[0] for n in noisy]))                               # (R, N) labels trained on
    mask = torch.as_tensor(np.stack([n[1] for n in noisy]))                            # (R, N) flipped
    aug = Augment(c0.dataset, "cpu", seed=0)
    X, Xte = aug.normalize(torch.as_tensor(x_tr)), aug.normalize(torch.as_tensor(x_te))
    n, B = len(y_tr), c0.batch_size
    steps = n // B
    if steps < 1:
        raise ConfigError(f"batch_size must be <= the training set size ({n}), got {B}")
    stack = Stack([make_model(c, X.shape[1], arr.num_classes, c.seed, base) for c in configs])
    rho = torch.tensor([c.rho for c in configs])
    eta_a = torch.tensor([c.asam_eta for c in configs])
    gens = [torch.Generator().manual_seed(c.seed * 1000 + 1) for c in configs] if c0.optimizer == "randsam" else []
    bufs = None
    # the learning rate of torch's CosineAnnealingLR stepped per iteration, read off a dummy optimizer (same floats)
    dummy = torch.optim.SGD([torch.zeros(1)], lr=c0.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=c0.epochs * steps)
    history = []
    for epoch in range(c0.epochs):
        order = torch.stack([epoch_indices(n, epoch, c.seed) for c in configs])        # (R, n)
        loss_sum, correct_sum = torch.zeros(R, dtype=torch.float64), torch.zeros(R, dtype=torch.float64)
        for s in range(steps):
            idx = order[:, s * B:(s + 1) * B]
            xb, yb = X[idx], torch.gather(Y, 1, idx)
            g, loss, correct = stack.grad(stack.tensors, xb, yb)
            loss_sum += loss.double() * B
            correct_sum += correct.double()
            if c0.optimizer != "sgd":
                eps = perturbed(stack, c0, g, xb, yb, rho, eta_a, gens)
                g, _, _ = stack.grad([w + e for w, e in zip(stack.tensors, eps)], xb, yb)
            lr = dummy.param_groups[0]["lr"]
            bufs = sgd_step(stack.tensors, g, bufs, lr, c0)
            dummy.step()
            sched.step()
        te = (stack.logits(Xte.expand(R, *Xte.shape)).argmax(-1) == torch.as_tensor(y_te)).double().mean(1)
        history.append(dict(epoch=epoch + 1, train_loss=(loss_sum / (steps * B)).numpy(),
                            train_acc=(correct_sum / (steps * B)).numpy(), test_acc=te.numpy()))
        log(f"{c0.optimizer} x{R} epoch {epoch + 1}/{c0.epochs}: test acc {te.mean():.4f} "
            f"(min {te.min():.4f}, max {te.max():.4f})")
    return summarise(stack, configs, history, X, Y, mask, torch.as_tensor(y_tr), sharpness)


@torch.no_grad()
def sgd_step(tensors, grads, bufs, lr: float, cfg: CifarConfig):
    """torch.optim.SGD's update (weight decay, momentum, dampening 0, Nesterov) on every stacked tensor in place."""
    d = [g + cfg.weight_decay * w if cfg.weight_decay else g for g, w in zip(grads, tensors)]
    if cfg.momentum:
        bufs = [x.clone() for x in d] if bufs is None else [b.mul_(cfg.momentum).add_(x) for b, x in zip(bufs, d)]
        d = [x + cfg.momentum * b for x, b in zip(d, bufs)] if cfg.nesterov else bufs
    for w, x in zip(tensors, d):
        w.add_(x, alpha=-lr)
    return bufs


def summarise(stack: Stack, configs, history, X, Y, mask, y_clean, sharpness: bool) -> pd.DataFrame:
    pred = stack.logits(X.expand(len(configs), *X.shape)).argmax(-1)                   # (R, N)
    rows = []
    for r, c in enumerate(configs):
        flipped = mask[r]
        row = {k: v for k, v in asdict(c).items() if k not in ("data_dir", "device", "compile")}
        row.update(epochs_done=len(history), test_acc=float(history[-1]["test_acc"][r]),
                   train_acc_epoch=float(history[-1]["train_acc"][r]), train_loss=float(history[-1]["train_loss"][r]),
                   train_acc=float((pred[r] == Y[r]).double().mean()),
                   clean_train_acc=float((pred[r] == y_clean)[~flipped].double().mean()),
                   noisy_memorized_frac=float((pred[r] == Y[r])[flipped].double().mean()) if flipped.any()
                   else float("nan"),
                   noisy_true_label_frac=float((pred[r] == y_clean)[flipped].double().mean()) if flipped.any()
                   else float("nan"))
        if sharpness:
            row.update(final_sharpness(stack.module(r), X[:c.sharpness_samples], Y[r, :c.sharpness_samples], c.seed))
        rows.append(row)
    return pd.DataFrame(rows)


def final_sharpness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """lambda_1 (Lanczos, relative residual 1e-3 or 40 iterations) and Tr(H) (Hutchinson, 10 Rademacher probes,
    with its standard error) of the mean cross-entropy on (x, y) at the model's weights (``theory_sim.sharpness``):
    modest budgets that compare optimizers, not converged to many digits."""
    from theory_sim.sharpness import Objective, hutchinson_trace, top_eigenvalues

    obj = Objective.from_module(model, F.cross_entropy, [(x, y)], train_mode=False)
    trace = hutchinson_trace(obj, 10, seed=seed)
    lam = top_eigenvalues(obj, 1, tol=1e-3, max_iter=40, seed=seed).values[0]
    return {"lambda_1": float(lam), "trace": trace.value, "trace_stderr": trace.stderr}
