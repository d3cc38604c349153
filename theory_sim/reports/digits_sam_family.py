"""The report of studies/digits_sam_family.py: [T24]'s SAM-family claims on real images at CPU scale (scikit-learn's
digits), next to the theory model's answer (docs/science.md §9.5).

Each claim is a paired difference over seeds (same seed: same initialisation, noisy labels and batch order) with its
95% t-interval (theory_sim.intervals.mean_interval) and the one verdict rule of theory_sim.claims.verdict against
the region the claim predicts: consistent (the interval inside it), contradicted (outside), inconclusive (across
an edge, with the seeds that would decide). The theory model's answer (the committed sam_family_phase table, cells
with d >= 3200, paired by seed) is exploratory: effect sizes with intervals, no verdict.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.claims import VERDICTS, verdict
from theory_sim.intervals import mean_interval
from theory_sim.io import atomic_write_bytes, save_figure
from theory_sim.reports.study_report import EXPLORATORY, interval_text, where
from theory_sim.sweeps.verify_report import estimate_text, region_text, verdict_text

NAME = "digits_sam_family"
SOURCE = "[T24] (arXiv 2411.01714), docs/science.md §8"
COMPARABLE_PP = 1.0   # "comparable": the paired difference lies within +-1 percentage point of test accuracy
# (claim, column, a, b, predicted region of mean(a - b)); test_acc_pp is test accuracy in percentage points
CLAIMS = [("Rand-SAM comparable to SAM", "test_acc_pp", "randsam", "sam", (-COMPARABLE_PP, COMPARABLE_PP)),
          ("SAM above SGD", "test_acc_pp", "sam", "sgd", (0.0, np.inf)),
          ("Rand-SAM above SGD", "test_acc_pp", "randsam", "sgd", (0.0, np.inf))]
for _k in ("msam2", "msam5"):
    CLAIMS += [(f"{_k} worse than SAM", "test_acc_pp", _k, "sam", (-np.inf, 0.0)),
               (f"{_k} sharper than SAM (lambda_1)", "lambda_1", _k, "sam", (0.0, np.inf)),
               (f"{_k} sharper than SAM (Tr H)", "trace", _k, "sam", (0.0, np.inf))]
THEORY = (("randsam", "sam"), ("sam", "sgd"), ("randsam", "sgd"), ("msam2", "sam"), ("msam5", "sam"))


def paired(table: pd.DataFrame, col: str, a: str, b: str, noise: float):
    """The t-interval over seeds of a - b (col) at one label-noise level."""
    t = table[table.label_noise == noise].set_index(["label", "seed"])[col]
    return mean_interval((t.loc[a] - t.loc[b]).dropna().to_numpy())


def verdicts(table: pd.DataFrame) -> list[dict]:
    """One claim line per (label noise, claim): the paired interval and its verdict against the claim's region."""
    t = table.assign(test_acc_pp=100 * table.test_acc)
    rows = []
    for p in sorted(t.label_noise.unique()):
        for claim, col, a, b, region in CLAIMS:
            iv = paired(t, col, a, b, p)
            word, more = verdict(iv, region)
            rows.append(dict(claim=claim, variant=f"{a} - {b} ({col})", fixed={"label noise": float(p)},
                             source=SOURCE, estimate=iv.estimate, ci_low=iv.low, ci_high=iv.high, seeds=iv.units,
                             region=list(region), verdict=word, seeds_to_decide=more))
    return rows


def claim_lines(rows: list[dict]) -> list[str]:
    """The claim table (the columns of verify's, theory_sim.sweeps.verify_report) and its one-line summary."""
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    head = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    lines = [f"**Claims ([T24] on digits):** {head}.", "",
             "| claim | compared, slice | source | seeds | estimate [95% CI] | predicted | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['claim']} | {r['variant']} (label noise {r['fixed']['label noise']:g}) | {r['source']} | "
                     f"{r['seeds']} | {estimate_text(r)} | {region_text(r['region'])} | {verdict_text(r)} |")
    return lines


def summary_sentences(rows: list[dict]) -> list[str]:
    """One sentence per claim: its verdict at each label-noise level."""
    out = []
    for claim in dict.fromkeys(r["claim"] for r in rows):
        rs = [r for r in rows if r["claim"] == claim]
        by = {v: [f"{r['fixed']['label noise']:g}" for r in rs if r["verdict"] == v] for v in VERDICTS}
        out.append(f"- {claim}: " + "; ".join(f"{v} at label noise {', '.join(n)}" for v, n in by.items() if n)
                   + ".")
    return out


