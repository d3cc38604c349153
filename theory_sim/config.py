"""Frozen, validated configuration dataclasses.

Every config validates itself in ``__post_init__`` and raises ``ConfigError`` (a ``ValueError``) whose message names
the parameter and its allowed range, so bad input is rejected before any work starts. The CLI prints that message
as one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import warnings
from typing import Any, Iterable


class ConfigError(ValueError):
    """Invalid parameter: the message names the parameter and the allowed range."""


INT64_MAX = 2**63 - 1


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    """An integer in [lo, hi]; every integer must also fit an int64 (numpy and torch sizes and seeds are int64:
    a larger one would fail deep inside with OverflowError or "Maximum allowed dimension exceeded")."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if abs(value) > INT64_MAX:
        raise ConfigError(f"{name} must fit a 64-bit integer (|{name}| <= 2^63 - 1), got {value}")
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


# Renamed parameters (docs/architecture.md "Vocabulary"): an old spelling is accepted for one release, with one
# FutureWarning line naming the old and the new name (shown by default, on stderr).
def warn_renamed(old: str, new: str, where: str) -> None:
    # warn_explicit on a pseudo-file: one line on stderr (no source line under it), shown at every use
    warnings.warn_explicit(f"{where}: {old} is deprecated, use {new} (the old name is accepted until the next "
                           f"release)", FutureWarning, filename="<theory_sim>", lineno=0)


def renamed_keys(values: dict, renames: dict[str, str], where: str) -> dict:
    """``values`` with every old key of ``renames`` (old -> new) renamed, each with a warning; both given is an
    error (one of them would silently win)."""
    out = dict(values)
    for old, new in renames.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{where}: both {old} (deprecated) and {new} given; give {new} only")
            warn_renamed(old, new, where)
            out[new] = out.pop(old)
    return out


def deprecated_flag(new: str) -> type[argparse.Action]:
    """An argparse action for an old flag spelling: warns (naming ``new``) and stores into the new flag's dest."""
    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            warn_renamed(option_string, new, parser.prog)
            setattr(namespace, self.dest, values)
    return Deprecated


def check_shared(configs, names: Iterable[str], what: str, hint: str = "") -> None:
    """Runs trained as one computation (``what``) must agree on the fields ``names``: one ConfigError naming the
    first field they differ in."""
    if not configs:
        raise ConfigError("configs must hold at least one run")
    c0 = configs[0]
    for c in configs[1:]:
        for name in names:
            if getattr(c, name) != getattr(c0, name):
                raise ConfigError(f"{what} must share {name} (got {getattr(c0, name)!r} and "
                                  f"{getattr(c, name)!r}){hint}")


# --------------------------------------------------------------------------------------------------------------------
# One simulated run of the two-layer CNN on sparse-coding data [C23 Def. 2.1-2.2, K23]
# --------------------------------------------------------------------------------------------------------------------
from dataclasses import dataclass, fields, replace  # noqa: E402

from theory_sim.sam import registry  # noqa: E402  (the SAM-family rules; imports nothing of the package)

# sgd, and the SAM family of docs/science.md §3.2 / §8 (every member but sgd uses the radius sam_radius and the
# sam_steps schedule): read off the rule registry, theory_sim.sam.registry (these names are its built-in rules)
OPTIMIZERS = registry.optimizers("cnn")
NORMS = ("2", "inf")
MODELS = ("c23", "kou2023", "deep")  # deep: theory_sim.cnn.deep, docs/science.md §2.5
NOISE_PATCHES = ("shared", "independent")
DTYPES = ("float64", "float32")
# eta(t) over the run's planned steps (theory_sim.cnn.schedule, docs/science.md §3.5)
LR_SCHEDULES = ("constant", "cosine", "step", "linear_warmup_cosine")

# Options that only do something for some optimizers: field -> the optimizers it has an effect for (read off each
# rule's ``options`` in theory_sim.sam.registry, in SimConfig's field order). An option set explicitly for another
# optimizer (a ``simulate`` flag, a sweep variant's key) is refused by ``inapplicable``; a sweep's [base] value
# shared by all its variants, or a grid axis, is not (the runs it does not affect are plain runs of their
# optimizer, trained once for all the cells they serve: ``ignored_parameters``).
SAM_FAMILY = OPTIMIZERS[1:]


