"""The configuration of one CIFAR run: ``CifarConfig`` (validated on construction), the presets, the default radii,
and the rule for what may change when a run is resumed."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields

import torch

from theory_sim.cifar.data import MEAN, NUM_CLASSES
from theory_sim.cifar.errors import ResumeMismatchError
from theory_sim.cifar.wrn import WideResNet
from theory_sim.config import ConfigError, check_choice, check_float, check_int, renamed_keys, warn_renamed
from theory_sim.sam import registry
from theory_sim.sam.optim import ASAM_SCOPES, BN_UPDATES, inf_rho

# the CIFAR pipeline's optimizers: the registry's rules with ``cifar=True`` (theory_sim.sam.registry)
OPTIMIZERS = registry.optimizers("cifar")
# default radius per (the rule's radius family ``Rule.default_rho``, dataset): SAM rho 0.05 / 0.1 [F21], ASAM 0.5 / 1.0
# [K21] (docs/science.md §8).
# These are L2 radii. --norm inf (sam_inf) defaults to the per-coordinate radius DEFAULT_RHO["sam"] / sqrt(D), D = the
# WRN's parameter count (``default_rho``): its perturbation rho_inf sign(g) then has the L2 size of SAM's (rho_inf *
# sqrt(D) = rho_2), where reusing 0.05 per coordinate would be an L2 step of ~300 on a WRN-28-10 (D = 36.5M).
DEFAULT_RHO = {"sam": {"cifar10": 0.05, "cifar100": 0.1, "digits": 0.05},
               "asam": {"cifar10": 0.5, "cifar100": 1.0, "digits": 0.5}}   # digits: CIFAR-10's (the package's choice)


def wrn_num_params(depth: int, width: int, dataset: str) -> int:
    """Parameter count of the run's WRN-depth-width (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = WideResNet(depth, width, NUM_CLASSES[dataset], in_channels=len(MEAN[dataset]))
    return sum(p.numel() for p in model.parameters())


def default_rho(optimizer: str, dataset: str, norm: str = "2", depth: int = 28, width: int = 10) -> float:
    """The radius a run gets when ``rho`` is not given: 0 for SGD, ``DEFAULT_RHO`` for the L2 rules, and for
    ``norm="inf"`` the per-coordinate radius with the same L2 size, ``inf_rho(DEFAULT_RHO["sam"][dataset], D)``
    (about 8.3e-6 / 1.7e-5 on a WRN-28-10 for CIFAR-10 / CIFAR-100)."""
    if optimizer == "sgd":
        return 0.0
    rho_2 = DEFAULT_RHO[registry.rule_of(optimizer, "2", "cifar").default_rho][dataset]
    return inf_rho(rho_2, wrn_num_params(depth, width, dataset)) if norm == "inf" else rho_2


# Presets fill the fields the user did not set on the command line.
PRESETS: dict[str, dict] = {
    # [F21] WRN-28-10: 200 epochs, batch 128 (PyTorch ports; the paper used 256), lr 0.1 cosine, Nesterov 0.9,
    # wd 5e-4, flip + pad-4 crop, rho 0.05 (C10) / 0.1 (C100) (docs/science.md §9.3)
    "f21": dict(depth=28, width=10, epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True,
                weight_decay=5e-4, label_smoothing=0.0, cutout=0, dropout=0.0),
    # a few seconds on a CPU: WRN-10-1, 1 epoch on 512 images
    "smoke": dict(depth=10, width=1, epochs=1, batch_size=64, lr=0.05, n_train=512, n_test=256,
                  sharpness_samples=64),
}

# Renamed fields, old -> new (docs/architecture.md "Vocabulary"): the CNN's names, one name per parameter
RENAMED = {"steps_k": "ascent_steps", "eta_a": "asam_eta"}

# Where and how to run, not what is computed: these may differ on --resume (e.g. another machine); the rest may not.
RUNTIME_FIELDS = ("data_dir", "device", "compile")


