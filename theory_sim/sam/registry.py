"""The SAM-family rule registry: the one list of the rules and what the rest of the package needs to know of each
(docs/architecture.md "Where to add a SAM-family rule"; the formulas are docs/science.md §3.2 and §8).

Everything that names a rule reads it from here: ``SimConfig`` (its optimizers, which options apply to which, the
rule the trainer applies, m-sharpness), ``CifarConfig`` (its optimizers, the torch optimizer's rule, the default
radius), ``cnn.ensemble`` (which rules coefficient space can apply), ``cnn.rules`` (one function per rule),
``sam.optim`` / ``sam.perturbation`` (the rules of the torch optimizer) and the CLI choices of ``simulate``,
``cifar`` and a sweep spec. Adding a rule is one ``Rule`` entry below plus its formula (a function in
``cnn/rules.py``, and a branch of ``sam.perturbation.perturbation`` if the CIFAR optimizer should have it).

A *rule* is what a trainer dispatches on (``SimConfig.rule``: ``sam``, ``sam_inf``, ``usam``, ...). An *optimizer*
is what a user writes (``optimizer = "sam"``, ``norm = "inf"``): the rule of an optimizer is the entry whose
``optimizer`` and ``norm`` match. This module imports nothing of the package (config.py imports it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Rule:
    """One SAM-family rule.

    name: the rule the trainers dispatch on (``SimConfig.rule``, ``cnn.rules.RULE_FUNCTIONS``).
    optimizer: the ``optimizer`` value that selects it (with ``norm``).
    norm: the ``norm`` value that selects it ("2", or "inf" for the L_inf variant).
    in_span: eps stays in the span of the data basis (a combination of gradients), so the CNN's coefficient space
        can apply it; False: eps depends on W coordinate-wise (weight space only, ``cnn.ensemble.WeightEnsemble``).
    options: the SimConfig option fields (besides the radius ones, ``tau``, ``c_tau``, ``sam_steps``, which every
        rule reads) that have an effect for this optimizer; any other option is refused when set for it.
    cnn: the two-layer CNN trainer has it (``SimConfig.optimizer``).
    torch_rule: the rule of the torch optimizer ``theory_sim.sam.optim.SAM`` it is (None: not there): msam is the
        optimizer's multi-step ``sam`` / ``sam_inf``.
    cifar: the CIFAR pipeline offers it (``CifarConfig.optimizer`` with this ``norm``).
    multi_step: takes several projected ascent steps (``ascent_steps``).
    default_rho: the CIFAR radius family (a key of ``cifar.config.DEFAULT_RHO``): "sam" or "asam".
    """

    name: str
    optimizer: str
    norm: str = "2"
    in_span: bool = True
    options: tuple[str, ...] = ()
    cnn: bool = True
    torch_rule: str | None = None
    cifar: bool = False
    multi_step: bool = False
    default_rho: str = "sam"


# The radius options every SAM-family optimizer reads (none of them does anything for sgd)
RADIUS_OPTIONS = ("tau", "c_tau", "sam_steps")

# The order is the one an ensemble applies its rules in (cnn.rules.perturbed_gradient) and of --optimizer's choices.
_BUILTIN = (
    Rule("sam", "sam", options=("m_sharpness", "norm"), torch_rule="sam", cifar=True),
    Rule("usam", "usam", options=("m_sharpness",)),
    Rule("msam", "msam", options=("ascent_steps", "ascent_step", "m_sharpness"), torch_rule="sam", cifar=True,
         multi_step=True),
    Rule("randsam", "randsam", torch_rule="randsam", cifar=True),
    # the L_inf variant of sam: sign(g) leaves the span (eps depends on W coordinate-wise)
    Rule("sam_inf", "sam", norm="inf", in_span=False, options=("m_sharpness", "norm"), torch_rule="sam_inf",
         cifar=True),
    Rule("asam", "asam", in_span=False, options=("asam_eta",), torch_rule="asam", cifar=True, default_rho="asam"),
    # the CIFAR optimizer also runs multi-step SAM in the L_inf ball (its rule sam_inf with ascent_steps > 1); the
    # CNN's msam reads no norm
    Rule("msam_inf", "msam", norm="inf", in_span=False, options=("ascent_steps", "ascent_step", "m_sharpness"),
         cnn=False, torch_rule="sam_inf", cifar=True, multi_step=True),
)
RULES: dict[str, Rule] = {r.name: r for r in _BUILTIN}


@contextlib.contextmanager
def registered(rule: Rule) -> Iterator[Rule]:
    """Within the block, ``rule`` is registered (for tests: every consumer must pick up a new entry)."""
    if rule.name in RULES:
        raise ValueError(f"rule {rule.name!r} is registered already")
    RULES[rule.name] = rule
    try:
        yield rule
    finally:
        del RULES[rule.name]


def rules(*, cnn: bool | None = None, cifar: bool | None = None, in_span: bool | None = None) -> tuple[str, ...]:
    """The rule names (registry order), filtered by the flags given."""
    return tuple(r.name for r in RULES.values()
                 if (cnn is None or r.cnn == cnn) and (cifar is None or r.cifar == cifar)
                 and (in_span is None or r.in_span == in_span))


def optimizers(trainer: str = "cnn") -> tuple[str, ...]:
    """The ``optimizer`` values of ``trainer`` ("cnn": SimConfig, "cifar": CifarConfig): sgd, then the SAM family."""
    names = []
    for r in RULES.values():
        if (r.cnn if trainer == "cnn" else r.cifar) and r.optimizer not in names:
            names.append(r.optimizer)
    return ("sgd", *names)


def sam_family(trainer: str = "cnn") -> tuple[str, ...]:
    return optimizers(trainer)[1:]


def norms(optimizer: str, trainer: str = "cnn") -> tuple[str, ...]:
    """The ``norm`` values ``optimizer`` has a rule for."""
    return tuple(r.norm for r in RULES.values() if r.optimizer == optimizer
                 and (r.cnn if trainer == "cnn" else r.cifar))


def rule_of(optimizer: str, norm: str = "2", trainer: str = "cnn") -> Rule | None:
    """The rule ``optimizer`` with ``norm`` selects (None for sgd). A norm the optimizer has no rule for (msam's
    "inf" in the CNN, where msam reads no norm) selects its norm "2" rule."""
    if optimizer == "sgd":
        return None
    found = {r.norm: r for r in RULES.values() if r.optimizer == optimizer
             and (r.cnn if trainer == "cnn" else r.cifar)}
    return found.get(norm, found["2"])


def torch_rules(*, multi_step: bool | None = None) -> tuple[str, ...]:
    """The rules of the torch optimizer (``theory_sim.sam.optim.SAM``, ``theory_sim.sam.perturbation``);
    ``multi_step=True``: those it runs with several ascent steps."""
    out = []
    for r in RULES.values():
        if r.torch_rule is not None and r.torch_rule not in out and (multi_step is None or r.multi_step == multi_step):
            out.append(r.torch_rule)
    return tuple(out)


def option_fields() -> dict[str, tuple[str, ...]]:
    """SimConfig option field -> the CNN optimizers it has an effect for (``config.OPTIMIZER_ONLY_FIELDS``)."""
    family = sam_family("cnn")
    table: dict[str, list[str]] = {name: list(family) for name in RADIUS_OPTIONS}
    for r in RULES.values():
        if not r.cnn:
            continue
        for name in r.options:
            table.setdefault(name, [])
            if r.optimizer not in table[name]:
                table[name].append(r.optimizer)
    return {name: tuple(opts) for name, opts in table.items()}


def optimizers_with(option: str, trainer: str = "cnn") -> tuple[str, ...]:
    """The optimizers of ``trainer`` that read ``option`` (e.g. ``m_sharpness``: sam, usam, msam)."""
    out = []
    for r in RULES.values():
        if (r.cnn if trainer == "cnn" else r.cifar) and option in r.options and r.optimizer not in out:
            out.append(r.optimizer)
    return tuple(out)
