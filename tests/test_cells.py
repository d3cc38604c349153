"""theory_sim.sweeps.cells: the seed bootstrap draws reproduce the row-by-row calls of one generator, the
diverged-run score and the thresholds."""
import numpy as np
import pandas as pd

from theory_sim.sweeps.cells import (
    CELL,
    RUN_KEY,
    benign_threshold,
    cell_columns,
    cell_dims,
    cell_key,
    harmful_threshold,
    run_key,
    scored_error,
)


def test_scored_error_and_thresholds():
    df = pd.DataFrame({"test_error": [0.1, 0.2, np.nan, 0.3], "diverged": [False, True, False, 0]})
    assert scored_error(df).tolist() == [0.1, 0.5, 0.5, 0.3]
    assert benign_threshold(0.1, 0.1) == 0.1 + 0.1 * 0.4 and benign_threshold(0.2, 0.5) == 0.35
    assert harmful_threshold(0.1) == 0.1 + 0.1 and harmful_threshold(0.25) == 0.25 + 0.1


def test_cell_dimensions_in_one_place():
    assert RUN_KEY == ("label", "d", "mu_norm", "n", "P", "sigma_p", "seed") and CELL == cell_key()
    assert run_key(("c_tau",)) == ("label", "d", "mu_norm", "n", "P", "sigma_p", "c_tau", "seed")
    assert cell_dims(("c_tau",)) == ("d", "n", "P", "sigma_p", "c_tau")
    assert cell_key(("c_tau",)) == ("d", "n", "P", "sigma_p", "c_tau", "mu_norm")
    results = pd.DataFrame({"label": ["a", "a", "b", "b"], "d": [10, 20, 10, 20], "n": 5, "P": 2, "sigma_p": 1.0,
                            "mu_norm": 1.0, "c_tau": [1.0, 2.0, 1.0, 1.0], "seed": 0})
    assert cell_columns(results) == ["d", "n", "P", "sigma_p", "c_tau", "mu_norm"]   # c_tau varies inside a
    assert cell_columns(results.assign(c_tau=1.0)) == ["d", "n", "P", "sigma_p", "mu_norm"]
