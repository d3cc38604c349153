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

The file is read and every key checked by theory_sim.sweeps.spec_toml; this module expands the spec into runs and
chunks. Every value is checked before any work, and an error is one ``ConfigError`` line naming its key path (e.g.
``grid.d.values[2]``, ``base.epochs``, ``optimizers[1].c_tau``) and what is allowed: numbers where numbers are
expected (a TOML ``true`` is not one), an array of tables for ``optimizers``, no unknown keys, and grid values that
give distinct cells (on d, n and P after rounding to integers: a log grid that repeats is refused, not shrunk).

A setting that can have no effect is refused too (``SweepSpec._check_effective``): a variant's key its optimizer
ignores (``optimizers[0].tau`` on sgd; a [base] value or a grid axis shared by every variant is fine), and an option
another one switches off at the same or a broader level (``base.log_every`` under ``trajectories = true``). Before
any work the runner checks every chunk's memory estimate and step count (``SweepSpec.check_resources``).

Expansion is deterministic: runs are grouped by the fields that must agree inside an ensemble, split into chunks of
at most ``chunk_runs``, and numbered — so a re-run of the same spec finds the same chunks on disk.

A run is trained once even when several cells hold it: a variant's runs that differ only in axes its optimizer
does not read (theory_sim.config.ignored_parameters: e.g. c_tau, tau, sam_steps for sgd) and share their data (the
same seed under shared cell seeding) are one run. ``runs`` lists every (cell, seed, variant); ``trained_runs`` the
distinct ones, which the chunks hold; the runner joins each trained run to every cell that needs it, so the results
table still has one row per cell x seed x variant.
"""
from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from theory_sim.config import (
    INT64_MAX,
    STRUCTURAL_FIELDS,
    ConfigError,
    SimConfig,
    check_choice,
    check_float,
    check_int,
    ignored_parameters,
    no_effect,
    no_effect_text,
    overridden,
)
from theory_sim.seeding import seed_words
from theory_sim.sweeps import cells
from theory_sim.sweeps.cells import AXES, CORE_AXES, INTEGER_AXES, NOT_AXES, RUN_KEY  # noqa: F401 (re-exported)
from theory_sim.sweeps.spec_toml import Axis, OptimizerSpec, check_settings, parse_spec, read_toml

TRAJECTORY_POINTS = 30
_EXPAND_ON_DEMAND = object()   # SweepSpec(_configs=_EXPAND_ON_DEMAND): validate the spec, expand its runs when asked
CELL_SEEDING = ("shared", "independent")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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
    trajectories: bool = True        # keep every run's coefficient trajectory (log_points steps)
    cell_seeding: str = "shared"     # shared: seed s draws the same data in every cell; independent: fresh per cell
    _configs: list = field(default=None, compare=False, repr=False, hash=False)
    _trained: tuple = field(default=None, compare=False, repr=False, hash=False)
    _chunks: list = field(default=None, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        from theory_sim.resources import MAX_RUNS, MAX_SEEDS

        # the name becomes file names (figures --gallery G writes G/<name>_*.png): a plain stem, never a path
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise ConfigError(f"name must be a plain file-name stem (letters, digits, '.', '_' and '-', starting with "
                              f"a letter or digit, at most 100 characters), got {self.name!r}")
        check_int("seeds", self.seeds, 1, MAX_SEEDS)
        check_int("chunk_runs", self.chunk_runs, 1)
        check_int("seed_offset", self.seed_offset, 0, INT64_MAX - self.seeds + 1)   # every seed an int64
        check_choice("trajectories", self.trajectories, (True, False))
        check_choice("cell_seeding", self.cell_seeding, CELL_SEEDING)
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
        runs = math.prod(len(a.values) for a in self.axes) * self.seeds * len(self.optimizers)
        if runs > MAX_RUNS:   # before anything is expanded
            raise ConfigError(f"a sweep must hold at most {MAX_RUNS:,} runs (cells x seeds x optimizer variants), this "
                              f"spec holds {runs:,}: lower the grid's num or values, seeds or variants")
        check_settings(self.base, self.optimizers, names)
        self._check_effective(names)
        if self._configs is _EXPAND_ON_DEMAND:   # a stored spec, validated run by run when it was written
            object.__setattr__(self, "_configs", None)
        else:   # validate every run before any work: builds (and caches) the configs
            object.__setattr__(self, "_configs", self._expand())

    def _check_effective(self, axes: list[str]) -> None:
        """Refuse a setting that has no effect (``theory_sim.config.no_effect``, the rules simulate applies). A
        variant's key that acts in none of its cells (``optimizers[i].tau`` for sgd, ``lr_warmup`` under a constant
        schedule) is refused; a [base] value or a grid axis only when it acts for no variant (it is shared by every
        variant: an sgd variant across a c_tau axis is a plain SGD run in every cell, but a ``[grid.depth]`` over
        the c23 model trains identical runs). An option another one switches off (log_every under log_points > 0,
        c_tau under tau) is refused when the one switching it off is set at the same or a broader level (base < a
        variant < the grid; ``trajectories = true`` sets log_points = 30 below them all): a variant may override a
        [base] value."""
        base = dict(self.base)
        grid = {a.name: a.values for a in self.axes}
        defaults = SimConfig.preset(self.preset)

        def reason(o: OptimizerSpec, key: str, value) -> tuple | None:   # why key = value acts in none of o's cells
            settings = {**base, **o.overrides}
            return no_effect(key, value, lambda other: grid.get(other, [settings.get(other, getattr(defaults, other))]))

        for i, o in enumerate(self.optimizers):
            for key, value in o.settings:
                why = reason(o, key, value)
                if why:
                    raise ConfigError(f"optimizers[{i}].{key} (label {o.label!r}) has no effect: "
                                      f"{no_effect_text(key, why)}; drop it (a [base] value shared by every variant "
                                      f"is allowed)")
        for i, o in enumerate(self.optimizers):
            level, where = {}, {}
            if self.trajectories:
                level["log_points"], where["log_points"] = -1, f"trajectories = true (log_points = {TRAJECTORY_POINTS})"
            for rank, keys, path in ((0, base, "base"), (1, o.overrides, f"optimizers[{i}]"),
                                     (2, {a: None for a in axes}, "grid")):
                for key in keys:
                    level[key], where[key] = rank, f"{path}.{key}"
            # each option's value as the runs see it (an axis: any of its values; log_points unset: trajectories')
            values = {**base, **o.overrides}
            given = {k: 1 if k in axes else values.get(k, TRAJECTORY_POINTS) for k in level}
            for name, other in overridden(given):
                if level[name] >= level[other]:
                    raise ConfigError(f"{where[name]} has no effect with {where[other]} (it decides alone); drop "
                                      f"one of them")
        shared = [(f"base.{key}", key, value) for key, value in self.base]
        shared += [(f"grid.{a.name}", a.name, a.values) for a in self.axes]   # values: never "the default"
        for path, key, value in shared:
            why = [reason(o, key, value) for o in self.optimizers if key not in o.overrides]
            if why and all(why):
                raise ConfigError(f"{path} has no effect in any optimizer variant: {no_effect_text(key, why[0])}; "
                                  f"drop it")

    def check_resources(self, force_memory: bool = False, force_steps: bool = False,
                        available: tuple[int, str] | None = None, workers: int = 1) -> None:
        """Refuse (before any work) a chunk whose memory estimate exceeds the memory available to each of
        ``workers`` concurrent chunks, or whose runs take more than ``MAX_TOTAL_STEPS`` steps
        (``theory_sim.cnn.memory``), naming the chunk and the key paths of the parameters that set its size."""
        from theory_sim.cnn.memory import check_resources   # no torch: the sweep's parent runs this
        from theory_sim.resources import available_memory_bytes

        available = available_memory_bytes() if available is None else available
        if available is not None and workers > 1:
            available = (available[0] // workers, f"{available[1]}, shared by {workers} workers: lower --workers")
        labels = {o.label: i for i, o in enumerate(self.optimizers)}
        seen = set()
        for cid, chunk in enumerate(self.chunks()):
            configs = [cfg for _, cfg in chunk]
            # chunks alike in shape, size and rules have the same estimate: one of them is enough (100,000 runs)
            kind = (tuple(getattr(configs[0], f) for f in STRUCTURAL_FIELDS), len(configs),
                    frozenset((c.optimizer, c.norm, c.m_sharpness) for c in configs))
            if kind in seen:
                continue
            seen.add(kind)
            i = labels[chunk[0][0][0]]
            try:
                check_resources(configs, what=f"chunk {cid} ({len(chunk)} runs, chunk_runs = {self.chunk_runs})",
                                force_memory=force_memory, force_steps=force_steps, available=available,
                                log=self.trajectories, track=self.trajectories, heldout=configs[0].n_test > 0)
            except ConfigError as exc:
                paths = self.key_paths(i)
                text = str(exc)
                for name, path in paths.items():   # name where each parameter is set: base.n_mc=..., grid.d=...
                    text = re.sub(rf"(?<![\w.]){name}=", f"{path}=", text)
                raise ConfigError(text) from None

    def key_paths(self, i: int) -> dict[str, str]:
        """SimConfig field -> where variant ``i``'s runs get it: grid.X, optimizers[i].X, base.X (else unnamed)."""
        paths = {k: f"base.{k}" for k, _ in self.base}
        paths.update({k: f"optimizers[{i}].{k}" for k, _ in self.optimizers[i].settings})
        paths.update({a.name: f"grid.{a.name}" for a in self.axes})
        return paths

    # ------------------------------------------------------------------------------------------------------------
    def axis(self, name: str) -> Axis | None:
        return next((a for a in self.axes if a.name == name), None)

    @property
    def extra_axes(self) -> tuple[str, ...]:
        """Swept axes beyond d, n, P, sigma_p and ||mu|| (in AXES order)."""
        return cells.extra_axes(a.name for a in self.axes)

    @property
    def run_key(self) -> tuple[str, ...]:
        """The columns that identify a run: RUN_KEY with the extra axes before the seed (theory_sim.sweeps.cells)."""
        return cells.run_key(self.extra_axes)

    @property
    def cell_dims(self) -> tuple[str, ...]:
        """The dimensions of a cell besides ||mu||: d, n, P, sigma_p and the extra axes."""
        return cells.cell_dims(self.extra_axes)

    @property
    def cell_key(self) -> tuple[str, ...]:
        """Every dimension of a cell: cell_dims and ||mu||."""
        return cells.cell_key(self.extra_axes)

    def _expand(self) -> list[tuple[tuple, SimConfig]]:
        base = dict(self.base)
        axes = {a.name: a.values for a in self.axes}
        order = [a for a in self.cell_key if a in axes]
        protos = []   # (variant label, validated prototype of the cell's runs, the cell's seed words or None)
        for o in self.optimizers:
            for combo in product(*(axes[a] for a in order)):
                cell = dict(zip(order, combo))
                settings = {**base, **o.overrides, **cell}
                if self.trajectories:  # about 30 logged steps per run unless the spec says otherwise; the test
                    # error along the trajectory only on request (base.trajectory_mc: it would double a sweep's cost)
                    settings.setdefault("log_points", TRAJECTORY_POINTS)
                    settings.setdefault("trajectory_mc", 0)
                if settings.get("batch_size") == "full":  # full batch at every n of the grid
                    settings["batch_size"] = settings.get("n", SimConfig.preset(self.preset).n)
                try:
                    proto = SimConfig.preset(self.preset, **settings)
                except ConfigError as exc:
                    raise ConfigError(f"optimizer {o.label!r} at {cell}: {exc}") from None
                protos.append((o.label, proto, None if self.cell_seeding == "shared" else _cell_words(cell)))
        seeds = [self.seed_offset + s for s in range(self.seeds)]
        # independent cell seeding: every replicate's data seed, hashed for all cells at once (``_expand``)
        data_seeds = iter(seed_words([(seed, *words) for _, _, words in protos if words is not None
                                      for seed in seeds]))
        runs, run_key = [], self.run_key   # a property: once, not per run
        for label, proto, words in protos:
            for seed in seeds:
                cfg = proto.with_seeds(seed, None if words is None else next(data_seeds))
                runs.append((tuple(label if k == "label" else getattr(cfg, k) for k in run_key), cfg))
        return runs

    @property
    def runs(self) -> list[tuple[tuple, SimConfig]]:
        """Every (run key, config): one per cell x seed x variant."""
        if self._configs is None:   # a copy sent to a worker without them (``__getstate__``) expands on demand
            object.__setattr__(self, "_configs", self._expand())
        return self._configs

    def __getstate__(self) -> dict:
        """Pickle the spec without its expanded runs and chunks (100,000 configs for the [K23] grid): a pool
        worker gets its chunk's runs with the task and never needs the others."""
        return {**self.__dict__, "_configs": None, "_trained": None, "_chunks": None}

    def ignored_axes(self, label: str) -> tuple[str, ...]:
        """The swept axes that variant ``label``'s optimizer does not read (its runs repeat along them)."""
        o = next(o for o in self.optimizers if o.label == label)
        names = {a.name for a in self.axes}
        return tuple(a for a in ignored_parameters(o.optimizer) if a in names)

    @property
    def trained_runs(self) -> list[tuple[tuple, SimConfig]]:
        """The distinct runs (first occurrence in ``runs`` order): what the chunks hold and the trainer trains."""
        return self._shared_runs()[0]

    @property
    def joined_runs(self) -> list[tuple[tuple, tuple]]:
        """(run key, key of the trained run it equals) for every run of ``runs`` that is not trained itself."""
        return self._shared_runs()[1]

    def _shared_runs(self) -> tuple[list, list]:
        if self._trained is None:
            object.__setattr__(self, "_trained", self._dedupe())
        return self._trained

    def _dedupe(self) -> tuple[list, list]:
        # a variant's runs are the same run when they agree on every run-key field but the ignored axes, and on
        # the data seed (independent cell seeding draws each cell's data from the cell's values: never shared)
        drop = {o.label: set(self.ignored_axes(o.label)) for o in self.optimizers}
        if not any(drop.values()):
            return self.runs, []
        keep = {lab: [i for i, k in enumerate(self.run_key) if k not in d] for lab, d in drop.items()}
        first: dict[tuple, tuple] = {}
        trained, joined = [], []
        for key, cfg in self.runs:
            ident = (*(key[i] for i in keep[key[0]]), cfg.data_seed)
            source = first.setdefault(ident, key)
            if source is key:
                trained.append((key, cfg))
            else:
                joined.append((key, source))
        return trained, joined

    def chunks(self) -> list[list[tuple[tuple, SimConfig]]]:
        """Deterministic chunks: runs grouped by the structural fields and, inside, ordered so that the runs sharing
        a data set (same seed, sigma_p, flip_p: every ||mu|| and optimizer of a seed) are consecutive — they then
        share one matmul (see theory_sim.cnn.data). Chunks hold at most chunk_runs runs, whole data-set groups where
        chunk_runs allows."""
        if self._chunks is None:  # computed once per spec (a sweep asks for its chunks many times)
            object.__setattr__(self, "_chunks", self._make_chunks())
        return self._chunks

    def _make_chunks(self) -> list[list[tuple[tuple, SimConfig]]]:
        return make_chunks(self.trained_runs, self.chunk_runs)

    @property
    def flip_p(self) -> float:
        ps = {cfg.flip_p for _, cfg in self.runs}
        return ps.pop() if len(ps) == 1 else float("nan")

    def benign_threshold(self, p: float) -> float:
        return cells.benign_threshold(p, self.benign_margin)

    # ------------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "preset": self.preset, "seeds": self.seeds, "seed_offset": self.seed_offset,
                "chunk_runs": self.chunk_runs, "benign_margin": self.benign_margin, "base": dict(self.base),
                "grid": {a.name: a.to_dict() for a in self.axes},
                "optimizers": [{"label": o.label, **o.overrides} for o in self.optimizers],
                **({} if self.trajectories else {"trajectories": False}),
                **({} if self.cell_seeding == "shared" else {"cell_seeding": self.cell_seeding})}

    def digest(self) -> str:
        """Hash of everything that determines the results (chunking excluded: it only groups the work)."""
        d = self.to_dict()
        d.pop("chunk_runs")
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict, name: str | None = None, expand: bool = True) -> "SweepSpec":
        """The spec of a dict of TOML tables. ``expand=False``: every check but the per-run one, the runs expanded
        when first asked for (verify and figures of a stored sweep never ask: 100,000 configs take seconds)."""
        return cls(**parse_spec(d, name), **({} if expand else {"_configs": _EXPAND_ON_DEMAND}))

    @classmethod
    def from_toml(cls, path: str | Path) -> "SweepSpec":
        return cls.from_dict(read_toml(path), name=Path(path).stem)