def optimizer_only_fields() -> dict[str, tuple[str, ...]]:
    """``OPTIMIZER_ONLY_FIELDS`` as the registry holds it now (a rule registered later is included)."""
    table = registry.option_fields()
    order = [f.name for f in fields(SimConfig)]
    return {name: table[name] for name in sorted(table, key=order.index)}


def ignored_parameters(optimizer: str) -> tuple[str, ...]:
    """The SimConfig fields ``optimizer`` does not read (read off ``OPTIMIZER_ONLY_FIELDS``, the one table that
    says so): a sweep trains one run for all the cells that differ only in them and joins it to each
    (theory_sim.sweeps.spec), and verify fits no slope along them."""
    check_choice("optimizer", optimizer, registry.optimizers("cnn"))
    return tuple(name for name, applies in optimizer_only_fields().items() if optimizer not in applies)


# Options that another option switches off: field -> (the other field, when it overrides). Both given is refused by
# ``overridden`` (one of them would silently win).
OVERRIDDEN_BY: dict[str, tuple[str, Any]] = {
    "log_every": ("log_points", lambda v: v > 0),    # log_points > 0 picks the logged steps itself
    "c_tau": ("tau", lambda v: v is not None),        # an absolute radius replaces the theory scale
    # the regime protocol (docs/science.md §5.6): a fixed init scale or per-step noise memorisation sets sigma_0 / eta
    "sigma_0": ("init_scale", lambda v: v is not None),
    "eta": ("noise_step", lambda v: v is not None),
}
# Patches per sample: a shared noise vector counts P - 1 times in the output, an exact float32 integer up to 2^24
MAX_P = 2**24

# Fields that fix array shapes or the loop structure: runs trained together as one batched ensemble must agree on
# them. Everything else (optimizer, mu_norm, sigma_p, flip_p, sigma_0, eta and its lr_schedule, tau, sam_steps,
# loss_eps, seed, and the
# rule options ascent_steps, ascent_step, m_sharpness, norm, asam_eta) may differ from run to run inside one
# ensemble: the trainer applies each run's own rule, and an SGD run is a run of radius 0 (eps = 0 under every rule).
STRUCTURAL_FIELDS = ("d", "n", "P", "m", "model", "noise_patches", "project_noise", "batch_size", "epochs",
                     "dtype", "device", "log_every", "n_test", "n_mc", "trajectory_mc", "depth", "width",
                     "dimension_free")


