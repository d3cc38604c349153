"""The study reports' verdicts are computed from their tables: censored cells, sentences that follow the data."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tau_table(edge_cell=True, seeds=4) -> pd.DataFrame:
    """Best c_tau = 1 in every cell (tau* ~ d^-1/2 exactly); with ``edge_cell`` one cell is flat up to the grid's
    largest c_tau (its best range reaches the edge: censored)."""
    rows = []
    for d in (200, 800, 3200):
        for mu in (1.0, 2.0):
            for c in np.geomspace(0.01, 100, 9):
                if edge_cell and d == 3200 and mu == 2.0:
                    err = max(0.1, 0.3 - 0.1 * np.log10(c / 0.01))
                else:
                    err = 0.1 + 0.1 * abs(np.log10(c))
                for s in range(seeds):
                    rows.append(dict(d=d, mu_norm=mu, c_tau=c, seed=s, err=err, tau_effective=c / np.sqrt(d)))
    return pd.DataFrame(rows)


def test_tau_report_censors_cells_at_the_grid_edge():
    report = load("tau_sensitivity_report")
    r = tau_table()
    slope, used, censored = report.best_tau_slope(r, range(4))
    assert censored == [(3200, 2.0)] and used == 5 and abs(slope + 0.5) < 1e-9
    biased, used_all, _ = report.best_tau_slope(r, range(4), censor=False)
    assert used_all == 6 and biased > -0.4           # the edge cell pulls the fit: what defect 3 was
    clean = report.best_tau_slope(tau_table(edge_cell=False), range(4))
    assert clean[2] == [] and abs(clean[0] + 0.5) < 1e-9
