"""Reading a sweep spec: the TOML file, its keys and the type of every value (theory_sim.sweeps.spec expands it).

``read_toml`` reads the file, ``parse_spec`` turns its dict into SweepSpec's fields (grid axes as ``Axis``, the
``[[optimizers]]`` entries as ``OptimizerSpec``) and ``check_settings`` checks every [base] and variant key: an
error is one ``ConfigError`` line naming its key path (e.g. ``grid.d.values[2]``, ``base.epochs``,
``optimizers[1].c_tau``) and what is allowed (see theory_sim.sweeps.spec for the file format).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from theory_sim.config import ConfigError, SimConfig, check_choice, check_float, check_int
from theory_sim.resources import MAX_RUNS
from theory_sim.sam import registry
from theory_sim.sweeps.cells import AXES, FIELD_KINDS, INTEGER_AXES

_KINDS = FIELD_KINDS
SPEC_KEYS = ("name", "preset", "seeds", "seed_offset", "chunk_runs", "benign_margin", "base", "grid", "trajectories",
             "cell_seeding", "optimizers")


def _check_number(path: str, value: Any) -> float:
    """A finite int or float (not a bool: TOML's true is not a number here); returns it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value!r}")
    return value


def _check_string(path: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{path} must be a string, got {value!r}")


def check_setting(path: str, key: str, value: Any) -> None:
    """The TOML type of one SimConfig setting (``base.KEY`` or ``optimizers[i].KEY``); ranges are SimConfig's job.
    Booleans are refused where numbers are expected, and numbers where booleans are (Python's bool is an int)."""
    kind = _KINDS.get(key)
    if key == "batch_size" and value == "full":
        return
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        extra = ' or "full" (B = n)' if key == "batch_size" else ""
        raise ConfigError(f"{path} must be an integer{extra}, got {value!r}")
    if kind == "float":
        _check_number(path, value)
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if kind == "str":
        _check_string(path, value)

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
        """An axis from its TOML form: an array of values, a table ``values = [...]`` (and optionally ``spacing``),
        or a table ``start/stop/num`` (``spacing = "log"`` or ``"linear"``, the default). Every value must be a
        number; on d, n and P values are rounded to integers, and values that round to the same cell are refused
        (the grid would silently hold fewer cells than it says). A string option (optimizer, lr_schedule, norm,
        ...) is not an axis: each value is an optimizer variant, one ``[[optimizers]]`` entry per value."""
        if _KINDS.get(name) == "str":
            raise ConfigError(f"grid.{name}: {name} is a string option, set per optimizer variant (one "
                              f"[[optimizers]] entry per value, e.g. {name} = \"...\" next to its label), not a grid "
                              f"axis")
        check_choice("grid axis", name, AXES)
        where = f"grid.{name}"
        generated = None   # (start, stop, num) of a start/stop/num grid
        if isinstance(spec, (list, tuple)):
            raw, spacing, vpath = list(spec), "list", where
        elif isinstance(spec, dict) and "values" in spec:
            unknown = set(spec) - {"values", "spacing"}
            if unknown:
                raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; a table with values may only add "
                                  f"spacing (or give start/stop/num/spacing without values)")
            raw, spacing, vpath = spec["values"], spec.get("spacing", "list"), f"{where}.values"
            if not isinstance(raw, (list, tuple)):
                raise ConfigError(f"{vpath} must be an array of numbers, e.g. [100, 200], got {raw!r}")
            _check_string(f"{where}.spacing", spacing)
            check_choice(f"{where}.spacing", spacing, ("log", "linear", "list"))
        elif isinstance(spec, dict):
            unknown = set(spec) - {"start", "stop", "num", "spacing"}
            if unknown:
                raise ConfigError(f"grid.{name} has unknown keys {sorted(unknown)}; use start/stop/num/spacing "
                                  f"or values")
            missing = [k for k in ("start", "stop", "num") if k not in spec]
            if missing:
                raise ConfigError(f"grid.{name} needs start, stop and num (or values); {', '.join(missing)} missing")
            start = _check_number(f"{where}.start", spec["start"])
            stop = _check_number(f"{where}.stop", spec["stop"])
            num = spec["num"]
            check_int(f"{where}.num", num, 1, MAX_RUNS)   # before the values are made (10^9 of them: 8 GB)
            spacing = spec.get("spacing", "linear")
            _check_string(f"{where}.spacing", spacing)
            check_choice(f"{where}.spacing", spacing, ("log", "linear"))
            if spacing == "log":
                check_float(f"grid.{name}.start", start, 0.0, lo_open=True)
                check_float(f"grid.{name}.stop", stop, 0.0, lo_open=True)
                raw = [float(v) for v in np.geomspace(start, stop, num)]
            else:
                raw = [float(v) for v in np.linspace(start, stop, num)]
            generated, vpath = (start, stop, num), where
        else:
            raise ConfigError(f"{where} must be an array of numbers or a table with start/stop/num (or values), "
                              f"got {spec!r}")
        if generated is None:
            raw = [_check_number(f"{vpath}[{i}]", v) for i, v in enumerate(raw)]
        integer = name in INTEGER_AXES
        values = [int(round(v)) for v in raw] if integer else [float(v) for v in raw]
        first: dict = {}
        for j, v in enumerate(values):
            i = first.setdefault(v, j)
            if i == j:
                continue
            cell = f"both give {name} = {v}" if integer else "are equal"
            if generated is not None:
                start, stop, num = generated
                raise ConfigError(f"{where}: the {spacing} grid start = {start:g}, stop = {stop:g}, num = {num} "
                                  f"repeats {'after rounding to integers ' if integer else ''}({raw[i]:g} and "
                                  f"{raw[j]:g} {cell}); lower num or widen the range, or list the values")
            raise ConfigError(f"{where} values must be distinct cells: {vpath}[{i}] = {raw[i]!r} and "
                              f"{vpath}[{j}] = {raw[j]!r} {cell}")
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


def check_settings(base: tuple, optimizers: tuple, names: list[str]) -> None:
    """Every [base] key and every variant's key is a SimConfig field it may set, of the right TOML type."""
    fields_ = set(SimConfig.field_names())
    for key, value in base:
        if key in names:
            raise ConfigError(f"base.{key} is also the grid axis grid.{key}: set {key} in one of them")
        if key not in fields_ or key == "seed" or key == "optimizer":
            raise ConfigError(f"base.{key} is not a SimConfig field that a sweep may fix "
                              f"(seed and optimizer are set by seeds and optimizers)")
        check_setting(f"base.{key}", key, value)
    for i, o in enumerate(optimizers):
        for key, value in o.settings:
            if key in names:
                raise ConfigError(f"optimizers[{i}].{key} (label {o.label!r}) is also the grid axis grid.{key}: "
                                  f"set {key} in one of them")
            if key not in fields_ or key == "seed":
                raise ConfigError(f"optimizers[{i}].{key} (label {o.label!r}) is not a SimConfig field an "
                                  f"optimizer variant may set")
            check_setting(f"optimizers[{i}].{key}", key, value)
        check_choice(f"optimizers[{i}].optimizer", o.optimizer, registry.optimizers("cnn"))


def parse_spec(d: dict, name: str | None = None) -> dict:
    """SweepSpec's keyword arguments from a spec's dict (its TOML tables), every key checked."""
    d = dict(d)
    unknown = set(d) - set(SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown sweep spec keys {sorted(unknown)}")
    spec_name = d.get("name", name or "sweep")
    if not isinstance(spec_name, str) or not spec_name.strip():
        raise ConfigError(f"name must be a non-empty string, got {spec_name!r}")
    _check_string("preset", d.get("preset", "c23"))
    _check_string("cell_seeding", d.get("cell_seeding", "shared"))
    if not isinstance(d.get("trajectories", True), bool):
        raise ConfigError(f"trajectories must be true or false, got {d['trajectories']!r}")
    grid = {} if d.get("grid") is None else d["grid"]
    if not isinstance(grid, dict):
        raise ConfigError(f"grid must be a table of axes ([grid.mu_norm], [grid.d], ...), got {grid!r}")
    axes = tuple(Axis.from_toml(k, v) for k, v in grid.items())
    base = {} if d.get("base") is None else d["base"]
    if not isinstance(base, dict):
        raise ConfigError(f"base must be a table of SimConfig fields ([base] with key = value lines), "
                          f"got {base!r}")
    entries = [] if d.get("optimizers") is None else d["optimizers"]
    if not isinstance(entries, (list, tuple)):
        raise ConfigError("optimizers must be an array of tables (one [[optimizers]] block per variant, each "
                          f"with a label), got {type(entries).__name__} {entries!r}")
    opts = []
    for i, o in enumerate(entries):
        if not isinstance(o, dict):
            raise ConfigError(f"optimizers[{i}] must be a table (label = ..., optimizer = ..., overrides), "
                              f"got {o!r}")
        o = dict(o)
        if "optimizer" in o:
            _check_string(f"optimizers[{i}].optimizer", o["optimizer"])
        label = o.pop("label", o.get("optimizer", "sgd"))
        if not isinstance(label, str):
            raise ConfigError(f"optimizers[{i}].label must be a string, got {label!r}")
        opts.append(OptimizerSpec(label, tuple(sorted(o.items()))))
    return dict(name=spec_name, axes=axes, optimizers=tuple(opts),
                seeds=d.get("seeds", 4), base=tuple(sorted(base.items())),
                preset=d.get("preset", "c23"), chunk_runs=d.get("chunk_runs", 256),
                benign_margin=d.get("benign_margin", 0.1), seed_offset=d.get("seed_offset", 0),
                trajectories=d.get("trajectories", True), cell_seeding=d.get("cell_seeding", "shared"))


def read_toml(path: str | Path) -> dict:
    """The dict of a TOML sweep file; a missing, unreadable or invalid file is a ConfigError."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"spec must be a TOML sweep file; {path} {what}")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"spec must be a readable TOML sweep file; {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"spec must be a TOML sweep file (UTF-8 text); {path} is not: byte "
                          f"0x{exc.object[exc.start]:02x} at offset {exc.start} is not UTF-8") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"spec {path} is not valid TOML: {exc}") from None
    return d
