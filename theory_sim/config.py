"""Frozen, validated configuration dataclasses.

Every config validates itself in ``__post_init__`` and raises ``ConfigError`` (a ``ValueError``) whose message names
the parameter and its allowed range, so bad input is rejected before any work starts. The CLI prints that message
as one line and exits with status 2.
"""
from __future__ import annotations

import math
from typing import Any, Iterable


class ConfigError(ValueError):
    """Invalid parameter: the message names the parameter and the allowed range."""


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be in [{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}], got {value}")


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ConfigError(f"{name} must be in {left}{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}{right}, got {value}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
