"""Verdicts of the issue-15 SAM-family studies, computed from their sweep tables (every number printed comes from
the table, every comparison is a paired difference over seeds with its bootstrap interval,
``theory_sim.sweeps.paired``):

- ``msam_step_size`` (studies/msam_step_size.toml): is "K = 5 is worse than SAM" a step-size statement? K = 5 with
  ascent steps of tau and of tau / 5 against SAM, at the cells where step tau loses.
- ``lr_schedules`` (studies/lr_schedules.toml): do SGD's and SAM -> SGD's phase boundaries, Gamma/Rho or SAM's
  amplification change under cosine / step / warm-up + cosine schedules at fixed total steps ([C23] open question 3)?
- ``msam_ascent`` (studies/msam_ascent.toml): [T24] next check 2, is "a more exact maximiser generalises worse" true
  here? Test error vs K and the step length, and its correlation with the perturbed loss each rule reaches.
- ``randsam_radius`` (studies/randsam_radius.toml): does any Rand-SAM radius help, and why not (noise-active fraction
  at the update point, the loss increase of eps)?

    python studies/sam_questions_report.py STUDY runs/STUDY      # writes figures/STUDY.md (and STUDY_*.png)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from theory_sim.io import atomic_write_bytes, save_figure  # noqa: E402
from theory_sim.sweeps.paired import describe, paired_differences, pooled, scored_error  # noqa: E402
from theory_sim.sweeps.store import load_spec, read_results, read_trajectories  # noqa: E402

N_BOOT = 2000


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def counts(table: pd.DataFrame, label: str, baseline: str) -> str:
    """How the per-cell verdicts of one comparison split: 'better in 7, worse in 0, indistinguishable in 3 of 10'."""
    c = table[(table.scope == "cell") & (table.label == label) & (table.baseline == baseline)].verdict
    return (f"better in {int((c == 'better').sum())}, worse in {int((c == 'worse').sum())}, indistinguishable in "
            f"{int((c == 'indistinguishable').sum())} of {len(c)} cells")


def verdict_line(table: pd.DataFrame, label: str, baseline: str) -> str:
    row = pooled(table, label, baseline)
    return f"{label} vs {baseline}: {describe(row)}; per cell {counts(table, label, baseline)}"


def bootstrap_corr(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int = N_BOOT, seed: int = 0):
    """Pearson correlation of x and y with a cluster-bootstrap 95% interval over ``groups`` (seeds)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, groups = x[ok], y[ok], groups[ok]
    r = float(np.corrcoef(x, y)[0, 1])
    uniq = np.unique(groups)
    idx = {g: np.flatnonzero(groups == g) for g in uniq}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        take = np.concatenate([idx[g] for g in rng.choice(uniq, len(uniq))])
        boot.append(np.corrcoef(x[take], y[take])[0, 1])
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return r, float(lo), float(hi), int(ok.sum())


def interval_word(lo: float, hi: float, positive: str, negative: str, none: str) -> str:
    return positive if lo > 0 else (negative if hi < 0 else none)


def write(name: str, lines: list[str], gallery: Path) -> None:
    path = gallery / f"{name}.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    print(path.read_text())


# --------------------------------------------------------------------------------------------------------------------
def msam_step_size(run: Path, gallery: Path) -> None:
    spec, r = load_spec(run), read_results(run)
    table = paired_differences(r, baselines=("sam",), spec=spec, n_boot=N_BOOT)
    r = r.assign(err=scored_error(r))
    means = r.pivot_table(index=["d", "mu_norm"], columns="label", values="err", aggfunc="mean")
    cells = table[table.scope == "cell"].set_index(["label", "d", "mu_norm"])
    lines = [f"# Multi-step SAM's step length ({spec.name}, {r.seed.nunique()} seeds per cell)", "",
             "K = 5 ascent steps after SAM's first one of length tau, each of length ascent_step * tau, against "
             "SAM, every rule for 200 steps then SGD (settings of sam_family_phase). Paired differences of test "
             "error over seeds (negative: errs less than SAM), 95% cluster-bootstrap intervals "
             "(theory_sim.sweeps.paired).", "",
             "| d | mu | SAM | K=5, step tau | K=5, step tau/5 | step tau - SAM [95% CI] | step tau/5 - SAM [95% CI] |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (d, mu), row in means.iterrows():
        a, b = cells.loc[("msam5", d, mu)], cells.loc[("msam5_step_tau5", d, mu)]
        lines.append(f"| {d:g} | {mu:.3g} | {row['sam']:.3f} | {row['msam5']:.3f} | {row['msam5_step_tau5']:.3f} | "
                     f"{a.mean_diff:+.3f} [{a.ci_low:+.3f}, {a.ci_high:+.3f}] | "
                     f"{b.mean_diff:+.3f} [{b.ci_low:+.3f}, {b.ci_high:+.3f}] |")
    big, small = pooled(table, "msam5", "sam"), pooled(table, "msam5_step_tau5", "sam")
    claim = ("holds" if small["verdict"] == "better" and big["verdict"] == "worse" else "does not hold")
    lines += ["", f"- With step tau (as in sam_family_phase): {verdict_line(table, 'msam5', 'sam')}.",
              f"- With step tau/5: {verdict_line(table, 'msam5_step_tau5', 'sam')}.",
              f"- \"K = 5 is worse than SAM\" is a step-size statement: the claim that step tau/5 makes K = 5 beat SAM "
              f"where step tau loses {claim} on the pooled paired interval.", "",
              f"From `{run}/results.parquet` by `python studies/sam_questions_report.py msam_step_size {run}`."]
    write("msam_step_size", lines, gallery)


STUDIES = {"msam_step_size": msam_step_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=tuple(STUDIES))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--gallery", type=Path, default=Path("figures"))
    args = ap.parse_args()
    STUDIES[args.study](args.dir, args.gallery)


if __name__ == "__main__":
    main()
