"""Near a manifold of interpolating minima (a tanh MLP), full-batch SAM lowers lambda_1 and 1-SAM lowers Tr(H) [W23]
(docs/science.md §7.3 (b); the setting and what was found: §7.5).

    python studies/sharpness_flat_minima.py
"""
from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from theory_sim.sam.perturbation import perturbation  # noqa: E402
from theory_sim.sharpness import Objective, hutchinson_trace, top_eigenvalues  # noqa: E402
from theory_sim.study import Study  # noqa: E402

CONFIG = dict(
    n=6, d_in=3, width=16,     # D = d_in*width + width + width + 1 parameters, n << D
    seed=0,
    gd_lr=0.1, gd_tol=1e-8, gd_max_steps=200_000,
    eta=0.02, rho=0.1,         # shared by GD, SAM and 1-SAM after w_0
    steps=20_000, every=500,   # training steps, measurement interval
    trace_probes=200,
)


def make_problem(cfg):
    g = torch.Generator().manual_seed(cfg["seed"])
    X = torch.randn(cfg["n"], cfg["d_in"], dtype=torch.float64, generator=g)
    Y = torch.randn(cfg["n"], dtype=torch.float64, generator=g)
    d, w = cfg["d_in"], cfg["width"]
    shapes = [(w, d), (w,), (w,), ()]  # W1, b1, a (output weights), c (output bias)
    sizes = [int(torch.Size(s).numel()) for s in shapes]

    def f(theta, x):
        W1, b1, a, c = (t.reshape(s) for t, s in zip(theta.split(sizes), shapes))
        return torch.tanh(x @ W1.T + b1) @ a + c

    def loss(theta, idx=None):
        """(1/2) mean_i (f(x_i) - y_i)^2 over all samples, or over the samples ``idx``."""
        x, y = (X, Y) if idx is None else (X[idx], Y[idx])
        return 0.5 * ((f(theta, x) - y) ** 2).mean()

    theta0 = torch.cat([torch.randn(w * d, dtype=torch.float64, generator=g) / d ** 0.5,
                        torch.zeros(w, dtype=torch.float64),
                        torch.randn(w, dtype=torch.float64, generator=g) / w ** 0.5,
                        torch.zeros(1, dtype=torch.float64)])
    return loss, theta0


def grad(loss, theta, idx=None):
    t = theta.detach().requires_grad_(True)
    value = loss(t, idx)
    return torch.autograd.grad(value, t)[0], float(value.detach())


def sam_grad(loss, theta, rho, idx=None):
    """grad L_I(theta + eps), eps = rho g/||g|| with g = grad L_I(theta) [F21]."""
    g, _ = grad(loss, theta, idx)
    eps = perturbation("sam", [g], rho)[0]
    return grad(loss, theta + eps, idx)[0]


def measure(loss, theta, cfg):
    obj = Objective.from_function(lambda ps: loss(ps[0]), [theta])
    lam1 = float(top_eigenvalues(obj, 1).values[0])
    tr = hutchinson_trace(obj, cfg["trace_probes"], seed=123)  # same probes at every checkpoint
    return lam1, tr.value, tr.stderr, float(obj.loss())


def interpolate(loss, theta, cfg):
    """Phase 0: GD to an interpolating point w_0 (training loss < gd_tol). Returns w_0, its loss and step count."""
    for step in range(cfg["gd_max_steps"]):
        g, value = grad(loss, theta)
        if value < cfg["gd_tol"]:
            break
        theta = theta - cfg["gd_lr"] * g
    assert value < cfg["gd_tol"], f"GD did not interpolate (loss {value:.2e})"
    return theta, value, step


def run(name, loss, theta, cfg, start_row, g_perm):
    """GD, full-batch SAM or 1-SAM from w_0, measured every ``every`` steps; rows (t, lambda_1, Tr, se, loss)."""
    th = theta.clone()
    rows = [start_row]
    order = []
    for t in range(1, cfg["steps"] + 1):
        if name == "GD":
            th = th - cfg["eta"] * grad(loss, th)[0]
        elif name == "full-batch SAM":
            th = th - cfg["eta"] * sam_grad(loss, th, cfg["rho"])
        else:  # one sample per step, a fresh random order every epoch (SGD without replacement)
            if not order:
                order = torch.randperm(cfg["n"], generator=g_perm).tolist()
            th = th - cfg["eta"] * sam_grad(loss, th, cfg["rho"], [order.pop()])
        if t % cfg["every"] == 0:
            rows.append((t, *measure(loss, th, cfg)))
    return th, rows


