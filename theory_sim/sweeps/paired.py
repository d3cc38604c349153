"""Paired rule-vs-rule test-error differences on the same seeds ([T24]'s check: is rule A better than rule B?).

Every run of a sweep cell shares its data and initialisation with the runs of the other optimizer variants of that
cell and seed (cell seeding shared or independent: the seed, not the optimizer, picks the data). So the difference
of two rules is measured seed by seed, and the seed-to-seed noise both rules share cancels; an unpaired comparison
of two means would carry it twice.

For every variant label against every baseline label, per cell and pooled over cells:

- mean_diff: the mean over the pairs (cell, seed) of test_error(variant) - test_error(baseline); negative means
  the variant errs less;
- ci_low, ci_high: the 95% Student-t interval over seeds (theory_sim.intervals.mean_interval, coverage measured in
  tests/test_intervals.py). Pooled rows take each seed's mean difference over the cells as one unit (seed s draws
  the same data in every cell under shared cell seeding, so the cells of one seed are not independent);
- seeds: the seeds the interval rests on;
- n_pairs: the (cell, seed) pairs where both rules have a run;
- verdict: where the interval lies, an exploratory description with no prediction behind it: "better" (below 0),
  "worse" (above 0) or "indistinguishable" (it contains 0).

Diverged runs follow the sweeps' rule (theory_sim.sweeps.cells.scored_error): a diverged run, or one without a test
error, scores chance error 0.5; a pair is never dropped for diverging.

Baselines: each entry of ``baselines`` names a label if a variant has that label, otherwise an optimizer: every
label whose ``optimizer`` column equals it is then a baseline (so ("sgd", "sam") picks the variants labelled sgd
and sam, or, without such labels, every plain-SGD and every SAM variant). A label is never compared with itself.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from theory_sim.config import ConfigError
from theory_sim.intervals import mean_interval
from theory_sim.sweeps.cells import cell_columns, scored_error

VERDICTS = ("better", "worse", "indistinguishable")


default_cell_columns = cell_columns   # the cell of a run (theory_sim.sweeps.cells.cell_columns)


def baseline_labels(results: pd.DataFrame, baselines) -> list[str]:
    """The baseline labels (see the module docstring: a label, else every label of that optimizer)."""
    labels = list(pd.unique(results.label))
    optimizer_of = results.groupby("label").optimizer.first().to_dict() if "optimizer" in results.columns else {}
    out = []
    for b in baselines:
        picked = [b] if b in labels else [lab for lab in labels if optimizer_of.get(lab) == b]
        out += [lab for lab in picked if lab not in out]
    return out


def _verdict(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "indistinguishable"
    return "better" if hi < 0 else ("worse" if lo > 0 else "indistinguishable")


def _summary(per_seed: np.ndarray, n_pairs: int) -> dict:
    """The t-interval of a mean over seeds (theory_sim.intervals.mean_interval) as a row's columns."""
    iv = mean_interval(per_seed)
    return dict(mean_diff=iv.estimate, ci_low=iv.low, ci_high=iv.high, seeds=iv.units, n_pairs=n_pairs,
                verdict=_verdict(iv.low, iv.high))


def paired_differences(results: pd.DataFrame, baselines=("sgd", "sam"), cell_columns=None,
                       spec=None) -> pd.DataFrame:
    """Paired differences of every variant against every baseline (module docstring), one row per (label,
    baseline, cell) with scope "cell" and one per (label, baseline) with scope "pooled" (NaN cell columns).
    Columns: label, baseline, <cell columns>, scope, mean_diff, ci_low, ci_high, n_pairs, verdict."""
    if isinstance(baselines, str):
        baselines = (baselines,)
    cells = list(default_cell_columns(results, spec) if cell_columns is None else cell_columns)
    missing = [c for c in ("label", "seed", "test_error", "diverged", *cells) if c not in results.columns]
    if missing:
        raise ConfigError(f"results lack the columns {missing} that paired differences need")
    columns = ["label", "baseline", *cells, "scope", "mean_diff", "ci_low", "ci_high", "seeds", "n_pairs", "verdict"]
    df = results.assign(_err=scored_error(results))
    # (cell x seed) table per label; one run per (label, cell, seed) is the run key's promise
    if df.duplicated([*cells, "label", "seed"]).any():
        raise ConfigError(f"results hold several runs of one (label, {', '.join(cells)}, seed): pass cell_columns "
                          f"that identify a cell")
    wide = (df.set_index([*cells, "label", "seed"])._err.unstack(["label", "seed"]) if cells else
            df.set_index(["label", "seed"])._err.to_frame().T)
    seeds = np.sort(df.seed.unique())
    rows = []
    labels = list(pd.unique(df.label))
    index = wide.index.to_frame(index=False) if cells else pd.DataFrame(index=[0])
    for base in baseline_labels(df, baselines):
        for lab in labels:
            if lab == base:
                continue
            diff = np.full((len(wide), len(seeds)), np.nan)
            for j, s in enumerate(seeds):
                if (lab, s) in wide.columns and (base, s) in wide.columns:
                    diff[:, j] = wide[(lab, s)].to_numpy(float) - wide[(base, s)].to_numpy(float)
            have = np.isfinite(diff)
            if not have.any():
                continue
            for c in range(len(wide)):
                if have[c].any():
                    rows.append(dict(label=lab, baseline=base, **index.iloc[c].to_dict(), scope="cell",
                                     **_summary(diff[c], int(have[c].sum()))))
            # pooled: each seed's mean difference over its cells is one unit (the cells of a seed share its draws)
            with np.errstate(invalid="ignore"):
                per_seed = np.where(have, diff, 0.0).sum(0) / have.sum(0)
            rows.append(dict(label=lab, baseline=base, **{k: np.nan for k in cells}, scope="pooled",
                             **_summary(per_seed, int(have.sum()))))
    return pd.DataFrame(rows, columns=columns)


def pooled(table: pd.DataFrame, label: str, baseline: str) -> dict | None:
    """The pooled row of one comparison as a dict (None if the table has none)."""
    row = table[(table.scope == "pooled") & (table.label == label) & (table.baseline == baseline)]
    return None if row.empty else row.iloc[0].to_dict()


def describe(row: dict | None, digits: int = 2) -> str:
    """One comparison as text: '+0.080 [0.060, 0.100] test error (worse, 96 pairs)'."""
    if row is None:
        return "n/a (no paired runs)"
    f = f"{{:+.{digits + 1}f}}"
    return (f"{f.format(row['mean_diff'])} [{f.format(row['ci_low'])}, {f.format(row['ci_high'])}] test error "
            f"({row['verdict']}, {row['n_pairs']} pairs)")