def theory_answer(path: Path) -> dict:
    """The theory model's paired differences (test ACCURACY = 1 - error, in pp, so signs read as on the digits):
    (a, b) -> Interval over seeds of the per-seed mean over the cells with d >= 3200."""
    if not path.exists():
        return {}
    df = pd.read_parquet(path)
    per_seed = (1 - df[df.d >= 3200].groupby(["label", "seed"]).test_error.mean()) * 100
    return {(a, b): mean_interval((per_seed.loc[a] - per_seed.loc[b]).to_numpy()) for a, b in THEORY}


def budget_sentences(table: pd.DataFrame) -> list[str]:
    """How far training got: SGD's fit of its training labels at each noise level, and every optimizer's memorised
    fraction of the flipped labels (the study is about trained models, so this is stated, not assumed)."""
    out = []
    labels = list(pd.unique(table.label))
    for p in sorted(table.label_noise.unique()):
        t = table[table.label_noise == p]
        sgd = t[t.label == "sgd"]
        line = (f"- label noise {p:g}: SGD's accuracy on its training labels {sgd.train_acc.mean():.4f} (min over "
                f"seeds {sgd.train_acc.min():.4f}), its test accuracy {sgd.test_acc.mean():.4f}")
        if p > 0:
            mem = t.groupby("label").noisy_memorized_frac.mean().reindex(labels)
            line += "; noisy labels memorised: " + ", ".join(f"{k} {v:.3f}" for k, v in mem.items())
        out.append(line + ".")
    return out


COST = re.compile(r"^\*\*Budget and cost.*?(?=\n\n)", re.S | re.M)


def cost_note(previous: Path) -> list[str]:
    """The measured cost of the run (CPU time, load), written by hand after a run: it is not in the table, so a
    report regenerated from the table keeps it from the report it replaces."""
    found = COST.search(previous.read_text()) if previous.exists() else None
    return [found.group(0), ""] if found else []


def report(table: pd.DataFrame, out: Path, gallery: Path) -> str:
    """``gallery``/digits_sam_family.md and ``out``/verdicts.json from the study's table; the text is returned."""
    rows = verdicts(table)
    theory = theory_answer(gallery / "results" / "sam_family_phase" / "results.parquet")
    path = gallery / f"{NAME}.md"
    agg = table.groupby(["label_noise", "label"]).agg(
        test_acc=("test_acc", "mean"), test_acc_se=("test_acc", lambda x: x.std() / np.sqrt(len(x))),
        train_acc=("train_acc", "mean"), noisy_memorized=("noisy_memorized_frac", "mean"),
        noisy_true=("noisy_true_label_frac", "mean"), lambda_1=("lambda_1", "mean"), trace=("trace", "mean"))
    lines = [f"# {NAME}: [T24]'s SAM-family claims on real images (scikit-learn digits), next to the theory model",
             "", f"Produced by `python studies/digits_sam_family.py` (its docstring states the setting) from "
             f"`figures/results/{NAME}/summary.parquet`. Each claim: a paired difference over seeds with its 95% "
             "t-interval and the verdict rule of docs/science.md §5.6 against the region the claim predicts.", "",
             *claim_lines(rows), "", *summary_sentences(rows), "", *cost_note(path),
             "## Per optimizer (means over seeds)", "",
             "| noise | optimizer | test acc | (se) | train acc (noisy labels) | noisy labels memorised | "
             "noisy predicted true | lambda_1 | Tr(H) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (p, lab), r in agg.iterrows():
        lines.append(f"| {p:g} | {lab} | {r.test_acc:.4f} | {r.test_acc_se:.4f} | {r.train_acc:.4f} | "
                     f"{r.noisy_memorized:.3f} | {r.noisy_true:.3f} | {r.lambda_1:.3g} | {r.trace:.3g} |")
    lines += ["", "## Training budget (from the table)", ""] + budget_sentences(table) + [""]
    if theory:
        lines += ["## The theory model's answer (exploratory)", "", EXPLORATORY, "",
                  "The committed sam_family_phase table, mean over the cells with d >= 3200 per seed, test accuracy "
                  "in pp:", "", "| comparison | a - b [95% CI] | seeds | interval |", "| --- | --- | --- | --- |"]
        for (a, b), iv in theory.items():
            lines.append(f"| {a} - {b} | {interval_text(iv.estimate, iv.low, iv.high, digits=2)} | {iv.units} | "
                         f"{where(iv.low, iv.high)} |")
        lines.append("")
    text = "\n".join(lines)
    atomic_write_bytes(path, text.encode())
    pd.DataFrame(rows).to_json(out / "verdicts.json", orient="records", indent=1)
    return text


def figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    labels = list(pd.unique(table.label))
    noise = sorted(table.label_noise.unique())
    for ax, (col, name) in zip(axes, (("test_acc", "test accuracy"), ("noisy_memorized_frac",
                                                                        "noisy labels memorised"),
                                      ("lambda_1", "lambda_1 (train loss, 64 images)"))):
        for j, p in enumerate(noise):
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
