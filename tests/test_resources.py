"""theory_sim.cnn.memory and theory_sim.resources: the memory estimate against the memory real runs take, and the
refusals built on it.

The oracle is the operating system: the peak resident set (VmHWM, reset through /proc/self/clear_refs) a run adds
to its process, one subprocess for all cases. Each case is sized so that one term of the estimate dominates; the
estimate must be within ``ESTIMATE_FACTOR`` (2) of the measurement either way, and the estimate without its
dominant term must not be (so every term is tested by a case that fails without it).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from theory_sim.cnn.memory import check_resources, estimate_memory_bytes
from theory_sim.config import ConfigError, SimConfig
from theory_sim.resources import ESTIMATE_FACTOR, MAX_TOTAL_STEPS, available_memory_bytes

ROOT = Path(__file__).resolve().parent.parent
COMMON = dict(epochs=2, n_test=0, n_mc=200)
# case -> (SimConfig fields, seeds, the term that dominates)
CASES = {
    "coefficient-space weights": (dict(d=100_000, n=20, m=10, **COMMON), "weights"),
    "weight-space weights (asam)": (dict(d=50_000, n=20, m=10, optimizer="asam", **COMMON), "weights"),
    "Monte-Carlo draws": (dict(d=50, n=8, batch_size=4, epochs=2, n_test=0, n_mc=250_000), "Monte-Carlo draws"),
    "held-out test set": (dict(d=2000, n=20, epochs=2, n_test=3000, n_mc=200), "held-out test set"),
    "trajectory log": (dict(d=50, n=100, batch_size=100, epochs=300, m=60, n_test=0, n_mc=200), "trajectory log"),
}
SEEDS = 4

MEASURE = textwrap.dedent("""
    import ctypes, gc, json, sys
    # every allocation above 128 kB mapped on its own and unmapped when freed: glibc's default threshold rises as
    # large blocks are freed, after which a case re-used the heap an earlier case left resident, and its measured
    # peak came out at half its size in some runs (the estimate then looked 2x too large)
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)   # M_MMAP_THRESHOLD, fixed
    from theory_sim.cnn.train import train_ensemble
    from theory_sim.config import SimConfig

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    for optimizer in ("sgd", "asam"):   # warm-up of both representations: lazy imports, first allocations
        train_ensemble([SimConfig(d=20, n=4, batch_size=2, epochs=1, n_mc=100, n_test=4, optimizer=optimizer)])
    out = {}
    for name, (fields, seeds) in json.loads(sys.argv[1]).items():
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")          # reset the peak resident set to the current one
        base = status("VmRSS")
        train_ensemble([SimConfig(**fields, seed=s) for s in range(seeds)])
        out[name] = status("VmHWM") - base
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def measured() -> dict[str, int]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure the peak resident set")
    cases = {name: (fields, SEEDS) for name, (fields, _) in CASES.items()}
    proc = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_estimate_is_within_a_factor_of_the_measured_peak(case, measured):
    fields, dominant = CASES[case]
    est = estimate_memory_bytes([SimConfig(**fields, seed=s) for s in range(SEEDS)])
    peak = measured[case]
    assert est.dominant == dominant, est.parts
    assert peak > 100e6, peak   # large enough to stand out of the allocator's noise
    print(f"{case}: estimate / measured = {est.total / peak:.2f} ({est.total / 1e6:.0f} / {peak / 1e6:.0f} MB)")
    assert peak / ESTIMATE_FACTOR <= est.total <= peak * ESTIMATE_FACTOR, (est.total / peak, est.parts)
    # the same estimate without its dominant term misses: the term is what the case tests
    assert est.total - est.parts[dominant] < peak / ESTIMATE_FACTOR, (est.parts, peak)


def test_estimate_follows_the_representation_and_the_options():
    cfgs = [SimConfig(d=5000, n=20, seed=s) for s in range(4)]
    coef, weights = estimate_memory_bytes(cfgs, "coefficients"), estimate_memory_bytes(cfgs, "weights")
    assert weights.parts["weights"] > coef.parts["weights"] and weights.parts["data basis"] < \
        coef.parts["data basis"]   # no Gram matrix in weight space
    assert estimate_memory_bytes(cfgs, log=False).parts["trajectory log"] == 0
    assert estimate_memory_bytes(cfgs, heldout=False).parts["held-out test set"] == 0
    f32, f64 = estimate_memory_bytes([c.replace(dtype="float32") for c in cfgs]), estimate_memory_bytes(cfgs)
    assert 2 * f32.parts["Monte-Carlo draws"] == f64.parts["Monte-Carlo draws"]
    assert f32.parts["held-out test set"] > f64.parts["held-out test set"]   # drawn in float64, then cast
    shared = estimate_memory_bytes([SimConfig(d=5000, n=20, mu_norm=mu) for mu in (1.0, 2.0, 3.0, 4.0)])
    assert shared.parts["data basis"] * 3 < coef.parts["data basis"]   # one data set for the 4 runs, not 4


def test_available_memory_is_read():
    found = available_memory_bytes()
    if not Path("/proc/meminfo").exists():
        assert found is None
        return
    assert found is not None and found[0] > 0 and isinstance(found[1], str)


def test_check_resources_refuses_or_forces():
    cfgs = [SimConfig(d=50_000, n=20, n_test=0, seed=s) for s in range(4)]
    need = estimate_memory_bytes(cfgs).total
    assert check_resources(cfgs, what="x", available=(need + 1, "test")).total == need
    with pytest.raises(ConfigError, match=r"^x needs about .* more than the .* available \(test\); most of it is "
                                          r"the weights .*d=50000 m=10 runs=4.*--force-memory"):
        check_resources(cfgs, what="x", available=(need - 1, "test"))
    check_resources(cfgs, what="x", available=(need - 1, "test"), force_memory=True)
    long = [SimConfig(d=20, n=20, batch_size=1, epochs=MAX_TOTAL_STEPS // 20 + 1)]
    with pytest.raises(ConfigError, match="steps, more than the bound .*--force-steps"):
        check_resources(long, what="x", available=(2**62, "test"))
    check_resources([long[0].replace(epochs=MAX_TOTAL_STEPS // 20)], what="x", available=(2**62, "test"))