def check_dense(name, loss, th, rows, lam0, tr0, cfg) -> None:
    """The end point's toolkit numbers against the dense Hessian, printed."""
    H = torch.autograd.functional.hessian(loss, th)
    ev = torch.linalg.eigvalsh(H)
    _, lam, tr, se, L = rows[-1]
    assert abs(lam - float(ev[-1])) < 1e-6 * abs(float(ev[-1])) and abs(tr - float(H.trace())) < 4 * se + 1e-9
    print(f"{name:15s} after {cfg['steps']} steps: loss {L:.1e}, lambda_1 {lam0:.4f} -> {lam:.4f} "
          f"({lam / lam0 - 1:+.1%}), Tr(H) {tr0:.4f} -> {tr:.4f} ({tr / tr0 - 1:+.1%}); dense Hessian: "
          f"lambda_1 {float(ev[-1]):.4f}, Tr {float(H.trace()):.4f}")


def figure(curves, cfg, D):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, rows in curves.items():
        ts = [r[0] for r in rows]
        axes[0].plot(ts, [r[1] for r in rows], label=name)
        axes[1].plot(ts, [r[2] for r in rows], label=name)
        axes[2].plot(ts, [r[1] / r[2] for r in rows], label=name)
    axes[0].set(xlabel="step after reaching the manifold", ylabel="$\\lambda_1(H)$", title="top eigenvalue")
    axes[1].set(xlabel="step after reaching the manifold", ylabel="Tr(H)  (Hutchinson)", title="trace")
    axes[2].set(xlabel="step after reaching the manifold", ylabel="$\\lambda_1$ / Tr(H)",
                title="share of the top eigenvalue in the trace")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"tanh MLP, {cfg['n']} points, D={D}; eta={cfg['eta']}, rho={cfg['rho']}", fontsize=9)
    fig.tight_layout()
    return fig


def verdict(curves, lam0, tr0) -> None:
    """The relative changes of lambda_1 and Tr(H) per algorithm and the two claims, computed from the curves."""
    rel = {name: (rows[-1][1] / lam0 - 1, rows[-1][2] / tr0 - 1) for name, rows in curves.items()}
    sam_lam, sam_tr = rel["full-batch SAM"]
    one_lam, one_tr = rel["1-SAM"]
    gd_lam, gd_tr = rel["GD"]
    print("FOUND:")
    print(f"  GD:             lambda_1 {gd_lam:+.1%}, Tr {gd_tr:+.1%} (stays where it landed)")
    print(f"  full-batch SAM: lambda_1 {sam_lam:+.1%}, Tr {sam_tr:+.1%}")
    print(f"  1-SAM:          lambda_1 {one_lam:+.1%}, Tr {one_tr:+.1%}")
    claim_sam = sam_lam < -0.05 and sam_lam < gd_lam
    claim_one = one_tr < -0.05 and one_tr < gd_tr
    print(f"  full-batch SAM lowers lambda_1: {'yes' if claim_sam else 'NO'};  1-SAM lowers Tr(H): "
          f"{'yes' if claim_one else 'NO'};  1-SAM lowers the trace more than SAM does: "
          f"{'yes' if one_tr < sam_tr else 'no'};  SAM lowers lambda_1 relative to the trace more than 1-SAM: "
          f"{'yes' if sam_lam - sam_tr < one_lam - one_tr else 'no'}")
    assert claim_sam and claim_one, "[W23] prediction (b) not reproduced"


def main(cfg=CONFIG) -> None:
    t0 = time.time()
    study = Study(__file__)
    loss, theta = make_problem(cfg)
    D = theta.numel()
    theta, value, step = interpolate(loss, theta, cfg)
    lam0, tr0, se0, _ = measure(loss, theta, cfg)
    print(f"{cfg['n']} points, tanh MLP {cfg['d_in']}-{cfg['width']}-1, D = {D} parameters; GD reached loss "
          f"{value:.1e} in {step} steps: lambda_1 = {lam0:.4f}, Tr(H) = {tr0:.4f} +- {se0:.4f}")
    # stability of each algorithm needs eta * (top curvature it sees) < 2
    per_sample_top = max(float(top_eigenvalues(Objective.from_function(lambda ps, i=i: loss(ps[0], [i]), [theta]),
                                               1).values[0]) for i in range(cfg["n"]))
    print(f"eta = {cfg['eta']}, rho = {cfg['rho']}: eta*lambda_1(H) = {cfg['eta'] * lam0:.3f}, "
          f"eta*max_i lambda_1(H_i) = {cfg['eta'] * per_sample_top:.3f}")

    g_perm = torch.Generator().manual_seed(cfg["seed"] + 1)
    curves = {}
    for name in ("GD", "full-batch SAM", "1-SAM"):
        th, curves[name] = run(name, loss, theta, cfg, (0, lam0, tr0, se0, value), g_perm)
        check_dense(name, loss, th, curves[name], lam0, tr0, cfg)
    print(f"figure: {study.save_figure(figure(curves, cfg, D), dpi=90)}  ({time.time() - t0:.0f} s)")
    verdict(curves, lam0, tr0)


if __name__ == "__main__":
    main()
