import copy
import json

import pytest
import torch

torch.set_num_threads(1)  # small tensors: one thread is fastest here (see theory_sim.cli)

# The small sweep that the sweep, CLI, fault, README and trajectory tests run (2 d x 3 ||mu|| x SGD and SAM x 2 seeds:
# about a second): one spec, each test changing only what it needs through the ``tiny_sweep`` fixture
TINY_SWEEP = {
    "name": "tiny", "seeds": 2, "chunk_runs": 4,
    "base": {"n": 8, "batch_size": 4, "epochs": 3, "n_test": 0, "n_mc": 200},
    "grid": {"d": {"values": [20, 40]}, "mu_norm": {"start": 0.5, "stop": 2.0, "num": 3, "spacing": "log"}},
    "optimizers": [{"label": "sgd", "optimizer": "sgd"}, {"label": "sam", "optimizer": "sam", "sam_steps": 4}],
}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    return repr(value)  # 2 and 2.0 as written


def sweep_toml(spec: dict) -> str:
    """A spec dict as TOML text, one `key = value` a line: top-level keys, [base], [grid.AXIS], [[optimizers]] (the
    tests edit the text with str.replace, so the layout is fixed)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in spec.items() if k not in ("base", "grid", "optimizers")]
    tables = [("[base]", spec["base"]), *((f"[grid.{axis}]", v) for axis, v in spec["grid"].items()),
              *(("[[optimizers]]", o) for o in spec["optimizers"])]
    for header, table in tables:
        lines += [header, *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_sweep():
    """TINY_SWEEP as TOML text: ``tiny_sweep()``; ``tiny_sweep(seeds=1, grid={...}, optimizers=[...])`` replaces
    top-level entries, ``base={...}`` updates [base] (new keys go last)."""
    def make(base: dict | None = None, **changes) -> str:
        spec = {**copy.deepcopy(TINY_SWEEP), **changes}
        spec["base"] = {**spec["base"], **(base or {})}
        return sweep_toml(spec)
    return make


@pytest.fixture(scope="session")
def faults_sweep(tiny_sweep):
    """The tiny sweep, SGD only, one seed, 2 epochs, on d = 20, 40 and two ||mu||."""
    return tiny_sweep(name="faults", seeds=1, chunk_runs=8, base={"epochs": 2},
                      grid={"d": {"values": [20, 40]},
                            "mu_norm": {"start": 0.5, "stop": 2.0, "num": 2, "spacing": "log"}},
                      optimizers=[{"label": "sgd", "optimizer": "sgd"}])


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
