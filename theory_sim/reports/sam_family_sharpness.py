"""Does a more exact ascent find sharper (or flatter) solutions? lambda_1 and Tr(H) of every SAM-family rule's
solution along one phase-diagram row, against its test error [T24, W23].

Claim examined ([T24], arXiv 2411.01714, on WRN-28-10 / CIFAR; docs/science.md §8 says what it reports): SAM's
benefit does not come from solving the inner maximisation well — more precise approximations of the SAM objective
(multi-step SAM) generalise worse, and Rand-SAM (a random direction) is comparable to SAM, both better than SGD.
Whether the theory model agrees is read from paired differences in figures/sam_family_phase.md (it does not for
Rand-SAM); this script asks whether sharpness tracks the test error. Here the same rules train the two-layer CNN
of [C23] (n=20, m=10, P=2, sigma_p=1, p=0.1, B=5, eta=0.1, 100 epochs, each rule for the first 200 steps then
SGD) at d=800 over a row of ||mu||; every final network gets lambda_1 and Tr(H) of its training loss
(theory_sim.sharpness), and the script reports, per rule, the mean test error, train loss, lambda_1 and Tr(H),
the Spearman correlation of each sharpness with the test error (jackknife-t over seeds) and the paired differences
from SAM over seeds (t-intervals; no claim of theory_sim.claims covers sharpness, so no verdict).
Writes figures/sam_family_sharpness.png and figures/sam_family_sharpness.md.

The measurement and report behind ``studies/sam_family_sharpness.py`` (docs/science.md §8, §7.5)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from theory_sim.cnn.model import TwoLayerCNN  # noqa: E402
from theory_sim.cnn.run_sharpness import run_objective  # noqa: E402
from theory_sim.cnn.train import train_ensemble  # noqa: E402
from theory_sim.config import SimConfig  # noqa: E402
from theory_sim.io import atomic_write_bytes, save_figure  # noqa: E402
from theory_sim.reports.study_report import (EXPLORATORY, correlation, effect, interval_text, paired_on,  # noqa: E402
                                             where)
from theory_sim.sharpness import hutchinson_trace, top_eigenvalues  # noqa: E402
from theory_sim.sweeps.paired import pooled  # noqa: E402

# label -> SimConfig overrides: every rule for the first 200 steps, then SGD
RULES = {"sgd": dict(optimizer="sgd"), "sam": dict(optimizer="sam"), "usam": dict(optimizer="usam"),
         "randsam": dict(optimizer="randsam"), "msam2": dict(optimizer="msam", ascent_steps=2),
         "msam5": dict(optimizer="msam", ascent_steps=5), "1-sam": dict(optimizer="sam", m_sharpness=1)}
MUS = np.round(np.geomspace(0.7, 5.6, 5), 3)  # the row of ||mu|| at fixed d


def measure(d: int, seeds: int) -> pd.DataFrame:
    """Train every rule on the row (seeds 0..seeds-1); one row per run: test error, train loss, lambda_1, Tr(H)."""
    base = SimConfig(d=d, n=20, m=10, P=2, sigma_p=1.0, flip_p=0.1, eta=0.1, batch_size=5, epochs=100,
                     sigma_0=0.001, n_test=0, n_mc=8000)
    rows = []
    for label, rule in RULES.items():   # one ensemble per rule: rules with different structure train apart
        steps = {} if rule["optimizer"] == "sgd" else {"sam_steps": 200}
        configs = [base.replace(mu_norm=float(mu), seed=s, **rule, **steps) for s in range(seeds) for mu in MUS]
        res = train_ensemble(configs, track=False, log=False, progress=False)
        net = TwoLayerCNN.for_config(base)
        for r, cfg in enumerate(configs):
            obj = run_objective(net, res.params, res.data, r)
            rows.append({"rule": label, "mu_norm": cfg.mu_norm, "seed": cfg.seed,
                         "test_error": res.summary.test_error[r], "train_loss": res.summary.train_loss[r],
                         "lambda_1": float(top_eigenvalues(obj, k=1, seed=cfg.seed).values[0]),
                         "trace": hutchinson_trace(obj, 32, seed=cfg.seed).value})
    return pd.DataFrame(rows)


def sharpness_sentence(diffs: pd.DataFrame) -> str:
    """Where the paired lambda_1 differences of the multi-step rules from SAM lie (``diffs``: paired_on rows)."""
    parts, side = [], {}
    for rule in ("msam2", "msam5"):
        row = pooled(diffs, rule, "sam")
        if row:
            side[rule] = where(row["ci_low"], row["ci_high"], "below 0 (flatter)", "above 0 (sharper)")
            parts.append(f"{rule} {effect(row, 3)}, interval {side[rule]}")
    sharper = [r for r, s in side.items() if s.startswith("above")]
    text = "lambda_1 minus SAM's, paired over seeds (mean over ||mu||): " + "; ".join(parts) + ". "
    if side and len(sharper) == len(side):
        return text + "Every multi-step rule ends sharper than SAM here."
    if sharper:
        return text + (f"Only {', '.join(sharper)} ends sharper than SAM: a more exact ascent does not reliably "
                       "find a sharper (or flatter) solution here.")
    return text + "No multi-step rule ends sharper than SAM here."


def write_report(df: pd.DataFrame, d: int, seeds: int, out: Path) -> None:
    """``out``/sam_family_sharpness.md and .png from ``measure``'s table (the text printed)."""
    order = list(RULES)
    means = df.groupby("rule")[["test_error", "train_loss", "lambda_1", "trace"]].mean().reindex(order)
    cors = {rule: {k: correlation(g[k].to_numpy(), g.test_error.to_numpy(), g.seed.to_numpy(), rank=True)
                   for k in ("lambda_1", "trace")} for rule, g in df.groupby("rule")}
    runs = df.rename(columns={"rule": "label"})
    diffs = paired_on(runs, "lambda_1", ("sam",), ["mu_norm"])
    errs = paired_on(runs, "test_error", ("sam",), ["mu_norm"])
    lines = [f"# Sharpness of the SAM family's solutions (d={d}, ||mu|| in {[float(m) for m in MUS]}, {seeds} seeds, "
             f"each rule for 200 steps then SGD)", "",
             "**Claims:** none of theory_sim.claims (docs/science.md §5.6) covers the sharpness of a solution; this "
             "study is exploratory.", "", EXPLORATORY, "",
             "Means over seeds and ||mu||; Spearman correlations over a rule's runs with their jackknife-t interval "
             "over seeds:", "",
             "| rule | test error | train loss | lambda_1 | Tr(H) | Spearman(lambda_1, err) [95% CI] | "
             "Spearman(Tr, err) [95% CI] | test error minus SAM's [95% CI] |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rule in order:
        m, c = means.loc[rule], cors[rule]
        vs = "(reference)" if rule == "sam" else effect(pooled(errs, rule, "sam"))
        lines.append(f"| {rule} | {m.test_error:.3f} | {m.train_loss:.4f} | {m.lambda_1:.4g} | {m.trace:.4g} | "
                     + " | ".join(interval_text(c[k].estimate, c[k].low, c[k].high, digits=2)
                                  for k in ("lambda_1", "trace")) + f" | {vs} |")
    lines += ["", f"- {sharpness_sentence(diffs)}",
              f"- Rand-SAM: test error minus SAM's {effect(pooled(errs, 'randsam', 'sam'))}, minus SGD's "
              f"{effect(pooled(paired_on(runs, 'test_error', ('sgd',), ['mu_norm']), 'randsam', 'sgd'))}; lambda_1 "
              f"{means.loc['randsam', 'lambda_1']:.3g}.",
              "- Final-point sharpness is measured after the SGD phase that follows every rule: it reflects where "
              "each rule left the weights, not the rule's own perturbation."]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "sam_family_sharpness.md", text.encode())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, rule in enumerate(order):
        g = df[df.rule == rule]
        for ax, col in zip(axes, ("lambda_1", "trace")):
            ax.scatter(g[col], g.test_error, s=14, color=f"C{k}", label=rule)
    for ax, name in zip(axes, (r"$\lambda_1(H)$", r"Tr$(H)$")):
        ax.set_xscale("log")
        ax.set_xlabel(name + " of the training loss at the end")
        ax.set_ylabel("test error")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"SAM family on the two-layer CNN, d={d}: sharpness of the solution vs test error", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / "sam_family_sharpness.png")
    print(text)

