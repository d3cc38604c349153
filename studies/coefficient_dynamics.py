"""Claim [C23]: where SGD overfits harmfully, SAM's early phase switches the noise terms off at its perturbed point and
learns the signal, and SAM-then-SGD ends in benign overfitting (docs/science.md §6.4; setting and findings there).

    python studies/coefficient_dynamics.py [--seeds 8] [--d 3200] [--mu-norm 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from theory_sim.cnn.plotting import plot_trajectory
from theory_sim.cnn.train import train_ensemble
from theory_sim.config import SimConfig
from theory_sim.study import Study, text_table

COLUMNS = ["gamma_max", "rhobar_clean_mean", "rhobar_flipped_mean", "rhobar_max", "noise_active_frac",
           "update_noise_active_frac", "train_loss", "test_error"]


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--d", type=int, default=3200)
    ap.add_argument("--mu-norm", type=float, default=2.0)
    ap.add_argument("--sam-steps", type=int, default=200)
    ap.add_argument("--early-step", type=int, default=20, help="step at which the early phase is compared")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: the repository's figures/)")
    return ap.parse_args()


def verdict(early, err, flip_p, early_step) -> list[str]:
    """The four checks of the claim, computed from the step-``early_step`` means and the final test errors."""
    sgd, sam = early.loc["sgd"], early.loc["sam"]
    checks = {"update-point noise-active fraction lower": sam.update_noise_active_frac < sgd.update_noise_active_frac,
              "clean-sample memorisation lower": sam.rhobar_clean_mean < sgd.rhobar_clean_mean,
              "signal coefficient gamma larger": sam.gamma_max > sgd.gamma_max,
              "final test error lower": err["sam"] < err["sgd"]}
    lines = [f"At step {early_step}: update-point noise-active fraction {sam.update_noise_active_frac:.3g} "
             f"(SAM) vs {sgd.update_noise_active_frac:.3g} (SGD); clean-sample memorisation "
             f"{sam.rhobar_clean_mean:.3g} vs {sgd.rhobar_clean_mean:.3g}; flipped-sample memorisation "
             f"{sam.rhobar_flipped_mean:.3g} vs {sgd.rhobar_flipped_mean:.3g}; gamma_max {sam.gamma_max:.3g} vs "
             f"{sgd.gamma_max:.3g}.",
             f"Final test error: SAM->SGD {err['sam']:.3f}, SGD {err['sgd']:.3f}, Bayes {flip_p}.", ""]
    lines += [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()]
    return lines + ["", f"Claim {'HOLDS' if all(checks.values()) else 'DOES NOT HOLD'} in this setting."]


def main() -> None:
    args = arguments()
    study = Study(__file__, out=args.out)  # many small tensors: one thread per process is fastest
    base = SimConfig(d=args.d, mu_norm=args.mu_norm, n=20, m=10, P=2, sigma_p=1.0, flip_p=0.1, eta=0.1,
                     batch_size=5, epochs=100, n_test=2000, log_every=4)
    configs = ([base.replace(seed=s) for s in range(args.seeds)]
               + [base.replace(optimizer="sam", c_tau=1.0, sam_steps=args.sam_steps, seed=s)
                  for s in range(args.seeds)])
    res = train_ensemble(configs)  # SGD and SAM runs share data seeds and train as one batched computation

    t = res.trajectory
    early = t[t.step == args.early_step].groupby("optimizer")[COLUMNS].mean()
    at_switch = t[t.step == args.sam_steps].groupby("optimizer")[COLUMNS].mean()
    final = res.summary.groupby("optimizer")[["train_loss", "test_error", "test_error_heldout"]].agg(["mean", "std"])
    err = res.summary.groupby("optimizer").test_error.mean()
    report = "\n".join([f"# Coefficient dynamics, SGD vs SAM->SGD (d={args.d}, ||mu||={args.mu_norm}, {args.seeds} "
                        "seeds)", "", f"Early phase, step {args.early_step} (mean over seeds):", "",
                        *text_table(early), "", f"Step {args.sam_steps} (end of SAM's phase):", "",
                        *text_table(at_switch), "", "Final (100 epochs):", "", *text_table(final), "",
                        *verdict(early, err, base.flip_p, args.early_step)])
    print(report)
    study.write_markdown(report)
    arrow = r"SAM $\to$ SGD"
    plot_trajectory(t, study.path(".png"), bayes_error=base.flip_p, markers={arrow: args.sam_steps},
                    title=fr"[C23] SGD vs {arrow}, $d={args.d}$, $\|\mu\|={args.mu_norm:g}$, $n=20$, $P=2$, $p=0.1$: "
                          f"test error SGD {err['sgd']:.3f}, {arrow} {err['sam']:.3f}")


if __name__ == "__main__":
    main()
