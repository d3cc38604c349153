"""What every study report shares (docs/science.md §5.6): its opening claim lines, effect sizes with intervals, the
per-run trajectory summaries the SAM-family reports pair over seeds, and the jackknife correlation.

A report opens with the claim lines of its sweep's verify.json (theory_sim.sweeps.verify_report.claim_table) and
their one-line summary; everything after them is exploratory: an effect size with its 95% interval over seeds
(theory_sim.intervals), and at most a description of where that interval lies (below 0, above 0, covers 0).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from theory_sim.intervals import Interval, jackknife
from theory_sim.io import atomic_write_bytes
from theory_sim.sweeps.paired import paired_differences
from theory_sim.sweeps.verify_report import claim_table, summary_sentence

EXPLORATORY = ("Everything below is exploratory: effect sizes with 95% t-intervals over seeds (theory_sim.intervals; "
               "seeds are the unit, a paired difference is the mean of per-seed differences), no prediction and no "
               "verdict.")


def fmt(x, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "n/a" if x is None or np.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}g}"


def load_claims(run: Path) -> dict | None:
    """The sweep's verify.json (None if verify has not run there)."""
    path = Path(run) / "verify.json"
    return json.loads(path.read_text()) if path.exists() else None


def claim_lines(run: Path) -> list[str]:
    """The opening of a study report: its sweep's claim verdicts in one line, then one line per claim."""
    report = load_claims(run)
    if report is None or "summary" not in report:
        return [f"**Claims:** not computed (run `python -m theory_sim verify {run}`).", ""]
    table = claim_table(report["claims"])
    lines = [f"**Claims** (from `verify`, docs/science.md §5.6): {summary_sentence(report['summary'])}", ""]
    if len(table) > 2:
        lines += table + [""]
    else:
        lines += ["No claim of theory_sim.claims has a cell in its domain here (the verify report lists the "
                  "exploratory fits).", ""]
    return lines


def where(lo: float, hi: float, below: str = "below 0", above: str = "above 0", covers: str = "covers 0") -> str:
    """Where an interval lies relative to 0 (a description, not a verdict)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval"
    return below if hi < 0 else (above if lo > 0 else covers)


def interval_text(est: float, lo: float, hi: float, signed: bool = True, digits: int = 3) -> str:
    f = (lambda x: f"{x:+.{digits}f}") if signed else (lambda x: fmt(x, digits))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{f(est) if np.isfinite(est) else 'n/a'} [n/a]"
    return f"{f(est)} [{f(lo)}, {f(hi)}]"


def effect(row: dict | None, digits: int = 3) -> str:
    """A paired difference (a row of theory_sim.sweeps.paired) as an effect size: '+0.058 [+0.031, +0.084] (4 seeds,
    24 pairs)'."""
    if row is None:
        return "n/a (no paired runs)"
    return (f"{interval_text(row['mean_diff'], row['ci_low'], row['ci_high'], digits=digits)} "
            f"({row['seeds']} seeds, {row['n_pairs']} pairs)")


def write(name: str, lines: list[str], gallery: Path) -> str:
    """``gallery``/name.md, atomically; the text is printed and returned."""
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(Path(gallery) / f"{name}.md", text.encode())
    print(text)
    return text


# per-run trajectory summaries, paired over seeds like the test error ------------------------------------------------
def paired_on(values: pd.DataFrame, column: str, baselines, cells) -> pd.DataFrame:
    """paired_differences of another per-run quantity than the test error (a trajectory summary): ``column`` in the
    place of test_error; runs where it is not finite are dropped first, so the chance scoring of a missing error
    never applies."""
    v = values[np.isfinite(values[column])]
    return paired_differences(v.assign(test_error=v[column], diverged=False), baselines=baselines,
                              cell_columns=cells)


def sam_phase(spec) -> int:
    """The SAM-family rules' sam_steps (one value for the study: its variants or its base set it)."""
    base = dict(spec.base).get("sam_steps")
    steps = {o.overrides.get("sam_steps", base) for o in spec.optimizers if o.optimizer != "sgd"}
    if len(steps) != 1 or None in steps:
        raise SystemExit(f"error: {spec.name}: the SAM-family variants need one finite sam_steps, got {steps}")
    return int(steps.pop())


def run_mean(traj: pd.DataFrame, key, column: str, lo: int, hi: float) -> pd.Series:
    """Per run: the mean of a trajectory column over its logged steps lo <= step <= hi."""
    t = traj[(traj.step >= lo) & (traj.step <= hi)]
    return t.groupby(list(key))[column].mean()


def run_last(traj: pd.DataFrame, key, column: str, hi: float) -> pd.Series:
    """Per run: a trajectory column at its last logged step <= hi (SGD runs are not logged at SAM's switch)."""
    t = traj[traj.step <= hi].sort_values("step")
    return t.groupby(list(key))[column].last()


def with_run_values(results: pd.DataFrame, key, **series) -> pd.DataFrame:
    """The results table with per-run series (indexed by the run key) as new columns."""
    out = results.set_index(list(key))
    for name, s in series.items():
        out[name] = s.reindex(out.index)
    return out.reset_index()


NO_TRAJECTORIES = ("not computed: the sweep directory has no trajectories.parquet (committed tables leave it out); "
                   "re-run the sweep (its command is in the study's .toml) and this report on it")


# correlation over seeds ---------------------------------------------------------------------------------------------
def correlation(x: np.ndarray, y: np.ndarray, seeds: np.ndarray, rank: bool = False) -> Interval:
    """Pearson correlation of x and y (with ``rank``: Spearman's, the ranks taken among the runs kept) with its
    jackknife-t interval over seeds (a seed's runs left out together: runs of one seed share its data draws)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, seeds = np.asarray(x, float)[ok], np.asarray(y, float)[ok], np.asarray(seeds)[ok]
    units = np.unique(seeds)
    unit_of = np.searchsorted(units, seeds)

    def stat(idx):
        keep = np.isin(unit_of, idx)
        a, b = (rankdata(x[keep]), rankdata(y[keep])) if rank else (x[keep], y[keep])
        return {"r": float(np.corrcoef(a, b)[0, 1])}

    return jackknife(stat, len(units))["r"]


def centred_correlation(values: pd.DataFrame, x: str, y: str, within: list[str]) -> Interval:
    """Correlation of x and y after removing each group's mean (``within``: a cell and seed, so the correlation is
    across rules on the same data and initialisation); jackknife over seeds."""
    v = values[np.isfinite(values[x]) & np.isfinite(values[y])]
    g = v.groupby(within)
    return correlation((v[x] - g[x].transform("mean")).to_numpy(), (v[y] - g[y].transform("mean")).to_numpy(),
                       v.seed.to_numpy())
