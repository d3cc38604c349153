"""What a run needs before it starts, whatever the model: the memory the machine has, the bounds on steps, seeds
and runs, and the checks that refuse (one ``ConfigError`` line naming the parameters) what exceeds them.

Each memory model lives beside the code it models and returns a ``MemoryEstimate``: the CNN ensemble's in
``theory_sim.cnn.memory`` (``estimate_memory_bytes``, ``check_resources``), a CIFAR run's in
``theory_sim.cifar.memory``. ``check_memory`` refuses an estimate beyond the memory available (MemAvailable of
/proc/meminfo, or the cgroup's limit minus its usage if smaller) unless forced, and ``check_steps`` a run of more
than ``MAX_TOTAL_STEPS`` steps (epochs x n / batch_size) unless forced.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from theory_sim.config import ConfigError

MAX_TOTAL_STEPS = 10**7      # epochs x n / B beyond this is refused unless forced (hours at the fastest step)
MAX_SEEDS = 10**5            # seeds of one simulate command or sweep (each is a run of one ensemble)
MAX_RUNS = 10**6             # runs of one sweep (cells x seeds x variants; the [K23] grid has 10^5): checked before
                             # its grid is expanded (a num = 10^9 axis alone would fill the memory)
ESTIMATE_FACTOR = 2.0        # the measured peak lies within [estimate / 2, estimate * 2] (tests/test_resources.py)


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict          # term -> bytes
    total: int           # persistent terms + the largest end-of-run phase

    @property
    def dominant(self) -> str:
        return max(self.parts, key=self.parts.get)


# --------------------------------------------------------------------------------------------------------------------
# What the machine has
# --------------------------------------------------------------------------------------------------------------------
def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory_bytes() -> tuple[int, str] | None:
    """(bytes a new allocation can get, where that number comes from), or None where it cannot be read (no
    /proc/meminfo: not Linux). The smaller of MemAvailable and the cgroup's limit minus its usage (v2
    memory.max / memory.current, or v1 memory.limit_in_bytes / memory.usage_in_bytes)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
                break
    except (OSError, ValueError, IndexError):
        pass
    root = Path("/sys/fs/cgroup")
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes",
                                                            "memory/memory.usage_in_bytes")):
        lim, use = _read_int(root / limit), _read_int(root / usage)
        if lim is not None and use is not None and lim < 2**60:   # v1 reports "no limit" as ~2^63
            found.append((max(lim - use, 0), f"the cgroup limit {root / limit} minus its usage"))
            break
    return min(found) if found else None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} ZiB"   # pragma: no cover


def check_steps(steps: int, formula: str, *, advice: str, force: bool, flag: str) -> None:
    """Refuse a run of more than ``MAX_TOTAL_STEPS`` steps unless ``force``: ``formula`` names how ``steps`` is
    counted (``what: epochs x n / batch_size = ...``), ``advice`` what to lower, ``flag`` the option that forces."""
    if steps > MAX_TOTAL_STEPS and not force:
        raise ConfigError(f"{formula} = {steps:.3g} steps, more than the bound {MAX_TOTAL_STEPS:.0e} (hours of "
                          f"training at the fastest step); {advice}, or pass {flag}")


def check_memory(estimate: MemoryEstimate, *, what: str, available: tuple[int, str] | None, force: bool, flag: str,
                 params: Callable[[str], str]) -> None:
    """Refuse ``estimate`` beyond ``available`` (default: ``available_memory_bytes()``) unless ``force``, naming its
    largest term and, through ``params(term)``, the parameters that term grows with (``d=5000 m=40``)."""
    available = available_memory_bytes() if available is None else available
    if available is not None and estimate.total > available[0] and not force:
        top = estimate.dominant
        raise ConfigError(
            f"{what} needs about {format_bytes(estimate.total)} of memory, more than the "
            f"{format_bytes(available[0])} available ({available[1]}); most of it is the {top} "
            f"({format_bytes(estimate.parts[top])}: {params(top)}); lower those, or pass {flag} to run anyway")


def add_force_arguments(p: argparse.ArgumentParser) -> None:
    """--force-memory and --force-steps (simulate, sweep)."""
    p.add_argument("--force-memory", action="store_true",
                   help="run even if the memory estimate (theory_sim.resources) exceeds the memory available")
    p.add_argument("--force-steps", action="store_true",
                   help=f"run even if epochs x n / batch_size exceeds {MAX_TOTAL_STEPS:.0e} steps")
