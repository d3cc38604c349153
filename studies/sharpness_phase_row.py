"""Sharpness of the SGD and SAM(->SGD) solutions across one row of the phase diagram, against test error.

Setting: the [C23] defaults (n=20, m=10, P=2, sigma_p=1, p=0.1, B=5, eta=0.1, 100 epochs) at d=800, ||mu|| from
0.5 to 6, 4 seeds, SAM with c_tau=1 for the first 200 steps then SGD. For every final network: lambda_1 and Tr(H)
of the training loss, and [W23]'s R_Max, R_Asc, R_Avg at the [C23] radius tau (the same for both optimizers).

Question checked: is a lower test error accompanied by a flatter solution? The script prints, per optimizer, the
Spearman rank correlation of each sharpness quantity with the test error over all runs and the SGD-vs-SAM means,
and writes figures/sharpness_phase_row.png and figures/sharpness_phase_row.md.

Found with the defaults (see the .md): within each optimizer, sharper solutions generalise worse (Spearman
correlation of Tr(H) with test error about +0.86 for both, R_Asc +0.6..+0.9, lambda_1 weakly positive), but across
optimizers the SAM->SGD solutions, which generalise much better (mean test error ~0.18 vs ~0.29), are NOT flatter at
the end of training: lambda_1, Tr(H), R_Max and R_Asc are about twice SGD's (their training loss is higher, ~0.016 vs
~0.010, and the logistic loss's curvature scales with it). Final-point sharpness does not explain SAM's advantage
here; the early-phase mechanism of studies/coefficient_dynamics.py does.

    python studies/sharpness_phase_row.py [--d 800] [--seeds 4]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from theory_sim.cnn.model import TwoLayerCNN  # noqa: E402
from theory_sim.cnn.run_sharpness import sharpness_of_run  # noqa: E402
from theory_sim.cnn.train import train_ensemble  # noqa: E402
from theory_sim.config import SimConfig  # noqa: E402

FIGURES = Path(__file__).resolve().parent.parent / "figures"
QUANTITIES = [("lambda_1", r"$\lambda_1(H)$"), ("trace", r"Tr$(H)$"), ("r_max", r"$R_{Max}$"),
              ("r_asc", r"$R_{Asc}$"), ("r_avg", r"$R_{Avg}$")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=800)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=FIGURES)
    args = ap.parse_args()
    torch.set_num_threads(1)  # many small tensors: one thread per process is fastest (see theory_sim.cli)

    base = SimConfig(d=args.d, n=20, m=10, P=2, sigma_p=1.0, flip_p=0.1, eta=0.1, batch_size=5, epochs=100,
                     n_test=0, n_mc=20000)
    mus = np.round(np.geomspace(0.5, 6.0, 6), 3)
    configs = [base.replace(optimizer=opt, mu_norm=float(mu), seed=s, sam_steps=200 if opt == "sam" else None)
               for opt in ("sgd", "sam") for s in range(args.seeds) for mu in mus]
    res = train_ensemble(configs, track=False, log=False, progress=False)
    net = TwoLayerCNN.for_config(base)
    rows = []
    for r, cfg in enumerate(configs):
        row = sharpness_of_run(net, res.params, res.data, r, base.replace(optimizer="sam").sam_radius, k=1,
                               trace_samples=32, avg_samples=64, max_steps=20, seed=cfg.seed)
        rows.append({"optimizer": cfg.optimizer, "mu_norm": cfg.mu_norm, "seed": cfg.seed,
                     "test_error": res.summary.test_error[r], "train_loss": res.summary.train_loss[r],
                     **{k: row[k] for k, _ in QUANTITIES}})
    df = pd.DataFrame(rows)

    lines = [f"# Sharpness across a phase-diagram row (d={args.d}, {args.seeds} seeds, rho = tau = "
             f"{base.sam_radius:.3g})", "", "Means over seeds and ||mu||:", "", "```",
             df.groupby("optimizer")[["test_error", "train_loss"] + [k for k, _ in QUANTITIES]].mean()
             .to_string(float_format=lambda v: f"{v:.4g}"), "```", "",
             "Spearman rank correlation with the test error (all runs of an optimizer):", ""]
    for opt, g in df.groupby("optimizer"):
        cors = ", ".join(f"{k} {spearmanr(g[k], g.test_error)[0]:+.2f}" for k, _ in QUANTITIES)
        lines.append(f"- {opt}: {cors}")
    pooled = ", ".join(f"{k} {spearmanr(df[k], df.test_error)[0]:+.2f}" for k, _ in QUANTITIES)
    lines += [f"- both optimizers pooled: {pooled}", ""]
    means = df.groupby("optimizer")[[k for k, _ in QUANTITIES]].mean()
    flatter = [k for k, _ in QUANTITIES if means.loc["sam", k] < means.loc["sgd", k]]
    lines.append(f"SAM->SGD solutions are flatter than SGD's on average in: {', '.join(flatter) or 'none'}; "
                 f"sharper in: {', '.join(k for k, _ in QUANTITIES if k not in flatter) or 'none'}.")
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sharpness_phase_row.md").write_text(report + "\n")

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (k, label) in zip(axes.flat, QUANTITIES):
        for c, (opt, g) in enumerate(df.groupby("optimizer")):
            sc = ax.scatter(g.test_error, g[k], c=np.log(g.mu_norm), cmap="viridis", marker="o" if opt == "sgd"
                            else "^", s=28, edgecolor=f"C{c}", linewidth=1.0, label=opt)
        ax.set_xlabel("test error")
        ax.set_title(label)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.colorbar(sc, ax=axes[0, 2], label="log ||mu||")
    ax = axes[1, 2]
    for c, (opt, g) in enumerate(df.groupby("optimizer")):
        m = g.groupby("mu_norm").test_error.agg(["mean", "min", "max"])
        ax.plot(m.index, m["mean"], "o-", color=f"C{c}", label=opt)
        ax.fill_between(m.index, m["min"], m["max"], color=f"C{c}", alpha=0.2)
    ax.axhline(base.flip_p, color="k", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("||mu||")
    ax.set_title("test error along the row")
    ax.legend(fontsize=8)
    fig.suptitle(f"Sharpness of SGD and SAM->SGD solutions along the row d={args.d} (marker colour: ||mu||)")
    fig.tight_layout()
    fig.savefig(args.out / "sharpness_phase_row.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