@dataclass(frozen=True)
class SimConfig:
    """Configuration of one run. Defaults follow docs/science.md §1-3 ([C23] model, shared noise patches).

    The SAM radius is ``tau`` when given, else the theory scale ``c_tau * m * sqrt(B) / (P * sigma_p * sqrt(d))``
    [C23 Sec. 4]. ``sam_steps=K`` runs SAM for the first K steps and SGD afterwards; ``None`` runs SAM throughout.
    Training stops at max ``epochs`` or once the full training loss is ``<= loss_eps`` (checked after every epoch;
    ``loss_eps=0`` trains all epochs). The trajectory is logged every ``log_every`` steps, or, with
    ``log_points = N > 0``, at about N log-spaced steps that always include step 0, the end of epoch 1, the SAM -> SGD
    switch and the last step (``theory_sim.cnn.train.log_steps``). Each logged test error uses ``trajectory_mc``
    Gaussian draws (0: not estimated along the trajectory, NaN; the final test error always uses ``n_mc``).

    The SAM family (docs/science.md §3.2): ``optimizer`` ``sam`` (eps = tau g/||g||_2, or tau sign(g) with
    ``norm="inf"``), ``usam`` (eps = tau g), ``randsam`` (eps = tau z/||z||, z ~ N(0, I) fresh every step), ``msam``
    (``ascent_steps`` = K projected normalised-gradient ascent steps in the tau-ball, K = 1 is SAM; the first is
    SAM's eps, the K - 1 others have length ``ascent_step`` * tau, default 1) and ``asam``
    (eps = tau T^2 g/||T g||, T = |w| + ``asam_eta`` on the weights, 1 on the biases). ``m_sharpness = M > 0``
    (sam, usam, msam) perturbs every chunk of M samples of a batch with its own gradient and steps with the mean of
    the chunks' gradients at their perturbed points; 0 is the whole batch. Options that do not apply to the chosen
    optimizer are accepted here and ignored, like ``sam_steps`` for sgd (a sweep sets them once for all its
    optimizers); ``simulate`` and a sweep variant refuse them (``OPTIMIZER_ONLY_FIELDS``, ``inapplicable``).

    ``lr_schedule`` (docs/science.md §3.5, ``theory_sim.cnn.schedule``): eta(t) over the planned steps T = epochs
    n / B, ``constant`` (eta), ``cosine`` (eta (1 + cos(pi t / T)) / 2), ``step`` (eta times ``lr_step_gamma`` every
    ``lr_step_every`` T steps) or ``linear_warmup_cosine`` (a linear warm-up over ``lr_warmup`` T steps, then the
    cosine over the rest). One clock per run: the SAM -> SGD switch does not restart it, early stopping ends it.
    """

    optimizer: str = "sgd"
    d: int = 800
    mu_norm: float = 2.0
    n: int = 20
    P: int = 2
    sigma_p: float = 1.0
    flip_p: float = 0.1
    m: int = 10
    sigma_0: float = 0.01
    eta: float = 0.1
    lr_schedule: str = "constant"
    lr_warmup: float = 0.05
    lr_step_gamma: float = 0.1
    lr_step_every: float = 0.5
    batch_size: int = 5
    epochs: int = 100
    tau: float | None = None
    c_tau: float = 1.0
    sam_steps: int | None = None
    loss_eps: float = 0.0
    model: str = "c23"
    noise_patches: str = "shared"
    project_noise: bool = True
    n_test: int = 1000
    n_mc: int = 20000
    log_every: int = 1
    log_points: int = 0
    trajectory_mc: int = 2000
    seed: int = 0
    data_seed: int | None = None
    dtype: str = "float64"
    device: str = "auto"
    ascent_steps: int = 2
    ascent_step: float = 1.0
    m_sharpness: int = 0
    norm: str = "2"
    asam_eta: float = 0.01
    depth: int = 2      # model "deep": layers L (2 = the c23 network), and units of each hidden layer
    width: int = 10
    # docs/science.md §2.6: data and init sampled through their Gram matrix (Bartlett), at a cost independent of d
    dimension_free: bool = False
    # docs/science.md §5.6, the regime protocol: when given, sigma_0 = init_scale / (P sigma_p sqrt(d)) and
    # eta = noise_step 2 B m / ((P - 1) sigma_p^2 d) (the fields sigma_0 and eta then hold these values)
    init_scale: float | None = None
    noise_step: float | None = None

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, registry.optimizers("cnn"))
        check_int("d", self.d, 1)
        check_float("mu_norm", self.mu_norm, 0.0)
        check_int("n", self.n, 1)
        check_int("P", self.P, 2)
        if self.P > MAX_P:
            raise ConfigError(f"P must be at most 2^24 = {MAX_P} (the multiplicity P - 1 of a shared noise patch must "
                              f"be an exact float32 integer), got {self.P}")
        check_float("sigma_p", self.sigma_p, 0.0, lo_open=True)
        check_float("flip_p", self.flip_p, 0.0, 0.5, hi_open=True)
        check_int("m", self.m, 1)
        check_float("sigma_0", self.sigma_0, 0.0, lo_open=True)
        check_float("eta", self.eta, 0.0, lo_open=True)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_float("lr_warmup", self.lr_warmup, 0.0, 1.0, hi_open=True)
        check_float("lr_step_gamma", self.lr_step_gamma, 0.0, 1.0, lo_open=True)
        check_float("lr_step_every", self.lr_step_every, 0.0, 1.0, lo_open=True)
        check_int("batch_size", self.batch_size, 1, self.n)
        if self.n % self.batch_size:
            raise ConfigError(f"batch_size must divide n={self.n} (epochs are split into n/B batches without "
                              f"replacement), got {self.batch_size}")
        check_int("epochs", self.epochs, 1)
        if self.tau is not None:
            check_float("tau", self.tau, 0.0)
        check_float("c_tau", self.c_tau, 0.0)
        if self.sam_steps is not None:
            check_int("sam_steps", self.sam_steps, 0)
        check_float("loss_eps", self.loss_eps, 0.0)
        check_choice("model", self.model, MODELS)
        check_choice("noise_patches", self.noise_patches, NOISE_PATCHES)
        check_choice("project_noise", self.project_noise, (True, False))
        check_int("n_test", self.n_test, 0)
        check_int("n_mc", self.n_mc, 100)
        check_int("log_every", self.log_every, 1)
        check_int("log_points", self.log_points, 0, 100000)
        check_int("trajectory_mc", self.trajectory_mc, 0, 10**7)
        check_int("seed", self.seed, 0, 2**63 - 1)
        if self.data_seed is not None:
            check_int("data_seed", self.data_seed, 0, 2**63 - 1)
        check_choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        check_device(self.device)
        check_int("ascent_steps", self.ascent_steps, 1, 100)
        check_float("ascent_step", self.ascent_step, 0.0, lo_open=True)
        check_int("m_sharpness", self.m_sharpness, 0, self.batch_size)
        if self.m_sharpness and self.batch_size % self.m_sharpness:
            raise ConfigError(f"m_sharpness must be 0 (the whole batch) or divide batch_size={self.batch_size} "
                              f"(every chunk holds m_sharpness samples), got {self.m_sharpness}")
        check_choice("norm", self.norm, NORMS)
        check_float("asam_eta", self.asam_eta, 0.0)
        check_int("depth", self.depth, 2, 8)
        check_int("width", self.width, 1, 1024)
        self._check_regime()
        self._check_dimension_free()

    def _check_regime(self) -> None:
        """Derive sigma_0 and eta from the regime protocol's scales (docs/science.md §5.6) when they are given."""
        if self.init_scale is not None:
            check_float("init_scale", self.init_scale, 0.0, lo_open=True)
            object.__setattr__(self, "sigma_0", self.init_scale / (self.P * self.sigma_p * math.sqrt(self.d)))
            check_float("sigma_0 (from init_scale)", self.sigma_0, 0.0, lo_open=True)
        if self.noise_step is not None:
            check_float("noise_step", self.noise_step, 0.0, lo_open=True)
            eta = self.noise_step * 2 * self.batch_size * self.m / ((self.P - 1) * self.sigma_p ** 2 * self.d)
            object.__setattr__(self, "eta", eta)
            check_float("eta (from noise_step)", self.eta, 0.0, lo_open=True)

    def _check_dimension_free(self) -> None:
        """The dimension-free sampler is exact only where everything is rotation invariant (docs/science.md §2.6)."""
        check_choice("dimension_free", self.dimension_free, (True, False))
        if not self.dimension_free:
            return
        if self.model == "kou2023":
            raise ConfigError("dimension_free must be false with model kou2023: its uniform init "
                              "U(-1/sqrt(d), 1/sqrt(d)) is not rotation invariant (docs/science.md §2.6)")
        rule = self.rule
        if rule is not None and not registry.RULES[rule].in_span:
            raise ConfigError(f"dimension_free must be false with the rule {rule}: its perturbation acts on W "
                              f"coordinate by coordinate, not rotation invariant (docs/science.md §2.6)")

    @property
    def frame_dim(self) -> int:
        """The dimension the run's vectors are stored in: d, or with ``dimension_free`` the k = 1 + min(n K + 2m,
        d - 1) of the frame spanned by e_1, the noise vectors and the initial filters (docs/science.md §2.6)."""
        if not self.dimension_free:
            return self.d
        K = 1 if self.noise_patches == "shared" else self.P - 1
        return 1 + min(self.n * K + 2 * self.m, self.d - 1)

    @property
    def rule(self) -> str | None:
        """The perturbation rule the trainer applies (None for sgd): the optimizer's name, except ``sam_inf`` for
        sam with ``norm="inf"`` (docs/science.md §3.2)."""
        rule = registry.rule_of(self.optimizer, self.norm)
        return None if rule is None else rule.name

    @property
    def chunk_size(self) -> int:
        """Samples per m-sharpness chunk: m_sharpness for the rules that take it (sam, usam, msam), else the batch."""
        applies = self.optimizer in registry.optimizers_with("m_sharpness")
        return self.m_sharpness if applies and self.m_sharpness else self.batch_size

    @property
    def rng_seed(self) -> int:
        """The seed of every random stream of the run (data, init, batch order, Monte-Carlo draws): ``data_seed``
        when given (a sweep with ``cell_seeding = "independent"`` draws each cell afresh), else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def sam_radius(self) -> float:
        """tau: the absolute radius if given, else the [C23] theory scale c_tau m sqrt(B) / (P sigma_p sqrt(d))."""
        if self.tau is not None:
            return float(self.tau)
        return self.c_tau * self.m * math.sqrt(self.batch_size) / (self.P * self.sigma_p * math.sqrt(self.d))

    def to_dict(self) -> dict[str, Any]:
        # asdict without its deep copies (every field is an immutable scalar or string): a sweep chunk's summary
        # table converts 1000 configs, which asdict made a noticeable part of the chunk's time
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> "SimConfig":
        return replace(self, **changes)

    def with_seeds(self, seed: int, data_seed: int | None) -> "SimConfig":
        """``replace(seed=seed, data_seed=data_seed)`` that checks only these two fields: no other check reads them,
        and every other field is this (validated) config's. A sweep makes each cell's replicates from one validated
        prototype; 100,000 full ``__post_init__`` runs took a large part of a spec's expansion."""
        check_int("seed", seed, 0, 2**63 - 1)
        if data_seed is not None:
            check_int("data_seed", data_seed, 0, 2**63 - 1)
        new = object.__new__(SimConfig)
        new.__dict__.update(self.__dict__, seed=seed, data_seed=data_seed)  # frozen: bypass __setattr__, as replace
        return new

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SimConfig":
        """Named presets. ``kou2023``: the [K23] public script (uclaml/Benign_ReLU_CNN): P=2, noise not projected
        off mu, sigma_p=1, p=0.1, n=20, m=10, conv with bias and PyTorch's default init, mean over patches, sum over
        filters, full-batch SGD with lr 0.1 for 100 epochs. ``c23``: the defaults of this class."""
        check_choice("preset", name, ("c23", "kou2023"))
        base: dict[str, Any] = {}
        if name == "kou2023":
            n = overrides.get("n", 20)
            base = dict(model="kou2023", project_noise=False, P=2, sigma_p=1.0, flip_p=0.1, n=n, m=10, eta=0.1,
                        epochs=100, batch_size=n, n_test=1000)
        base.update(overrides)
        return cls(**base)


