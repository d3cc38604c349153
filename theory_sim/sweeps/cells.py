"""What a sweep cell is and how its runs are scored (intervals over seeds: theory_sim.intervals).

- A run is identified by its run key: label, d, ||mu||, n, P, sigma_p, any extra swept axis, seed. A cell is the
  run key without label and seed: ``cell_dims`` (d, n, P, sigma_p, the extra axes) plus ||mu||. verify, the
  trajectory claims, the paired differences, the figures and the store all read these from here.
- Scoring: a diverged run (or one without a test error) scores chance error, 0.5, and is never dropped.
- Thresholds (docs/science.md §5): a cell is benign when its seed-mean test error is <= p + margin * (0.5 - p)
  (margin: the spec's ``benign_margin``), harmful when it is >= p + 0.1.

"""
from __future__ import annotations


import numpy as np
import pandas as pd

from theory_sim.config import FIELD_KINDS

# the axes every sweep's tables carry (a run's key always has them, swept or not); any other numeric run parameter
# may be swept too (an "extra" axis: c_tau, tau, eta, batch_size, sam_steps, flip_p, sigma_0, m, epochs, ...)
CORE_AXES = ("d", "n", "P", "sigma_p", "mu_norm")
RUN_KEY = ("label", "d", "mu_norm", "n", "P", "sigma_p", "seed")
# numeric SimConfig fields that are not run parameters a grid may sweep (seeds come from `seeds`; the rest only
# set how a run is logged or evaluated)
NOT_AXES = ("seed", "data_seed", "n_test", "n_mc", "log_every", "log_points", "trajectory_mc")

DIVERGED_ERROR = 0.5   # what a diverged run (or a missing test error) scores: chance
HARMFUL_MARGIN = 0.1   # harmful: seed-mean test error >= p + HARMFUL_MARGIN


AXES = tuple(k for k, kind in FIELD_KINDS.items() if kind in ("int", "float") and k not in NOT_AXES)
INTEGER_AXES = tuple(k for k in AXES if FIELD_KINDS[k] == "int")


def extra_axes(names) -> tuple[str, ...]:
    """The swept axes among ``names`` beyond d, n, P, sigma_p and ||mu|| (in AXES order)."""
    names = set(names)
    return tuple(a for a in AXES if a in names and a not in CORE_AXES)


def run_key(extra: tuple = ()) -> tuple[str, ...]:
    """The columns that identify a run: RUN_KEY with the extra axes before the seed."""
    return (*RUN_KEY[:-1], *extra, "seed")


def cell_dims(extra: tuple = ()) -> tuple[str, ...]:
    """The dimensions of a cell besides ||mu||: d, n, P, sigma_p and the extra axes."""
    return (*CORE_AXES[:-1], *extra)


def cell_key(extra: tuple = ()) -> tuple[str, ...]:
    """Every dimension of a cell: ``cell_dims`` and ||mu||."""
    return (*cell_dims(extra), "mu_norm")


DIMS = cell_dims()   # a cell's dimensions besides ||mu|| in a sweep without extra axes
CELL = cell_key()    # and with ||mu||


def cell_columns(results: pd.DataFrame, spec=None) -> list[str]:
    """The cell of a run as table columns: its run key without label and seed. From the spec when given; else the
    core axes present plus any other sweepable run parameter that varies inside a label (a swept extra axis)."""
    if spec is not None:
        return [k for k in spec.run_key if k not in ("label", "seed")]
    core = [k for k in CORE_AXES if k in results.columns]
    by_label = results.groupby("label")
    extra = [k for k in AXES if k in results.columns and k not in CORE_AXES and (by_label[k].nunique() > 1).any()]
    return [*core[:-1], *extra, *core[-1:]]


def scored_error(df: pd.DataFrame) -> pd.Series:
    """Test error with a diverged run (or a missing error) scored as chance, DIVERGED_ERROR = 0.5."""
    return df.test_error.where(~df.diverged.astype(bool), DIVERGED_ERROR).fillna(DIVERGED_ERROR)


def benign_threshold(p: float, margin: float) -> float:
    """Benign: seed-mean test error <= p + margin * (0.5 - p) (label-flip probability p)."""
    return p + margin * (0.5 - p)


def harmful_threshold(p: float) -> float:
    """Harmful: seed-mean test error >= p + HARMFUL_MARGIN."""
    return p + HARMFUL_MARGIN


