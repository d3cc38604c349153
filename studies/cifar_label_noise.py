"""SAM vs SGD under symmetric label noise on CIFAR-10: clean test accuracy at noise rates 20/40/60/80 % beside
[F21]'s ResNet-32 table (docs/science.md §9.2: the package trains a WideResNet, so compare trends, not digits).

    python studies/cifar_label_noise.py --data-dir ~/data/cifar [--out runs/label_noise]
    python studies/cifar_label_noise.py --smoke        # tiny WRN on a synthetic CIFAR, ~1 minute on a CPU
"""
from theory_sim.cifar.study import base_config, print_report, run_all, study_arguments
from theory_sim.cifar.train import CifarConfig

# [F21] Sec. 3.3, ResNet-32 on CIFAR-10, clean test accuracy (%) by noise rate
REFERENCE = {"sgd": {0.2: 84.8, 0.4: 68.8, 0.6: 48.2, 0.8: 26.2}, "sam": {0.2: 95.1, 0.4: 93.4, 0.6: 90.5, 0.8: 77.9}}


def main() -> None:
    args = study_arguments(__doc__.splitlines()[0], "runs/cifar_label_noise")
    rates = (0.2, 0.8) if args.smoke else (0.2, 0.4, 0.6, 0.8)
    configs = {f"{opt}_noise{int(100 * r)}": CifarConfig(**base_config(args, optimizer=opt, label_noise=r,
                                                                        sharpness=False))
               for r in rates for opt in ("sgd", "sam")}
    df = run_all(configs, args.out)
    df["noise_%"] = (100 * df.label_noise).round().astype(int)
    df["ref_test_acc_F21"] = [REFERENCE[o][n] if args.dataset == "cifar10" else float("nan")
                              for o, n in zip(df.optimizer, df.label_noise)]
    table = df.pivot(index="noise_%", columns="optimizer", values=["test_acc", "ref_test_acc_F21", "train_acc"])
    print_report(args, "clean test accuracy (%) measured vs [F21] (ResNet-32, CIFAR-10); train_acc is on the "
                       "noisy labels", table, "{:.1f}")


if __name__ == "__main__":
    main()
