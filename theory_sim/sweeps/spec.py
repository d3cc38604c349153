"""Sweep specifications: grids over ||mu|| and d (and optionally n, P, sigma_p), optimizer variants, seeds.

A spec is a frozen dataclass, loadable from TOML::

    name = "phase_diagram_quick"
    preset = "c23"               # defaults to start from (SimConfig.preset)
    seeds = 4                    # seeds 0..seeds-1 in every cell: the same data/init across cells and optimizers
    chunk_runs = 256             # runs per batched ensemble (one shard on disk)
    benign_margin = 0.1          # benign: mean test error <= p + benign_margin * (0.5 - p)
    [base]                       # any SimConfig field shared by every run
    epochs = 100
    batch_size = 5               # or "full": B = n in every cell (for grids over n)
    [grid.mu_norm]               # an axis: start/stop/num with spacing "log" or "linear", or explicit values
    start = 0.5
    stop = 8.0
    num = 9
    spacing = "log"
    [grid.d]
    values = [100, 400, 1600]
    [[optimizers]]               # one entry per optimizer variant: a label plus SimConfig overrides
    label = "sgd"
    optimizer = "sgd"
    [[optimizers]]
    label = "sam"
    optimizer = "sam"
    c_tau = 1.0
    sam_steps = 200

Expansion is deterministic: runs are grouped by the fields that must agree inside an ensemble, split into chunks of
at most ``chunk_runs``, and numbered — so a re-run of the same spec finds the same chunks on disk.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from theory_sim.config import (
    STRUCTURAL_FIELDS,
    ConfigError,
    SimConfig,
    check_choice,
    check_float,
    check_int,
)

AXES = ("mu_norm", "d", "n", "P", "sigma_p")
INTEGER_AXES = ("d", "n", "P")
RUN_KEY = ("label", "d", "mu_norm", "n", "P", "sigma_p", "seed")


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple
    spacing: str = "list"   # "log", "linear" or "list" (explicit values)

    def __post_init__(self) -> None:
        check_choice("grid axis", self.name, AXES)
        check_choice(f"grid.{self.name}.spacing", self.spacing, ("log", "linear", "list"))
        if not self.values:
            raise ConfigError(f"grid.{self.name} must hold at least one value")
        if len(set(self.values)) != len(self.values):
            raise ConfigError(f"grid.{self.name} values must be distinct, got {list(self.values)}")

    @classmethod
    def from_toml(cls, name: str, spec: Any) -> "Axis":
        if isinstance(spec, (list, tuple)):
            values, spacing = list(spec), "list"
        elif isinstance(spec, dict) and "values" in spec:
            values, spacing = list(spec["values"]), spec.get("spacing", "list")
        elif isinstance(spec, dict):
            unknown = set(spec) - {"start", "stop", "num", "spacing"}
            if unknown:
                raise ConfigError(f"grid.{name} has unknown keys {sorted(unknown)}; use start/stop/num/spacing "
                                  f"or values")
            try:
                start, stop, num = float(spec["start"]), float(spec["stop"]), int(spec["num"])
            except KeyError as exc:
                raise ConfigError(f"grid.{name} needs start, stop and num (or values)") from exc
            spacing = spec.get("spacing", "linear")
            check_choice(f"grid.{name}.spacing", spacing, ("log", "linear"))
            check_int(f"grid.{name}.num", num, 1)
            if spacing == "log":
                check_float(f"grid.{name}.start", start, 0.0, lo_open=True)
                check_float(f"grid.{name}.stop", stop, 0.0, lo_open=True)
                values = list(np.geomspace(start, stop, num))
            else:
                values = list(np.linspace(start, stop, num))
        else:
            raise ConfigError(f"grid.{name} must be a list of values or a table with start/stop/num")
        if name in INTEGER_AXES:
            rounded = [int(round(v)) for v in values]
            values = list(dict.fromkeys(rounded))  # log grids of integers may repeat after rounding
        else:
            values = [float(v) for v in values]
        return cls(name, tuple(values), spacing)

    def to_dict(self) -> dict:
        return {"values": list(self.values), "spacing": self.spacing}


@dataclass(frozen=True)
class OptimizerSpec:
    label: str
    settings: tuple = ()   # sorted (field, value) pairs of SimConfig overrides

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label or not self.label.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"optimizers.label must be a non-empty name of letters, digits, - and _, "
                              f"got {self.label!r}")

    @property
    def overrides(self) -> dict:
        return dict(self.settings)

    @property
    def optimizer(self) -> str:
        return self.overrides.get("optimizer", "sgd")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    axes: tuple                      # Axis, ...
    optimizers: tuple                # OptimizerSpec, ...
    seeds: int = 4
    base: tuple = ()                 # sorted (field, value) pairs
    preset: str = "c23"
    chunk_runs: int = 256
    benign_margin: float = 0.1
    seed_offset: int = 0
    _configs: list = field(default=None, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        check_int("seeds", self.seeds, 1)
        check_int("chunk_runs", self.chunk_runs, 1)
        check_int("seed_offset", self.seed_offset, 0)
        check_float("benign_margin", self.benign_margin, 0.0, 1.0, lo_open=True)
        check_choice("preset", self.preset, ("c23", "kou2023"))
        names = [a.name for a in self.axes]
        for required in ("mu_norm", "d"):
            if required not in names:
                raise ConfigError(f"grid must include the axis {required!r} (got {names})")
        if len(set(names)) != len(names):
            raise ConfigError(f"grid axes must be distinct, got {names}")
        if not self.optimizers:
            raise ConfigError("optimizers must list at least one optimizer variant")
        labels = [o.label for o in self.optimizers]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"optimizers labels must be distinct, got {labels}")
        fields_ = set(SimConfig.field_names())
        for key, _ in self.base:
            if key not in fields_ or key in names or key == "seed" or key == "optimizer":
                raise ConfigError(f"base.{key} is not a SimConfig field that a sweep may fix "
                                  f"(grid axes, seed and optimizer are set by grid, seeds and optimizers)")
        for o in self.optimizers:
            for key, _ in o.settings:
                if key not in fields_ or key in names or key == "seed":
                    raise ConfigError(f"optimizers[{o.label}].{key} is not a SimConfig field an optimizer "
                                      f"variant may set")
        # validate every run before any work: builds (and caches) the configs
        object.__setattr__(self, "_configs", self._expand())

    # ------------------------------------------------------------------------------------------------------------
    def axis(self, name: str) -> Axis | None:
        return next((a for a in self.axes if a.name == name), None)

    def _expand(self) -> list[tuple[tuple, SimConfig]]:
        base = dict(self.base)
        axes = {a.name: a.values for a in self.axes}
        order = [a for a in ("d", "n", "P", "sigma_p", "mu_norm") if a in axes]
        runs = []
        for o in self.optimizers:
            for combo in product(*(axes[a] for a in order)):
                cell = dict(zip(order, combo))
                settings = {**base, **o.overrides, **cell}
                if settings.get("batch_size") == "full":  # full batch at every n of the grid
                    settings["batch_size"] = settings.get("n", SimConfig.preset(self.preset).n)
                try:
                    proto = SimConfig.preset(self.preset, **settings)
                except ConfigError as exc:
                    raise ConfigError(f"optimizer {o.label!r} at {cell}: {exc}") from None
                for s in range(self.seeds):
                    cfg = proto.replace(seed=self.seed_offset + s)
                    key = (o.label, cfg.d, cfg.mu_norm, cfg.n, cfg.P, cfg.sigma_p, cfg.seed)
                    runs.append((key, cfg))
        return runs

    @property
    def runs(self) -> list[tuple[tuple, SimConfig]]:
        return self._configs

    def chunks(self) -> list[list[tuple[tuple, SimConfig]]]:
        """Deterministic chunks: runs grouped by the structural fields and, inside, ordered so that the runs sharing
        a data set (same seed, sigma_p, flip_p: every ||mu|| and optimizer of a seed) are consecutive — they then
        share one matmul (see theory_sim.cnn.data). Chunks hold at most chunk_runs runs, whole data-set groups where
        chunk_runs allows."""
        groups: dict[tuple, list] = {}
        for key, cfg in self.runs:
            groups.setdefault(tuple(getattr(cfg, f) for f in STRUCTURAL_FIELDS), []).append((key, cfg))
        out = []
        for runs in groups.values():
            runs = sorted(runs, key=lambda kc: (kc[1].seed, kc[1].sigma_p, kc[1].flip_p))  # stable: spec order kept
            sizes: dict[tuple, int] = {}
            for _, cfg in runs:
                k = (cfg.seed, cfg.sigma_p, cfg.flip_p)
                sizes[k] = sizes.get(k, 0) + 1
            g = next(iter(sizes.values())) if len(set(sizes.values())) == 1 else 1
            size = (self.chunk_runs // g) * g if self.chunk_runs >= g else self.chunk_runs
            for lo in range(0, len(runs), size):
                out.append(runs[lo:lo + size])
        return out

    @property
    def flip_p(self) -> float:
        ps = {cfg.flip_p for _, cfg in self.runs}
        return ps.pop() if len(ps) == 1 else float("nan")

    def benign_threshold(self, p: float) -> float:
        return p + self.benign_margin * (0.5 - p)

    # ------------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "preset": self.preset, "seeds": self.seeds, "seed_offset": self.seed_offset,
                "chunk_runs": self.chunk_runs, "benign_margin": self.benign_margin, "base": dict(self.base),
                "grid": {a.name: a.to_dict() for a in self.axes},
                "optimizers": [{"label": o.label, **o.overrides} for o in self.optimizers]}

    def digest(self) -> str:
        """Hash of everything that determines the results (chunking excluded: it only groups the work)."""
        d = self.to_dict()
        d.pop("chunk_runs")
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict, name: str | None = None) -> "SweepSpec":
        d = dict(d)
        unknown = set(d) - {"name", "preset", "seeds", "seed_offset", "chunk_runs", "benign_margin", "base", "grid",
                            "optimizers"}
        if unknown:
            raise ConfigError(f"unknown sweep spec keys {sorted(unknown)}")
        grid = d.get("grid") or {}
        if not isinstance(grid, dict):
            raise ConfigError("grid must be a table of axes")
        axes = tuple(Axis.from_toml(k, v) for k, v in grid.items())
        opts = []
        for o in d.get("optimizers") or []:
            o = dict(o)
            label = o.pop("label", o.get("optimizer", "sgd"))
            opts.append(OptimizerSpec(label, tuple(sorted(o.items()))))
        return cls(name=d.get("name", name or "sweep"), axes=axes, optimizers=tuple(opts),
                   seeds=d.get("seeds", 4), base=tuple(sorted((d.get("base") or {}).items())),
                   preset=d.get("preset", "c23"), chunk_runs=d.get("chunk_runs", 256),
                   benign_margin=d.get("benign_margin", 0.1), seed_offset=d.get("seed_offset", 0))

    @classmethod
    def from_toml(cls, path: str | Path) -> "SweepSpec":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"spec must be a TOML sweep file; {path} does not exist")
        try:
            d = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"spec {path} is not valid TOML: {exc}") from None
        return cls.from_dict(d, name=path.stem)


def log_spaced(axis: Axis | None) -> bool:
    """Whether figures should use a log axis: declared log spacing, or explicit positive values whose ratios are
    more nearly constant than their differences (e.g. 100, 200, 400, 800)."""
    if axis is None or axis.spacing != "list":
        return axis is not None and axis.spacing == "log"
    v = np.sort(np.asarray(axis.values, dtype=float))
    if len(v) < 3 or v[0] <= 0:
        return False
    cv = lambda x: float(np.std(x) / np.mean(x))  # noqa: E731
    return cv(v[1:] / v[:-1]) < cv(np.diff(v))