# the table for the built-in rules (a snapshot: code that must see rules registered later calls the function)
OPTIMIZER_ONLY_FIELDS: dict[str, tuple[str, ...]] = optimizer_only_fields()


def inapplicable(name: str, value: Any, optimizer: str) -> tuple[str, ...] | None:
    """The optimizers option ``name`` applies to, if ``name`` = ``value``, set explicitly, has no effect with
    ``optimizer`` (None: it has one). A value equal to SimConfig's default is "no effect" either way and accepted
    (e.g. ``--sam-steps none`` for sgd)."""
    applies = optimizer_only_fields().get(name)
    if applies is None or optimizer in applies or value == getattr(SimConfig, name, object()):
        return None
    return applies


def overridden(given: dict[str, Any]) -> list[tuple[str, str]]:
    """The pairs (option, the option that switches it off) both in ``given`` (name -> value) where the first has
    no effect."""
    return [(name, other) for name, (other, active) in OVERRIDDEN_BY.items()
            if name in given and other in given and active(given[other])]


def check_device(name: str) -> None:
    """``device_of``'s errors, without importing torch for the two names that are always valid: a sweep's parent
    process validates 100,000 configs and never runs torch itself (its workers do)."""
    if name not in ("auto", "cpu"):
        device_of(name)


def device_of(name: str):
    """Resolve ``device='auto'`` to cuda when present, else cpu."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device must be 'auto' or 'cpu' here: {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device index must be in [0, {torch.cuda.device_count() - 1}], got {name!r}")
    return dev