def make_chunks(trained: list[tuple[tuple, SimConfig]], chunk_runs: int) -> list[list[tuple[tuple, SimConfig]]]:
    """``SweepSpec.chunks`` of the runs ``trained`` (also the rounds of a boundary search, theory_sim.sweeps.search)."""
    groups: dict[tuple, list] = {}
    structural = operator.attrgetter(*STRUCTURAL_FIELDS)
    for key, cfg in trained:
        groups.setdefault(structural(cfg), []).append((key, cfg))
    out = []
    for runs in groups.values():
        data_keys = [(cfg.rng_seed, cfg.sigma_p, cfg.flip_p) for _, cfg in runs]
        order = sorted(range(len(runs)), key=data_keys.__getitem__)   # stable: spec order kept
        runs = [runs[i] for i in order]
        sizes: dict[tuple, int] = {}
        for i in order:
            k = data_keys[i]
            sizes[k] = sizes.get(k, 0) + 1
        g = next(iter(sizes.values())) if len(set(sizes.values())) == 1 else 1
        size = (chunk_runs // g) * g if chunk_runs >= g else chunk_runs
        for lo in range(0, len(runs), size):
            out.append(runs[lo:lo + size])
    return out


def _cell_words(cell: dict) -> list[int]:
    """The four 32-bit words of the hash of a cell's values that seed its replicates' data (``_expand``)."""
    return [int(w) for w in np.frombuffer(hashlib.sha256(json.dumps(cell, sort_keys=True).encode()).digest()[:16],
                                          dtype=np.uint32)]


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
