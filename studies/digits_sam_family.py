"""Study digits_sam_family: [T24]'s SAM-family claims on real images at CPU scale (scikit-learn's digits), next to
the theory model; the setting, the claims as stated and how each verdict is computed: docs/science.md §9.5.

    python studies/digits_sam_family.py --out runs/digits_sam_family        (trains; ~8 min of CPU, see the report)
    python studies/digits_sam_family.py --out runs/digits_sam_family --report-only   (tables -> report)
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from theory_sim.cifar.config import CifarConfig
from theory_sim.io import atomic_write_bytes, save_figure, save_table

OPTIMIZERS = {"sgd": dict(optimizer="sgd"), "sam": dict(optimizer="sam"), "randsam": dict(optimizer="randsam"),
              "msam2": dict(optimizer="msam", ascent_steps=2), "msam5": dict(optimizer="msam", ascent_steps=5),
              "asam": dict(optimizer="asam")}
NOISE = (0.0, 0.2, 0.4)
SEEDS = 5
BASE = dict(dataset="digits", depth=10, width=1, epochs=4, batch_size=64, lr=0.1, sharpness_samples=64)
WRN_BASE = 8
COMPARABLE_PP = 1.0   # "comparable": the paired difference's interval lies within +-1 percentage point
NAME = "digits_sam_family"


def run(out: Path, labels) -> pd.DataFrame:
    """Train the given optimizers (each one vmapped computation of 15 runs), each saved as OUT/<label>.parquet as
    soon as it is done (several processes may share the optimizers); return every optimizer's table found."""
    from theory_sim.cifar.vmap import train_stacked

    torch.set_num_threads(1)
    for label in labels:
        kw = OPTIMIZERS[label]
        t0 = time.perf_counter()
        cfgs = [CifarConfig(**BASE, **kw, label_noise=p, seed=s) for p in NOISE for s in range(SEEDS)]
        df = train_stacked(cfgs, log=lambda *_: None, base=WRN_BASE).assign(label=label)
        print(f"{label}: {len(cfgs)} runs in {time.perf_counter() - t0:.0f} s, test acc by noise "
              f"{df.groupby('label_noise').test_acc.mean().round(4).to_dict()}", flush=True)
        save_table(df, out / f"{label}.parquet")
    return collect(out)


def collect(out: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(out / f"{label}.parquet") for label in OPTIMIZERS if (out / f"{label}.parquet").exists()]
    table = pd.concat(frames, ignore_index=True)
    save_table(table, out / "summary.parquet")
    return table


def paired(table: pd.DataFrame, col: str, a: str, b: str, noise: float, n_boot: int = 2000, seed: int = 0):
    """Mean over seeds of a - b (col), with a 95% bootstrap interval over seeds."""
    t = table[table.label_noise == noise].set_index(["label", "seed"])[col]
    diff = (t.loc[a] - t.loc[b]).dropna().to_numpy()
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)
    return float(diff.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)), len(diff)


def theory_answer(path: Path, n_boot: int = 2000) -> dict:
    """The theory model's paired differences (test ACCURACY = 1 - error, in pp, so signs read as on the digits)."""
    if not path.exists():
        return {}
    df = pd.read_parquet(path)
    per_seed = (1 - df[df.d >= 3200].groupby(["label", "seed"]).test_error.mean()) * 100
    out = {}
    rng = np.random.default_rng(0)
    for a, b in (("randsam", "sam"), ("sam", "sgd"), ("randsam", "sgd"), ("msam2", "sam"), ("msam5", "sam")):
        diff = (per_seed.loc[a] - per_seed.loc[b]).to_numpy()
        boot = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)
        out[(a, b)] = (float(diff.mean()), *np.percentile(boot, [2.5, 97.5]).tolist(), len(diff))
    return out


def verdicts(table: pd.DataFrame) -> list[dict]:
    t = table.assign(test_acc_pp=100 * table.test_acc)
    rows = []
    for p in NOISE:
        def check(claim, col, a, b, holds_fn):
            m, lo, hi, k = paired(t, col, a, b, p)
            rows.append(dict(noise=p, claim=claim, measured=f"{a} - {b}", column=col, mean=m, ci_low=lo, ci_high=hi,
                             seeds=k, holds=bool(holds_fn(lo, hi))))
        check("Rand-SAM comparable to SAM (within +-1 pp)", "test_acc_pp", "randsam", "sam",
              lambda lo, hi: -COMPARABLE_PP <= lo and hi <= COMPARABLE_PP)
        check("SAM above SGD", "test_acc_pp", "sam", "sgd", lambda lo, hi: lo > 0)
        check("Rand-SAM above SGD", "test_acc_pp", "randsam", "sgd", lambda lo, hi: lo > 0)
        for k in ("msam2", "msam5"):
            check(f"{k} worse than SAM", "test_acc_pp", k, "sam", lambda lo, hi: hi < 0)
            check(f"{k} sharper than SAM (lambda_1)", "lambda_1", k, "sam", lambda lo, hi: lo > 0)
            check(f"{k} sharper than SAM (Tr H)", "trace", k, "sam", lambda lo, hi: lo > 0)
    return rows


def figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    labels = list(OPTIMIZERS)
    for ax, (col, name) in zip(axes, (("test_acc", "test accuracy"), ("noisy_memorized_frac",
                                                                        "noisy labels memorised"),
                                      ("lambda_1", "lambda_1 (train loss, 64 images)"))):
        for j, p in enumerate(NOISE):
            g = table[table.label_noise == p].groupby("label")[col]
            mean, se = g.mean().reindex(labels), (g.std() / np.sqrt(g.count())).reindex(labels)
            ax.errorbar(np.arange(len(labels)) + 0.2 * (j - 1), mean, yerr=1.96 * se, fmt="o", capsize=3,
                        label=f"label noise {p:g}")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("digits (1,297 train / 500 test), GroupNorm WRN-10-1 (8-8-16-32), 4 epochs (80 steps), "
                 "5 seeds: mean +- 1.96 se")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def report(table: pd.DataFrame, out: Path, gallery: Path) -> str:
    rows = verdicts(table)
    theory = theory_answer(gallery / "results" / "sam_family_phase" / "results.parquet")
    agg = table.groupby(["label_noise", "label"]).agg(
        test_acc=("test_acc", "mean"), test_acc_se=("test_acc", lambda x: x.std() / np.sqrt(len(x))),
        train_acc=("train_acc", "mean"), noisy_memorized=("noisy_memorized_frac", "mean"),
        noisy_true=("noisy_true_label_frac", "mean"), lambda_1=("lambda_1", "mean"), trace=("trace", "mean"))
    lines = [f"# {NAME}: [T24]'s SAM-family claims on real images (scikit-learn digits), next to the theory model",
             "", "Produced by `python studies/digits_sam_family.py` (its docstring states the setting). Every verdict "
             "is computed from `figures/results/digits_sam_family/summary.parquet`: paired differences over 5 seeds "
             "with 95% bootstrap intervals.", "", "## Per optimizer (means over seeds)", "",
             "| noise | optimizer | test acc | (se) | train acc (noisy labels) | noisy labels memorised | "
             "noisy predicted true | lambda_1 | Tr(H) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (p, lab), r in agg.iterrows():
        lines.append(f"| {p:g} | {lab} | {r.test_acc:.4f} | {r.test_acc_se:.4f} | {r.train_acc:.4f} | "
                     f"{r.noisy_memorized:.3f} | {r.noisy_true:.3f} | {r.lambda_1:.3g} | {r.trace:.3g} |")
    lines += ["", "## Training budget (from the table)", ""] + budget_sentences(table)
    lines += ["", "## Verdicts (digits)", "", "| noise | claim | paired difference | mean | 95% interval | holds |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['noise']:g} | {r['claim']} | {r['measured']} ({r['column']}) | {r['mean']:.3g} | "
                     f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}] | {'yes' if r['holds'] else 'no'} |")
    held = sum(r["holds"] for r in rows)
    lines += ["", f"{held} of {len(rows)} checks hold.", ""]
    if theory:
        lines += ["## The theory model's answer (committed sam_family_phase table, d >= 3200, test accuracy in pp)",
                  "", "| comparison | mean | 95% interval | seeds |", "| --- | --- | --- | --- |"]
        for (a, b), (m, lo, hi, k) in theory.items():
            lines.append(f"| {a} - {b} | {m:.3g} | [{lo:.3g}, {hi:.3g}] | {k} |")
        lines.append("")
    lines += ["## Summary", ""] + summary_sentences(rows, theory) + [""]
    text = "\n".join(lines)
    atomic_write_bytes(gallery / f"{NAME}.md", text.encode())
    pd.DataFrame(rows).to_json(out / "verdicts.json", orient="records", indent=1)
    return text


def budget_sentences(table: pd.DataFrame) -> list[str]:
    """How far training got: SGD's fit of its training labels at each noise level, and every optimizer's memorised
    fraction of the flipped labels (the study is about trained models, so this is stated, not assumed)."""
    out = []
    for p in NOISE:
        t = table[table.label_noise == p]
        sgd = t[t.label == "sgd"]
        line = (f"- label noise {p:g}: SGD's accuracy on its training labels {sgd.train_acc.mean():.4f} (min over "
                f"seeds {sgd.train_acc.min():.4f}), its test accuracy {sgd.test_acc.mean():.4f}")
        if p > 0:
            mem = t.groupby("label").noisy_memorized_frac.mean().reindex(list(OPTIMIZERS))
            line += "; noisy labels memorised: " + ", ".join(f"{k} {v:.3f}" for k, v in mem.items())
        out.append(line + ".")
    return out


def summary_sentences(rows, theory) -> list[str]:
    """One sentence per claim, from the verdict rows (which noise levels hold, which fail)."""
    out = []
    claims = dict.fromkeys(r["claim"] for r in rows)
    for claim in claims:
        rs = [r for r in rows if r["claim"] == claim]
        holds = [f"{r['noise']:g}" for r in rs if r["holds"]]
        fails = [f"{r['noise']:g} ({r['mean']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}])" for r in rs
                 if not r["holds"]]
        out.append(f"- {claim}: holds at label noise {', '.join(holds) or 'none'}; fails at "
                   f"{', '.join(fails) or 'none'}.")
    for (a, b), (m, lo, hi, _) in theory.items():
        side = "above" if lo > 0 else ("below" if hi < 0 else "not separated from")
        out.append(f"- Theory model: {a} is {side} {b} in test accuracy ({m:.3g} pp [{lo:.3g}, {hi:.3g}]).")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs") / NAME)
    ap.add_argument("--gallery", type=Path, default=Path("figures"))
    ap.add_argument("--report-only", action="store_true", help="read OUT/<optimizer>.parquet, write the report")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="which to train (comma-separated)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = collect(args.out) if args.report_only else run(args.out, args.optimizers.split(","))
    results = args.gallery / "results" / NAME
    results.mkdir(parents=True, exist_ok=True)
    for f in ("summary.parquet", "summary.json"):
        if (args.out / f).exists():
            shutil.copy(args.out / f, results / f)
    figure(table, args.gallery / f"{NAME}.png")
    print(report(table, args.out, args.gallery))


if __name__ == "__main__":
    main()
