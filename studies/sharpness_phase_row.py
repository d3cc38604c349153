"""Is a lower test error accompanied by a flatter solution? lambda_1, Tr(H), R_Max/R_Asc/R_Avg of SGD and SAM->SGD
solutions along one row of the [C23] phase diagram, against test error (docs/science.md §7.5).

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
from scipy.stats import spearmanr  # noqa: E402

from theory_sim.cnn.model import TwoLayerCNN  # noqa: E402
from theory_sim.cnn.run_sharpness import sharpness_of_run  # noqa: E402
from theory_sim.cnn.train import train_ensemble  # noqa: E402
from theory_sim.config import SimConfig  # noqa: E402
from theory_sim.study import Study, text_table  # noqa: E402

QUANTITIES = [("lambda_1", r"$\lambda_1(H)$"), ("trace", r"Tr$(H)$"), ("r_max", r"$R_{Max}$"),
              ("r_asc", r"$R_{Asc}$"), ("r_avg", r"$R_{Avg}$")]


def measure_row(args) -> tuple[pd.DataFrame, SimConfig]:
    """Train the row (SGD and SAM->SGD, every ||mu|| and seed) and measure every final network's sharpness."""
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
    return pd.DataFrame(rows), base


def report(df: pd.DataFrame, args, base: SimConfig) -> str:
    """Means per optimizer, Spearman correlations with the test error, and in which quantities SAM is flatter."""
    lines = [f"# Sharpness across a phase-diagram row (d={args.d}, {args.seeds} seeds, rho = tau = "
             f"{base.sam_radius:.3g})", "", "Means over seeds and ||mu||:", "",
             *text_table(df.groupby("optimizer")[["test_error", "train_loss"] + [k for k, _ in QUANTITIES]].mean()),
             "", "Spearman rank correlation with the test error (all runs of an optimizer):", ""]
    for opt, g in df.groupby("optimizer"):
        cors = ", ".join(f"{k} {spearmanr(g[k], g.test_error)[0]:+.2f}" for k, _ in QUANTITIES)
        lines.append(f"- {opt}: {cors}")
    pooled = ", ".join(f"{k} {spearmanr(df[k], df.test_error)[0]:+.2f}" for k, _ in QUANTITIES)
    lines += [f"- both optimizers pooled: {pooled}", ""]
    means = df.groupby("optimizer")[[k for k, _ in QUANTITIES]].mean()
    flatter = [k for k, _ in QUANTITIES if means.loc["sam", k] < means.loc["sgd", k]]
    lines.append(f"SAM->SGD solutions are flatter than SGD's on average in: {', '.join(flatter) or 'none'}; "
                 f"sharper in: {', '.join(k for k, _ in QUANTITIES if k not in flatter) or 'none'}.")
    return "\n".join(lines)


def figure(df: pd.DataFrame, args, base: SimConfig):
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
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=800)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: the repository's figures/)")
    args = ap.parse_args()
    study = Study(__file__, out=args.out)  # many small tensors: one thread per process is fastest
    df, base = measure_row(args)
    text = report(df, args, base)
    print(text)
    study.write_markdown(text)
    study.save_figure(figure(df, args, base), dpi=100)


if __name__ == "__main__":
    main()
