"""How an ensemble's runs are laid out, decided from their configs alone (no torch): which consecutive runs share
one data draw, and which representation of the state trains them (theory_sim.cnn.ensemble). theory_sim.cnn.memory
reads both to estimate a chunk's memory in a sweep's parent process, which never runs torch itself."""
from __future__ import annotations

from theory_sim.config import SimConfig, check_choice
from theory_sim.sam import registry

STATES = ("auto", "coefficients", "weights")


def group_size(keys: list) -> int:
    """G such that the runs form consecutive blocks of G identical data keys (1: no sharing)."""
    R = len(keys)
    G = 1
    while G < R and keys[G] == keys[0]:
        G += 1
    if R % G or any(keys[b + i] != keys[b] for b in range(0, R, G) for i in range(G)):
        return 1
    return G


def choose_state(configs: list[SimConfig], state: str = "auto") -> str:
    """The representation ``make_ensemble`` uses: ``state`` itself, or for "auto" weight space if some run's rule
    leaves the span of the data basis (asam, sam with norm="inf") or 1 + n K > d (coefficient space is then not
    cheaper), else coefficient space (also what ``theory_sim.cnn.memory`` estimates the memory of)."""
    check_choice("state", state, STATES)
    if state != "auto":
        return state
    c0 = configs[0]
    columns = 1 + c0.n * (1 if c0.noise_patches == "shared" else c0.P - 1)
    leaves = any(c.rule is not None and not registry.RULES[c.rule].in_span for c in configs)
    return "weights" if leaves or columns > c0.d else "coefficients"
