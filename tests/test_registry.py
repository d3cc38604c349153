"""The SAM-family rule registry (theory_sim.sam.registry) is the one list of rules: every consumer agrees with it,
and a rule registered later is picked up by every consumer that validates or dispatches on rule names."""
from __future__ import annotations

import argparse

import pytest

from theory_sim.cifar.config import CifarConfig, default_rho
from theory_sim.cnn import rules as cnn_rules
from theory_sim.cnn.ensemble import Ensemble, WeightEnsemble, choose_state
from theory_sim.cnn.simulate_verb import add_training_arguments
from theory_sim.config import OPTIMIZER_ONLY_FIELDS, OPTIMIZERS, ConfigError, SimConfig, ignored_parameters
from theory_sim.sam import perturbation, registry
from theory_sim.sam.registry import Rule

SMALL = dict(d=20, n=4, batch_size=2, m=2, epochs=1, n_test=0, n_mc=100, trajectory_mc=0)


def test_builtin_rules_are_todays_lists():
    # the lists the consumers declared before the registry, which the registry must reproduce
    assert OPTIMIZERS == ("sgd", "sam", "usam", "msam", "randsam", "asam")
    assert set(registry.optimizers("cifar")) == {"sgd", "sam", "asam", "randsam", "msam"}
    assert Ensemble.supported_rules() == ("sam", "usam", "msam", "randsam")
    assert WeightEnsemble.supported_rules() == ("sam", "usam", "msam", "randsam", "sam_inf", "asam")
    assert set(perturbation.RULES) == {"sam", "sam_inf", "asam", "randsam"}
    assert set(cnn_rules.RULE_FUNCTIONS) == set(registry.rules(cnn=True))
    assert OPTIMIZER_ONLY_FIELDS == {
        "tau": OPTIMIZERS[1:], "c_tau": OPTIMIZERS[1:], "sam_steps": OPTIMIZERS[1:], "ascent_steps": ("msam",),
        "ascent_step": ("msam",), "m_sharpness": ("sam", "usam", "msam"), "norm": ("sam",), "asam_eta": ("asam",)}
    assert list(OPTIMIZER_ONLY_FIELDS) == ["tau", "c_tau", "sam_steps", "ascent_steps", "ascent_step", "m_sharpness",
                                           "norm", "asam_eta"]   # SimConfig's field order, as before


def test_rule_of_optimizer_and_norm():
    rule = {(o, n): SimConfig(optimizer=o, norm=n).rule for o in OPTIMIZERS for n in ("2", "inf")}
    assert rule[("sgd", "2")] is None and rule[("sam", "2")] == "sam" and rule[("sam", "inf")] == "sam_inf"
    assert rule[("msam", "inf")] == "msam" and rule[("usam", "inf")] == "usam"  # the CNN's msam reads no norm
    cifar = {(o, n): CifarConfig(optimizer=o, norm=n).rule for o in ("sam", "msam") for n in ("2", "inf")}
    assert cifar == {("sam", "2"): "sam", ("msam", "2"): "sam", ("sam", "inf"): "sam_inf", ("msam", "inf"): "sam_inf"}
    assert CifarConfig(optimizer="sgd").rule is None and CifarConfig(optimizer="asam").rule == "asam"
    with pytest.raises(ConfigError, match="norm='inf' is for optimizer 'sam' or 'msam'"):
        CifarConfig(optimizer="asam", norm="inf")
    # the span flag decides the representation
    assert choose_state([SimConfig(optimizer="asam", **SMALL)]) == "weights"
    assert choose_state([SimConfig(optimizer="usam", **SMALL)]) == "coefficients"
    # the radius family decides CIFAR's default radius
    assert default_rho("asam", "cifar10") == 0.5 and default_rho("randsam", "cifar100") == 0.1


def test_a_registered_rule_reaches_every_consumer():
    fake = Rule("fakesam", "fakesam", in_span=False, options=("asam_eta", "m_sharpness"), cifar=True,
                torch_rule="sam", default_rho="asam")
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        SimConfig(optimizer="fakesam")
    with registry.registered(fake):
        cfg = SimConfig(optimizer="fakesam", m_sharpness=1, **SMALL)
        assert cfg.rule == "fakesam" and cfg.chunk_size == 1
        assert "asam_eta" not in ignored_parameters("fakesam") and "norm" in ignored_parameters("fakesam")
        assert "tau" not in ignored_parameters("fakesam")
        assert choose_state([cfg]) == "weights"
        assert "fakesam" not in Ensemble.supported_rules() and "fakesam" in WeightEnsemble.supported_rules()
        p = argparse.ArgumentParser()
        add_training_arguments(p)
        assert p.parse_args(["--optimizer", "fakesam"]).optimizer == "fakesam"
        assert CifarConfig(optimizer="fakesam").rule == "sam" and CifarConfig(optimizer="fakesam").rho == 0.5
        with pytest.raises(ValueError, match="already"):
            with registry.registered(fake):
                pass
    with pytest.raises(ConfigError, match="optimizer must be one of"):   # unregistered again
        SimConfig(optimizer="fakesam")
    assert "fakesam" not in registry.RULES
