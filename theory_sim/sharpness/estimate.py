"""Monte Carlo estimates with their standard error, and explicit seeding (same seed -> same numbers)."""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import torch

from theory_sim.config import ConfigError, check_float


class Estimate(NamedTuple):
    """A Monte Carlo mean ``value`` with standard error ``stderr = std(samples, ddof=1) / sqrt(n)``."""

    value: float
    stderr: float
    n: int

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Normal-approximation confidence interval value +- z_{(1+level)/2} stderr."""
        check_float("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
        z = NormalDist().inv_cdf(0.5 + level / 2)
        return self.value - z * self.stderr, self.value + z * self.stderr

    @staticmethod
    def from_samples(samples: torch.Tensor) -> "Estimate":
        s = samples.detach().to(torch.float64)
        n = s.numel()
        return Estimate(float(s.mean()), float(s.std(unbiased=True)) / math.sqrt(n), n)


def make_generator(seed: int | torch.Generator, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator from an int seed (a fresh generator, so the call is reproducible), or the one given."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer or a torch.Generator, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


def rademacher(shape, dtype: torch.dtype, device, generator: torch.Generator) -> torch.Tensor:
    """Entries +-1 with probability 1/2 each (E[v v^T] = I)."""
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype).mul_(2).sub_(1)
