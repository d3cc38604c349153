"""SGD vs SAM vs Rand-SAM vs multi-step SAM on CIFAR (the [T24] comparison), WRN-28-10 with the [F21] recipe:
final test error, generalisation gap and the final model's sharpness, beside the papers' numbers (docs/science.md §9.1).

    python studies/cifar_sam_variants.py --data-dir ~/data/cifar [--dataset cifar100] [--out runs/sam_variants]
    python studies/cifar_sam_variants.py --smoke        # tiny WRN on a synthetic CIFAR, ~1 minute on a CPU
"""
from theory_sim.cifar.study import base_config, print_report, run_all, study_arguments
from theory_sim.cifar.train import CifarConfig

# [F21] WRN-28-10 test error (%): Table 1 (SGD, SAM) and App. C.6 (SAM with 1/2/3/5 ascent steps, CIFAR-10 only)
REFERENCE = {"cifar10": {"sgd": 3.5, "sam": 2.7, "msam_k2": 2.76, "msam_k3": 2.73, "msam_k5": 2.77},
             "cifar100": {"sgd": 18.8, "sam": 16.5}}


def main() -> None:
    args = study_arguments(__doc__.splitlines()[0], "runs/cifar_sam_variants")
    variants = {"sgd": dict(optimizer="sgd"), "sam": dict(optimizer="sam"), "randsam": dict(optimizer="randsam"),
                "msam_k2": dict(optimizer="msam", ascent_steps=2), "msam_k3": dict(optimizer="msam", ascent_steps=3)}
    if not args.smoke:
        variants["msam_k5"] = dict(optimizer="msam", ascent_steps=5)
    configs = {name: CifarConfig(**base_config(args, **kw)) for name, kw in variants.items()}
    df = run_all(configs, args.out)
    ref = REFERENCE[args.dataset]
    df.insert(df.columns.get_loc("test_err") + 1, "ref_test_err_F21", [ref.get(r, float("nan")) for r in df.run])
    cols = ["run", "epochs_done", "test_err", "ref_test_err_F21", "train_acc", "gen_gap", "lambda_1", "trace",
            "r_max", "r_asc", "r_avg"]
    print_report(args, "measured vs [F21] WRN-28-10 (200 epochs) test error in %; gap = train acc - test acc (%), "
                       "sharpness of the final training loss at rho = the run's radius (SGD: 0.05)",
                 df[cols].set_index("run"))


if __name__ == "__main__":
    main()
