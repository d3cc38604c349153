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


def check_dpi(dpi: Any) -> None:
    """A figure resolution (``figures``/``sweep --dpi``), None for the default: checked before any work."""
    if dpi is not None and not (isinstance(dpi, int) and not isinstance(dpi, bool) and 10 <= dpi <= 2000):
        raise ConfigError(f"dpi must be an integer in [10, 2000], got {dpi!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


def package_version() -> str:
    """theory_sim's version from the installed distribution's metadata, not by importing ``theory_sim``: run from a
    folder that holds a checkout named theory_sim, that import finds the folder (a namespace package without
    ``__version__``). A checkout that is not installed: its ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("theory_sim")
    except PackageNotFoundError:
        from theory_sim import __version__

        return __version__


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
    """An argparse action for an old flag spelling: warns (naming ``new``) and stores into the new flag's dest,
    noting what it did for ``check_renamed_flags``."""
    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            warn_renamed(option_string, new, parser.prog)
            note = (option_string, new, self.dest, getattr(namespace, self.dest, None), values)
            setattr(namespace, "_renamed_flags", [*getattr(namespace, "_renamed_flags", []), note])
            setattr(namespace, self.dest, values)
    return Deprecated


def check_renamed_flags(args: argparse.Namespace) -> None:
    """Refuse an old flag spelling given together with its new one (the last of them would silently win)."""
    for old, new, dest, before, value in getattr(args, "_renamed_flags", []):
        if before is not None or getattr(args, dest) != value:
            raise ConfigError(f"both {old} (deprecated) and {new} given; give {new} only")


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
from dataclasses import dataclass, field, fields, replace  # noqa: E402

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
# optimizer (a ``simulate`` flag, a sweep variant's key) is refused by ``no_effect``; a sweep's [base] value
# shared by all its variants, or a grid axis, only when no variant reads it (the runs it does not affect are plain
# runs of their optimizer, trained once for all the cells they serve: ``ignored_parameters``).
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
    # the regime protocol (docs/science.md §5.7): a fixed init scale or per-step noise memorisation sets sigma_0 / eta
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


def _option(default: Any, help: str, **meta: Any):
    """A SimConfig field with a ``simulate`` flag: its help text (and choices, flag, group) in the metadata."""
    return field(default=default, metadata={"help": help, **meta})


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
    optimizers); ``simulate`` and a sweep variant refuse them (``no_effect``, ``check_effective``).

    ``lr_schedule`` (docs/science.md §3.5, ``theory_sim.cnn.schedule``): eta(t) over the planned steps T = epochs
    n / B, ``constant`` (eta), ``cosine`` (eta (1 + cos(pi t / T)) / 2), ``step`` (eta times ``lr_step_gamma`` every
    ``lr_step_every`` T steps) or ``linear_warmup_cosine`` (a linear warm-up over ``lr_warmup`` T steps, then the
    cosine over the rest). One clock per run: the SAM -> SGD switch does not restart it, early stopping ends it.
    """

    # every field's metadata makes its ``simulate`` flag (theory_sim.cnn.simulate_verb.add_training_arguments): "help"
    # (a field without it has no flag), optionally "choices", "flag" (default --the-name) and "group" (flags of one
    # group are mutually exclusive)
    optimizer: str = _option("sgd", "sgd, or a SAM-family rule (docs/science.md §3.2): sam (tau g/||g||, or tau "
                             "sign(g) with --norm inf), usam (tau g), randsam (tau z/||z||, z ~ N(0, I)), msam "
                             "(--ascent-steps projected ascent steps), asam (tau T^2 g/||T g||, T = |w| + --asam-eta)",
                             choices=registry.optimizers)   # called when the flags are made: rules added later
    d: int = _option(800, "dimension of every patch (>= 1)")
    mu_norm: float = _option(2.0, "signal strength ||mu|| (>= 0)")
    n: int = _option(20, "training samples")
    P: int = _option(2, "patches per sample (>= 2)", flag="--P")
    sigma_p: float = _option(1.0, "noise level (> 0)")
    flip_p: float = _option(0.1, "label-flip probability in [0, 0.5)")
    m: int = _option(10, "filters per sign")
    sigma_0: float = _option(0.01, "init std (c23 model)")
    eta: float = _option(0.1, "learning rate (> 0)")
    lr_schedule: str = _option("constant", "eta(t) over the planned epochs * n / B steps (docs/science.md §3.5): "
                               "constant (default), cosine, step (times --lr-step-gamma every --lr-step-every of the "
                               "steps), linear_warmup_cosine (linear warm-up over --lr-warmup of the steps, then "
                               "cosine)", choices=LR_SCHEDULES)
    lr_warmup: float = _option(0.05, "linear_warmup_cosine: the warm-up's fraction of the steps, in [0, 1) (default "
                               "0.05)")
    lr_step_gamma: float = _option(0.1, "step: the factor of each decay, in (0, 1] (default 0.1)")
    lr_step_every: float = _option(0.5, "step: the fraction of the steps between two decays, in (0, 1] (default 0.5)")
    batch_size: int = _option(5, "B, must divide n")
    epochs: int = _option(100, "passes over the training set (>= 1)")
    tau: float | None = _option(None, "absolute radius of every SAM-family rule (with --norm inf: per coordinate)",
                                group="radius")
    c_tau: float = _option(1.0, "SAM-family radius as c_tau * m sqrt(B) / (P sigma_p sqrt(d)) (default 1)",
                           group="radius")
    sam_steps: int | None = _option(None, "the SAM-family rule for the first K steps, then SGD; 'none' = throughout "
                                    "(default)")
    loss_eps: float = _option(0.0, "stop once the training loss is <= this")
    model: str = _option("c23", "network variant: c23 (docs/science.md §2), kou2023 ([K23]) or deep (§2.5: "
                         "--depth, --width)", choices=MODELS)
    noise_patches: str = _option("shared", "the P-1 noise patches of a sample: one shared noise vector, or "
                                 "independent ones", choices=NOISE_PATCHES)
    project_noise: bool = _option(True, "project the noise off mu (c23 default) or not (kou2023)")
    n_test: int = _option(1000, "held-out test points per seed (0: Gaussian only)")
    n_mc: int = _option(20000, "Gaussian draws for the test-error estimator")
    log_every: int = _option(1, "log every k steps")
    log_points: int = _option(0, "log about N log-spaced steps instead (always step 0, the end of epoch 1, the SAM "
                              "-> SGD switch and the last step); 0 = every --log-every steps (default)")
    trajectory_mc: int = _option(2000, "Gaussian draws per logged test error (default 2000; 0 = none, NaN in the "
                                 "trajectory)")
    seed: int = 0            # no flag: simulate's --seeds
    data_seed: int | None = None
    dtype: str = _option("float64", "training precision", choices=DTYPES)
    device: str = _option("auto", "auto (cuda if present), cpu, cuda, cuda:N")
    ascent_steps: int = _option(2, "msam: K projected normalised-gradient ascent steps in the tau-ball (>= 1, "
                                "default 2; 1 = SAM)")
    ascent_step: float = _option(1.0, "msam: the length of every ascent step after the first, as a multiple of tau "
                                 "(> 0, default 1; e.g. 0.2 with --ascent-steps 5; needs --ascent-steps >= 2)")
    m_sharpness: int = _option(0, "sam/usam/msam: perturb every chunk of M samples of a batch with its own "
                               "gradient and step with the chunks' mean gradient (M divides the batch size; 0 = the "
                               "whole batch, default)")
    norm: str = _option("2", "sam: the ball of the perturbation, 2 (tau g/||g||_2, default) or inf (tau sign(g))",
                        choices=NORMS)
    asam_eta: float = _option(0.01, "asam: the offset eta in T = |w| + eta on the weights (>= 0, default 0.01)")
    # model "deep": layers L (2 = the c23 network), and units of each hidden layer
    depth: int = _option(2, "model deep: layers L in [2, 8] (2 is the c23 network)")
    width: int = _option(10, "model deep with --depth >= 3: units of each hidden layer, in [1, 1024]")
    # docs/science.md §2.6: data and init sampled through their Gram matrix (Bartlett), at a cost independent of d
    dimension_free: bool = _option(False, "sample the noise vectors and the initial filters through their Gram "
                                   "matrix (Bartlett), exact in distribution at a cost independent of d "
                                   "(docs/science.md §2.6; not with model kou2023, asam or --norm inf)")
    # docs/science.md §5.7, the regime protocol: when given, sigma_0 = init_scale / (P sigma_p sqrt(d)) and
    # eta = noise_step 2 B m / ((P - 1) sigma_p^2 d) (the fields sigma_0 and eta then hold these values)
    init_scale: float | None = _option(None, "set sigma_0 = INIT_SCALE / (P sigma_p sqrt(d)): a fixed init scale "
                                       "across d (docs/science.md §5.7)", group="init")
    noise_step: float | None = _option(None, "set eta = NOISE_STEP 2 B m / ((P - 1) sigma_p^2 d): a fixed per-step "
                                       "noise memorisation across d (docs/science.md §5.7)", group="step")

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
        self._check_regime()            # sets sigma_0 and eta from the regime's scales: before the range check
        self._check_dimension_free()
        self._check_dtype_range()

    def _check_dtype_range(self) -> None:
        """Every real parameter (and the SAM radius they give) must be a finite number in the training dtype: 1e39
        is a valid float64 but becomes inf in float32, which would silently turn the run into NaNs."""
        import numpy as np   # not torch: a sweep's parent process validates every run without loading it

        big = float(np.finfo(self.dtype).max)   # the same as torch.finfo's for float32 and float64
        for name in _REAL_FIELDS:
            value = getattr(self, name)
            if value is not None and abs(value) > big:
                raise ConfigError(f"{name} must be at most {big:.4g} (the largest {self.dtype}) with dtype "
                                  f"{self.dtype}, got {value:g}")
        # the rules take norms of eps (sums of squares): a radius whose square overflows turns them into inf, and the
        # radius then no longer matters (1e30 and 1e36 gave bitwise the same float32 run)
        top = math.sqrt(big)
        if self.optimizer != "sgd" and not self.sam_radius <= top:
            name = "tau" if self.tau is not None else "c_tau"
            raise ConfigError(f"{name} must give a SAM radius (tau, or c_tau m sqrt(B) / (P sigma_p sqrt(d))) of at "
                              f"most {top:.4g} (the square root of the largest {self.dtype}: its square must be "
                              f"finite) with dtype {self.dtype}, got {self.sam_radius:g}")

    def _check_regime(self) -> None:
        """Derive sigma_0 and eta from the regime protocol's scales (docs/science.md §5.7) when they are given."""
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


# SimConfig field -> "int", "float", "bool" or "str" (its annotation; ``X | None`` counts as X)
FIELD_KINDS = {f.name: (f.type if isinstance(f.type, str) else f.type.__name__).replace(" ", "").replace("|None", "")
               for f in fields(SimConfig)}
_REAL_FIELDS = tuple(name for name, kind in FIELD_KINDS.items() if kind == "float")

# the table for the built-in rules (a snapshot: code that must see rules registered later calls the function)
OPTIMIZER_ONLY_FIELDS: dict[str, tuple[str, ...]] = optimizer_only_fields()


# Options that act only when another field has some values: field -> [(the other field, whether its value lets the
# option act, those values in words)]. With the optimizers' rule options (OPTIMIZER_ONLY_FIELDS, read off the
# registry) this is the one table of "no effect" rules: ``no_effect`` reads it for simulate and for a sweep's [base],
# variants and grid axes alike.
EFFECTIVE_WHEN: dict[str, list[tuple[str, Any, str]]] = {
    "lr_warmup": [("lr_schedule", lambda v: v == "linear_warmup_cosine", "linear_warmup_cosine")],
    "lr_step_gamma": [("lr_schedule", lambda v: v == "step", "step")],
    "lr_step_every": [("lr_schedule", lambda v: v == "step", "step")],
    "ascent_step": [("ascent_steps", lambda v: v >= 2, ">= 2")],   # the steps after the first
    "depth": [("model", lambda v: v == "deep", "deep")],
    "width": [("model", lambda v: v == "deep", "deep"), ("depth", lambda v: v >= 3, ">= 3")],   # hidden layers
}


def effect_conditions(name: str) -> list[tuple[str, Any, str]]:
    """Every condition under which option ``name`` has an effect (``EFFECTIVE_WHEN``, the optimizer's first)."""
    applies = optimizer_only_fields().get(name)
    first = [("optimizer", applies.__contains__, " / ".join(applies))] if applies else []
    return first + EFFECTIVE_WHEN.get(name, [])


def no_effect(name: str, value: Any, values_of) -> tuple[str, str, Any] | None:
    """Why option ``name`` = ``value``, set explicitly, has no effect: (the field that decides, the values it acts
    for, that field's value here), or None if it acts. ``values_of(field)``: the values the field takes where the
    option is set (one for a run; a sweep variant's grid values): the option acts if some value satisfies each of its
    conditions. A value equal to SimConfig's default is "no effect" either way and accepted (``--sam-steps none``
    for sgd)."""
    if value == getattr(SimConfig, name, object()):
        return None
    for other, acts, allowed in effect_conditions(name):
        values = list(values_of(other))
        if not any(acts(v) for v in values):
            return other, allowed, values[0] if len(values) == 1 else values
    return None


def no_effect_text(name: str, reason: tuple[str, str, Any], flags: bool = False) -> str:
    """``no_effect``'s reason in the words every caller uses (``flags``: the deciding field as a simulate flag)."""
    other, allowed, actual = reason
    shown = ", ".join(map(str, actual)) if isinstance(actual, list) else actual
    return f"{name} only applies to {'--' + other.replace('_', '-') if flags else other} {allowed}, not {shown}"


def check_effective(cfg: SimConfig, given: dict[str, Any], flags: bool = False) -> None:
    """Refuse an option of ``given`` (field -> value, set explicitly) that has no effect in ``cfg``, or that
    another one switches off: what ``simulate`` refuses, and what a caller of the Python API may check."""
    for name, value in given.items():
        reason = no_effect(name, value, lambda other: [getattr(cfg, other)])
        if reason:
            raise ConfigError(no_effect_text(name, reason, flags))
    for pair in overridden(given):
        name, other = ("--" + n.replace("_", "-") if flags else n for n in pair)
        raise ConfigError(f"{name} has no effect with {other} {given[pair[1]]} (it decides alone); give one of them")


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


def device_of(name: str, kinds: tuple[str, ...] = ("cpu", "cuda")):
    """Resolve ``device='auto'`` to cuda when present, else cpu; any other name must be a device of ``kinds``
    (the CNN trainer: cpu and cuda; the CIFAR pipeline also mps) that this machine has."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    forms = "'auto', 'cpu', 'cuda' or 'cuda:N'" + (" or 'mps'" if "mps" in kinds else "")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device must be {forms}, got {name!r}") from exc
    if dev.type not in kinds:
        raise ConfigError(f"device must be {forms}, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device must be 'auto' or 'cpu' here: {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device index must be in [0, {torch.cuda.device_count() - 1}], got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(f"device must be 'auto' or 'cpu' here: {name!r} requested but MPS is not available")
    return dev