@dataclass(frozen=True)
class CifarConfig:
    """One CIFAR training run. Defaults = preset ``f21`` on CIFAR-10 with SAM. ``rho=None`` picks the paper's radius
    for the optimizer and dataset (0 for SGD; with ``norm="inf"`` a per-coordinate radius of the same L2 size, see
    ``default_rho``); ``ascent_steps=None`` is 2 ascent steps for msam, 1 otherwise; msam's ascent steps after the
    first have length ``ascent_step`` * rho (``SAM``'s ``ascent_lr``; default 1: rho).
    ``batch_size`` is global (split over DDP replicas); ``m_sharpness`` > 0 splits each replica's batch into chunks of
    that size, each perturbed with its own gradient (``bn_update``: BatchNorm's running statistics updated by every
    chunk, ``per_chunk``, or by the first chunk only, ``per_step``); ``asam_scope``: which tensors ASAM scales
    (``theory_sim.sam.optim.SAM``); ``n_train``/``n_test`` > 0 use only the first n images (quick
    runs)."""

    dataset: str = "cifar10"
    data_dir: str = "data"
    optimizer: str = "sam"
    rho: float | None = None
    norm: str = "2"  # SAM's dual norm: "2" or "inf" (sam / msam only)
    ascent_steps: int | None = None  # None: 2 for msam, 1 otherwise
    ascent_step: float = 1.0  # msam: each ascent step after the first has length ascent_step * rho
    m_sharpness: int = 0
    bn_update: str = "per_chunk"  # m-sharpness: BatchNorm running-stat updates "per_chunk" or "per_step"
    asam_eta: float = 0.01
    asam_scope: str = "weights"  # ASAM's T = |w| + asam_eta on: "weights" | "weights_and_bn" (official ASAM) | "all"
    label_noise: float = 0.0
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    depth: int = 28
    width: int = 10
    dropout: float = 0.0
    cutout: int = 0
    n_train: int = 0
    n_test: int = 0
    eval_batch_size: int = 1000
    sharpness: bool = False   # opt-in: the pass costs minutes on a CPU (many times a short run's training)
    sharpness_samples: int = 1024
    seed: int = 0
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, tuple(NUM_CLASSES))
        if not isinstance(self.data_dir, str):
            raise ConfigError(f"data_dir must be a path string, got {self.data_dir!r}")
        check_choice("optimizer", self.optimizer, registry.optimizers("cifar"))
        check_choice("norm", self.norm, ("2", "inf"))
        with_inf = tuple(o for o in registry.sam_family("cifar") if "inf" in registry.norms(o, "cifar"))
        if self.norm == "inf" and self.optimizer not in with_inf:
            raise ConfigError(f"norm='inf' is for optimizer {' or '.join(map(repr, with_inf))}, got "
                              f"optimizer={self.optimizer!r}")
        if self.rho is not None:  # an explicit radius is used as given
            check_float("rho", self.rho, lo=0.0)
            if self.rho and self.optimizer == "sgd":   # a stored sgd config holds its resolved radius 0
                raise ConfigError(f"rho only applies to a SAM-family optimizer, not sgd (got rho={self.rho:g}); drop "
                                  f"it or pick a SAM-family optimizer")
        if self.dataset == "digits" and self.data_dir != type(self).data_dir:
            raise ConfigError(f"data_dir has no effect with dataset 'digits' (scikit-learn ships it), got "
                              f"{self.data_dir!r}; drop it")
        if self.ascent_steps is None:
            object.__setattr__(self, "ascent_steps", 2 if self.multi_step else 1)
        check_int("ascent_steps", self.ascent_steps, lo=1, hi=100 if self.multi_step else 1)
        check_float("ascent_step", self.ascent_step, lo=0.0, lo_open=True)
        if self.ascent_step != 1.0 and not self.multi_step:
            raise ConfigError(f"ascent_step is for optimizer 'msam' (the length of its ascent steps), got "
                              f"optimizer={self.optimizer!r}")
        if self.ascent_step != 1.0 and self.ascent_steps == 1:
            raise ConfigError("ascent_step only applies to ascent_steps >= 2, not 1 (it is the length of the steps "
                              "after the first); drop it")
        check_int("m_sharpness", self.m_sharpness, lo=0, hi=self.batch_size if isinstance(self.batch_size, int)
                  else None)
        if self.m_sharpness and self.optimizer == "sgd":
            raise ConfigError("m_sharpness needs a SAM-family optimizer, got optimizer='sgd'")
        if self.m_sharpness and isinstance(self.batch_size, int) and self.batch_size % self.m_sharpness:
            raise ConfigError(f"m_sharpness must be 0 (the whole batch) or divide batch_size={self.batch_size} "
                              f"(every chunk holds m_sharpness samples), got {self.m_sharpness}")
        check_choice("bn_update", self.bn_update, BN_UPDATES)
        if self.bn_update != "per_chunk" and not self.m_sharpness:
            raise ConfigError(f"bn_update={self.bn_update!r} needs m_sharpness > 0 (one chunk per step otherwise)")
        check_float("asam_eta", self.asam_eta, lo=0.0)
        if self.asam_eta != type(self).asam_eta and self.optimizer != "asam":   # the class attribute: the default
            raise ConfigError(f"asam_eta only applies to optimizer 'asam', not {self.optimizer!r} (got "
                              f"asam_eta={self.asam_eta:g}); drop it")
        check_choice("asam_scope", self.asam_scope, ASAM_SCOPES)
        if self.asam_scope != "weights" and self.optimizer != "asam":
            raise ConfigError(f"asam_scope={self.asam_scope!r} is for optimizer 'asam', got "
                              f"optimizer={self.optimizer!r}")
        check_float("label_noise", self.label_noise, lo=0.0, hi=1.0)
        check_int("epochs", self.epochs, lo=1)
        check_int("batch_size", self.batch_size, lo=2)
        check_float("lr", self.lr, lo=0.0, lo_open=True)
        check_float("momentum", self.momentum, lo=0.0, hi=1.0, hi_open=True)
        check_choice("nesterov", self.nesterov, (True, False))
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum in (0, 1), got momentum=0")
        check_float("weight_decay", self.weight_decay, lo=0.0)
        check_float("label_smoothing", self.label_smoothing, lo=0.0, hi=1.0, hi_open=True)
        check_int("depth", self.depth, lo=10)
        if (self.depth - 4) % 6:
            raise ConfigError(f"depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {self.depth}")
        check_int("width", self.width, lo=1)
        if self.rho is None:  # resolve here (the inf-norm default needs depth and width) so config.json records it
            object.__setattr__(self, "rho", default_rho(self.optimizer, self.dataset, self.norm, self.depth,
                                                        self.width))
        check_float("dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)
        check_int("cutout", self.cutout, lo=0, hi=32)
        check_int("n_train", self.n_train, lo=0)
        check_int("n_test", self.n_test, lo=0)
        check_int("eval_batch_size", self.eval_batch_size, lo=1)
        check_choice("sharpness", self.sharpness, (True, False))
        check_int("sharpness_samples", self.sharpness_samples, lo=2)
        check_int("seed", self.seed, lo=0, hi=2**31 - 1)
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")
        check_choice("compile", self.compile, (True, False))

    @property
    def rule(self) -> str | None:
        """The rule of ``theory_sim.sam.optim.SAM`` this run uses (msam is its multi-step sam / sam_inf); None for
        sgd (plain torch SGD)."""
        rule = registry.rule_of(self.optimizer, self.norm, "cifar")
        return None if rule is None else rule.torch_rule

    # the old spellings (RENAMED), readable for one release with a FutureWarning
    @property
    def steps_k(self) -> int:
        warn_renamed("steps_k", "ascent_steps", "CifarConfig")
        return self.ascent_steps

    @property
    def eta_a(self) -> float:
        warn_renamed("eta_a", "asam_eta", "CifarConfig")
        return self.asam_eta

    @property
    def multi_step(self) -> bool:
        """Whether the optimizer takes several ascent steps (msam: ``ascent_steps``, ``ascent_step``)."""
        rule = registry.rule_of(self.optimizer, self.norm, "cifar")
        return rule is not None and rule.multi_step


_dataclass_init = CifarConfig.__init__


@functools.wraps(_dataclass_init)
def _init_accepting_old_names(self, *args, **kwargs) -> None:
    """``CifarConfig(steps_k=..., eta_a=...)`` as before the renames, with a warning (for one release)."""
    _dataclass_init(self, *args, **renamed_keys(kwargs, RENAMED, "CifarConfig"))


CifarConfig.__init__ = _init_accepting_old_names


def config_from_values(values: dict, source: str) -> CifarConfig:
    """A ``CifarConfig`` from a stored dict (config.json, a checkpoint); errors name ``source``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: the stored config is a {type(values).__name__}, not a dict")
    values = renamed_keys(values, RENAMED, source)   # a config written before the renames still loads
    unknown = sorted(set(values) - {f.name for f in fields(CifarConfig)})
    if unknown:
        raise ConfigError(f"{source}: unknown config fields {unknown} (written by another version of theory_sim?)")
    try:
        return CifarConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def resumed_config(stored: CifarConfig, requested: dict, source: str) -> CifarConfig:
    """The config a resumed run continues with: ``stored`` with the ``requested`` values applied. Only the
    ``RUNTIME_FIELDS`` may differ; any other requested change raises ``ResumeMismatchError`` listing each changed
    field as ``name: old -> new`` (a resumed run must compute what the original run would have)."""
    # compared before the new config is built: a change is reported as one (optimizer: sam -> sgd), not as the error
    # the stored values would raise with it (the stored radius with sgd)
    old_values = asdict(stored)
    new_values = {**old_values, **requested}
    changed = [f"{k}: {old_values[k]} -> {new_values[k]}" for k in old_values
               if k not in RUNTIME_FIELDS and old_values[k] != new_values[k]]
    if changed:
        raise ResumeMismatchError(
            f"--resume: the run in {source} was trained with other settings; changed: {'; '.join(changed)}. Drop "
            f"these flags to continue it unchanged, or use another --out for a new run (only "
            f"{', '.join('--' + k.replace('_', '-') for k in RUNTIME_FIELDS)} and --stop-after may change on --resume)")
    return CifarConfig(**new_values)
