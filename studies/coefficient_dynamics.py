"""Claim [C23]: where SGD overfits harmfully, SAM's early phase switches the noise terms off at its perturbed point and
learns the signal, and SAM-then-SGD ends in benign overfitting (docs/science.md §6.4; setting and findings there).

    python studies/coefficient_dynamics.py [--seeds 8] [--d 3200] [--mu-norm 2] [--sigma-0 0.001 0.01]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from theory_sim.cnn.plotting import plot_trajectory
from theory_sim.cnn.train import train_ensemble
from theory_sim.config import SimConfig
from theory_sim.study import Study, text_table
from theory_sim.sweeps.cells import benign_threshold

COLUMNS = ["gamma_max", "rhobar_clean_mean", "rhobar_flipped_mean", "rhobar_max", "noise_active_frac",
           "update_noise_active_frac", "train_loss", "test_error"]
RATIO = ["gamma_mean", "rhobar_mean", "update_noise_active_frac"]  # Gamma / Rho of docs/science.md §4.5, §6.4
BENIGN_MARGIN = 0.1  # the sweeps' benign rule (docs/science.md §5.4): 0.14 at p = 0.1


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--d", type=int, default=3200)
    ap.add_argument("--mu-norm", type=float, default=2.0)
    ap.add_argument("--sigma-0", type=float, nargs="+", default=[0.001, 0.01],
                    help="init scales, one section each; the first is plotted (0.001: the sweeps' small init, "
                         "studies/phase_diagram_c23.toml; 0.01: the SimConfig default)")
    ap.add_argument("--sam-steps", type=int, default=200)
    ap.add_argument("--early-step", type=int, default=20, help="step at which the early phase is compared")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: the repository's figures/)")
    return ap.parse_args()


def init_scale(c: SimConfig) -> float:
    """sigma_0 P sigma_p sqrt(d): the theorems need it small (docs/science.md §2.1, §5.3)."""
    return c.sigma_0 * c.P * c.sigma_p * math.sqrt(c.d)


def verdict(early, err, flip_p, early_step) -> list[str]:
    """The checks of the claim, computed from the step-``early_step`` means and the final test errors."""
    sgd, sam = early.loc["sgd"], early.loc["sam"]
    benign = benign_threshold(flip_p, BENIGN_MARGIN)
    checks = {"update-point noise-active fraction lower": sam.update_noise_active_frac < sgd.update_noise_active_frac,
              "clean-sample memorisation lower": sam.rhobar_clean_mean < sgd.rhobar_clean_mean,
              "signal coefficient gamma larger": sam.gamma_max > sgd.gamma_max,
              "final test error lower": err["sam"] < err["sgd"],
              f"SAM->SGD benign (seed-mean test error <= {benign:.2f}, docs/science.md §5.4)": err["sam"] <= benign}
    lines = [f"At step {early_step}: update-point noise-active fraction {sam.update_noise_active_frac:.3g} "
             f"(SAM) vs {sgd.update_noise_active_frac:.3g} (SGD); clean-sample memorisation "
             f"{sam.rhobar_clean_mean:.3g} vs {sgd.rhobar_clean_mean:.3g}; flipped-sample memorisation "
             f"{sam.rhobar_flipped_mean:.3g} vs {sgd.rhobar_flipped_mean:.3g}; gamma_max {sam.gamma_max:.3g} vs "
             f"{sgd.gamma_max:.3g}.",
             f"Final test error: SAM->SGD {err['sam']:.3f}, SGD {err['sgd']:.3f}, Bayes {flip_p}.", ""]
    lines += [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()]
    return lines + ["", f"Claim {'HOLDS' if all(checks.values()) else 'DOES NOT HOLD'} in this setting."]


def early_ranges(t, early_step: int) -> list[str]:
    """Range over the logged steps 1..``early_step`` of Gamma / Rho (ratio of seed means) and of the update-point
    noise-active fraction (seed mean), per optimizer: the reference table of docs/science.md §6.4."""
    m = t[(t.step > 0) & (t.step <= early_step)].groupby(["optimizer", "step"])[RATIO].mean()
    m = m.assign(ratio=m.gamma_mean / m.rhobar_mean)
    steps = sorted(m.index.get_level_values("step").unique())
    lines = [f"Logged steps {steps[0]}-{steps[-1]} (seed means at each step, min-max over the steps):", ""]
    for opt, g in m.groupby(level="optimizer"):
        lines.append(f"- {opt}: Gamma/Rho {g.ratio.min():.3g}-{g.ratio.max():.3g}, update-point noise-active "
                     f"fraction {g.update_noise_active_frac.min():.3g}-{g.update_noise_active_frac.max():.3g}")
    return lines + [""]


def section(t, summary, base: SimConfig, sam_steps: int, early_step: int) -> list[str]:
    """The report of one init scale: its trajectory table ``t`` and summary rows."""
    early = t[t.step == early_step].groupby("optimizer")[COLUMNS].mean()
    at_switch = t[t.step == sam_steps].groupby("optimizer")[COLUMNS].mean()
    final = summary.groupby("optimizer")[["train_loss", "test_error", "test_error_heldout"]].agg(["mean", "std"])
    err = summary.groupby("optimizer").test_error.mean()
    return [f"## sigma_0 = {base.sigma_0:g} (init scale sigma_0 P sigma_p sqrt(d) = {init_scale(base):.3g})", "",
            f"Early phase, step {early_step} (mean over seeds):", "", *text_table(early), "",
            *early_ranges(t, early_step),
            f"Step {sam_steps} (end of SAM's phase):", "", *text_table(at_switch), "", "Final (100 epochs):", "",
            *text_table(final), "", *verdict(early, err, base.flip_p, early_step), ""]


def main() -> None:
    args = arguments()
    study = Study(__file__, out=args.out)  # many small tensors: one thread per process is fastest
    bases = [SimConfig(d=args.d, mu_norm=args.mu_norm, n=20, m=10, P=2, sigma_p=1.0, flip_p=0.1, eta=0.1,
                       sigma_0=s0, batch_size=5, epochs=100, n_test=2000, log_every=4) for s0 in args.sigma_0]
    configs = [b.replace(seed=s, **opt) for b in bases for opt in ({}, dict(optimizer="sam", c_tau=1.0,
               sam_steps=args.sam_steps)) for s in range(args.seeds)]
    res = train_ensemble(configs)  # every init scale, SGD and SAM, as one batched computation on shared data seeds
    t = res.trajectory.assign(sigma_0=[configs[r].sigma_0 for r in res.trajectory.run])
    summary = res.summary.assign(sigma_0=[c.sigma_0 for c in configs])
    report = [f"# Coefficient dynamics, SGD vs SAM->SGD (d={args.d}, ||mu||={args.mu_norm}, {args.seeds} seeds)", "",
              "One section per init scale sigma_0; the sweeps (studies/phase_diagram_c23.toml) use 0.001.", ""]
    for b in bases:
        report += section(t[t.sigma_0 == b.sigma_0], summary[summary.sigma_0 == b.sigma_0], b, args.sam_steps,
                          args.early_step)
    print("\n".join(report))
    study.write_markdown("\n".join(report).rstrip())
    first = t[t.sigma_0 == bases[0].sigma_0]
    err = summary[summary.sigma_0 == bases[0].sigma_0].groupby("optimizer").test_error.mean()
    arrow = r"SAM $\to$ SGD"
    plot_trajectory(first, study.path(".png"), bayes_error=bases[0].flip_p, markers={arrow: args.sam_steps},
                    title=fr"[C23] SGD vs {arrow}, $d={args.d}$, $\|\mu\|={args.mu_norm:g}$, "
                          fr"$\sigma_0={bases[0].sigma_0:g}$, $n=20$, $P=2$, $p=0.1$: "
                          f"test error SGD {err['sgd']:.3f}, {arrow} {err['sam']:.3f}")


if __name__ == "__main__":
    main()
