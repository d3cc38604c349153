"""Every check ``verify`` makes, as a declared claim: its source, the variants it covers, the domain where its
assumptions hold, its estimand, its predicted region and one verdict rule (docs/science.md §5.6, the table there).

A claim's source is a theorem of a paper (quoted in docs/papers.md), a derivation of this package (docs/science.md
§6) or an exploratory comparison, which predicts nothing and gets no verdict. Its domain is a tuple of predicates
computed per cell from the cell's parameters (``DOMAIN``); cells outside it are reported beside the claim, never
mixed into its estimate. The verdict rule is the same for every claim (``verdict``):

- consistent: the interval lies inside the predicted region (prediction +- tolerance, or a one-sided region);
- contradicted: the interval lies outside it;
- inconclusive: it straddles an edge (``seeds_to_decide`` says how many seeds would decide it);
- not applicable: no cell (or too few) inside the domain.

Adding a claim is one ``Claim`` entry in ``CLAIMS`` plus the code that computes its estimand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from theory_sim.intervals import Interval, seeds_to_decide

VERDICTS = ("consistent", "contradicted", "inconclusive", "not applicable")

# Conventions of the domain predicates (docs/science.md §5.6): the theorems' constants C are unknown, so C = 1;
# their statements hold with probability 1 - delta, read at delta = 0.1.
DELTA = 0.1
INIT_SCALE_MAX = 1.0       # sigma_0 P sigma_p sqrt(d): the theorems ask sigma_0 <~ 1 / (P sigma_p sqrt(d))
STEP_MEMORISATION_MAX = 10.0   # eta (P-1) sigma_p^2 d / (2 B m): noise one step writes into a batch sample
C_TAU_RANGE = (0.1, 10.0)  # the radius scale tau = c_tau m sqrt(B) / (P sigma_p sqrt(d)) of docs/science.md §3.2,
#                            read as Theta(1): c_tau within a factor 10 of 1 (0.01 is SGD, 100 is not a small radius)
EARLY_GAMMA = 0.25         # the early-phase window of the ratio law (docs/science.md §6.1)


# the run parameters the domain predicates and the variant filters read
CELL_PARAMETERS = ("d", "n", "P", "sigma_p", "m", "sigma_0", "eta", "batch_size", "c_tau", "tau", "depth")
VARIANT_PARAMETERS = ("optimizer", "model", "depth", "lr_schedule", "ascent_steps", "m_sharpness", "norm",
                      "sam_steps")


def _col(cells: pd.DataFrame, name: str, default=np.nan) -> pd.Series:
    return cells[name].astype(float) if name in cells else pd.Series(default, index=cells.index, dtype=float)


@dataclass(frozen=True)
class Predicate:
    """A domain condition on a cell: its text (with the reason for its threshold) and its test."""
    name: str
    text: str
    test: Callable[[pd.DataFrame], pd.Series]

    def __call__(self, cells: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.test(cells), dtype=bool)


def _dimension(c):
    return _col(c, "d") >= _col(c, "n") ** 2 * np.log(_col(c, "n") * _col(c, "m") / DELTA)


def init_scale(c):
    return _col(c, "sigma_0") * _col(c, "P") * _col(c, "sigma_p") * np.sqrt(_col(c, "d"))


def step_memorisation(c):
    return (_col(c, "eta") * (_col(c, "P") - 1) * _col(c, "sigma_p") ** 2 * _col(c, "d")
            / (2 * _col(c, "batch_size") * _col(c, "m")))


def _radius(c):
    ct = _col(c, "c_tau")
    has_tau = _col(c, "tau").notna() if "tau" in c else pd.Series(False, index=c.index)
    return ~has_tau & (ct >= C_TAU_RANGE[0]) & (ct <= C_TAU_RANGE[1])


DOMAIN: dict[str, Predicate] = {p.name: p for p in (
    Predicate("dimension", f"d >= n^2 log(n m / delta), delta = {DELTA} (the theorems' d >= C n^2 log(nm/delta), "
              "C = 1)", _dimension),
    Predicate("small_init", f"sigma_0 P sigma_p sqrt(d) <= {INIT_SCALE_MAX:g} (the theorems' sigma_0 <~ "
              "1/(P sigma_p sqrt(d)))", lambda c: init_scale(c) <= INIT_SCALE_MAX),
    Predicate("small_step", f"eta (P-1) sigma_p^2 d / (2 B m) <= {STEP_MEMORISATION_MAX:g} (one step writes at most "
              "this much noise into a sample; beyond it the sample is memorised in its first step, no early phase)",
              lambda c: step_memorisation(c) <= STEP_MEMORISATION_MAX),
    Predicate("two_layer", "the two-layer network (depth 2): the sign invariants of §6.5 are derived for it; a hidden "
              "layer with signed weights breaks them (docs/science.md §2.5)",
              lambda c: (_col(c, "depth", 2.0).fillna(2.0) <= 2)),
    Predicate("radius_scale", f"{C_TAU_RANGE[0]:g} <= c_tau <= {C_TAU_RANGE[1]:g} and no absolute tau (the radius "
              "scale of [C23], docs/science.md §3.2, within a factor 10)", _radius),
)}


@dataclass(frozen=True)
class Claim:
    """One declared claim. ``region`` is the predicted region (low, high) of the estimand (None: exploratory, no
    verdict); ``tolerance`` says how the region's width was derived; ``covers`` picks the variants (a row of a
    variant table: optimizer, model, depth, lr_schedule, ascent_steps, m_sharpness, norm, ...)."""
    name: str
    statement: str
    source: str
    kind: str                 # theorem | derivation | exploratory
    section: str              # where docs/science.md derives or quotes it
    variants: str
    covers: Callable[[dict], bool]
    domain: tuple[str, ...]
    estimand: str
    prediction: str
    tolerance: str
    test: str
    extra: dict = field(default_factory=dict)

    @property
    def exploratory(self) -> bool:
        return self.kind == "exploratory"

    def in_domain(self, cells: pd.DataFrame) -> np.ndarray:
        ok = np.ones(len(cells), dtype=bool)
        for name in self.domain:
            ok &= DOMAIN[name](cells)
        return ok

    def domain_text(self) -> str:
        return "; ".join(DOMAIN[n].text for n in self.domain) or "every cell"


def cell_parameters(df: pd.DataFrame, dims) -> pd.DataFrame:
    """One row per (label, *dims) cell with the run parameters the claims' domains read (first run of the cell)."""
    cols = [c for c in CELL_PARAMETERS if c in df.columns and c not in dims]
    return df.groupby(["label", *dims], sort=True)[cols].first().reset_index()


def variant_parameters(df: pd.DataFrame) -> dict[str, dict]:
    """label -> the parameters that say which claims cover the variant (its first run's)."""
    cols = [c for c in VARIANT_PARAMETERS if c in df.columns]
    return {lab: g.iloc[0].to_dict() for lab, g in df.groupby("label", sort=True)[cols]}


def _get(v, key, default=None):
    x = v.get(key, default)
    return default if x is None or (isinstance(x, float) and np.isnan(x)) else x


def plain(v: dict) -> bool:
    """The two-layer network of [C23]/[K23] with a constant learning rate (depth 2, no schedule)."""
    return (_get(v, "depth", 2) in (2, 2.0) and _get(v, "lr_schedule", "constant") == "constant"
            and _get(v, "model", "c23") in ("c23", "kou2023", "deep"))   # deep at depth 2 is the c23 network


def is_sgd(v: dict) -> bool:
    return _get(v, "optimizer") == "sgd" and plain(v)


def is_sam(v: dict) -> bool:
    """[C23]'s SAM: one normalised ascent step on the whole batch (not multi-step, m-sharpness, Rand-SAM, ASAM)."""
    return (_get(v, "optimizer") == "sam" and plain(v) and str(_get(v, "norm", "2")) == "2"
            and _get(v, "m_sharpness", 0) in (0, 0.0))


def is_sam_family(v: dict) -> bool:
    return _get(v, "optimizer", "sgd") != "sgd"


def _any(v: dict) -> bool:
    return True


SLOPE_TOLERANCE = ("grid: the ||mu|| grid's log-spacing h over the fitted dimension's log-range (interpolation "
                   "bias); logs: one factor log(x) in the condition moves the slope by 1/(k log x) at the grid's "
                   "geometric mean x, k the power of ||mu|| in the condition")
CLAIMS: dict[str, Claim] = {c.name: c for c in (
    Claim("sgd_boundary_slope", "SGD's benign/harmful boundary follows n ||mu||^4 ~ d P^4 sigma_p^4: log-log slopes "
          "of ||mu||* +1/4 in d, -1/4 in n, +1 in P and sigma_p", "[K23] Thm 4.3, [C23] SGD theorem", "theorem",
          "§5.2", "plain SGD on the two-layer network (constant step)", is_sgd,
          ("dimension", "small_init", "small_step", "two_layer"),
          "least-squares slope of log ||mu||* on log of the dimension over the in-domain cells",
          "+1/4 (d), -1/4 (n), +1 (P, sigma_p)", SLOPE_TOLERANCE,
          "jackknife-t over seeds (docs/science.md §5.6)", {"slopes": {"d": 0.25, "n": -0.25, "P": 1.0,
                                                                       "sigma_p": 1.0}, "mu_power": 4}),
    Claim("sam_boundary_slope", "SAM's boundary is flat in d: benign once ||mu|| >= Omega~(1)", "[C23] SAM theorem",
          "theorem", "§5.3", "[C23]'s SAM (one ascent step, radius scale of §3.2; SAM throughout or then SGD)",
          is_sam, ("dimension", "small_init", "small_step", "radius_scale", "two_layer"),
          "least-squares slope of log ||mu||* on log d over the in-domain cells", "0 (d)", SLOPE_TOLERANCE,
          "jackknife-t over seeds", {"slopes": {"d": 0.0}, "mu_power": 2}),
    Claim("sam_below_sgd", "SAM is benign where SGD is harmful: SAM's boundary lies below SGD's",
          "[C23] SGD and SAM theorems together", "theorem", "§5.3",
          "[C23]'s SAM against plain SGD, same cells and seeds", is_sam, ("dimension", "small_init", "small_step",
                                                                          "radius_scale", "two_layer"),
          "mean over the in-domain d of log(||mu||*_SGD / ||mu||*_SAM) (censored boundaries at the grid's ends)",
          "> 0", "none (a sign)", "jackknife-t over seeds"),
    Claim("ratio_law_exponents", "Early on, Gamma/Rho ~ (1-2p) n ||mu||^2 / ((P-1) sigma_p^2 d): exponents +2 "
          "(||mu||), -1 (d), +1 (n), -2 (sigma_p), -1 (P-1)", "this package's derivation", "derivation", "§6.1",
          "plain SGD", is_sgd, ("small_init", "small_step", "two_layer"),
          "joint log-log regression of the measured ratio at the end of epoch 1 on the swept dimensions (early cells: "
          f"seed-mean Gamma <= {EARLY_GAMMA})", "the exponents", "+-0.1: the law is first order in |l'| - 1/2",
          "jackknife-t over seeds", {"slopes": {"mu_norm": 2.0, "d": -1.0, "n": 1.0, "sigma_p": -2.0, "P-1": -1.0,
                                               "eta": 0.0, "batch_size": 0.0, "m": 0.0}, "tolerance": 0.1}),
    Claim("ratio_law_constant", "The ratio law's constant: measured / predicted = 1, with the realised flip "
          "fraction p-hat of each run in (1 - 2p)", "this package's derivation", "derivation", "§6.1", "plain SGD",
          is_sgd, ("small_init", "small_step", "two_layer"),
          "geometric mean over the in-domain early cells of measured / predicted (one pooled estimate; the cells "
          "share the seeds' data draws), with the spread of the per-d constants", "1",
          "[0.8, 1.25]: first order in |l'| - 1/2, which the window keeps within about 12% of 1/2",
          "jackknife-t over seeds", {"band": (0.8, 1.25)}),
    Claim("sam_amplification", "SAM multiplies Gamma/Rho over SGD's during its phase, by >= 2 where SGD is harmful",
          "this package's derivation of [C23] Sec. 4", "derivation", "§6.4", "[C23]'s SAM against plain SGD",
          is_sam, ("small_init", "small_step", "radius_scale", "two_layer"),
          "the smallest over SGD-harmful in-domain cells of SAM's Gamma/Rho over SGD's (geometric mean over "
          "SAM's logged steps)", ">= 2", "none (an order-of-magnitude threshold)", "jackknife-t over seeds"),
    Claim("noise_switched_off", "SAM's ascent switches noise terms off: its update-point noise-active fraction lies "
          "below SGD's", "[C23] Sec. 4 (mechanism)", "derivation", "§6.4", "[C23]'s SAM against plain SGD", is_sam,
          ("small_init", "small_step", "radius_scale", "two_layer"),
          "mean over in-domain cells and SAM's logged steps of SAM's fraction minus SGD's", "< 0", "none (a sign)",
          "jackknife-t over seeds"),
    Claim("collapse", "SGD's test error is one function of x = n ||mu||^4 / (d (P-1)^4 sigma_p^4)",
          "this package's derivation", "derivation", "§6.2", "plain SGD", is_sgd, ("small_init", "small_step", "two_layer"),
          "residual RMS around the best decreasing fit in x over that in ||mu|| alone", "<= 0.7",
          "x must remove at least 30% of the spread ||mu|| leaves", "jackknife-t over seeds"),
    Claim("invariants", "rhobar never decreases and stays >= 0; rhounder never increases and stays <= 0",
          "this package's derivation (exact)", "derivation", "§6.5", "every variant", _any, ("two_layer",),
          "violations beyond round-off on every logged step of every run", "= 0", "none (exact)",
          "a count: no interval"),
    Claim("late_log_growth", "After fitting, rhobar grows logarithmically: rhobar ~ a + b log(t + t0)",
          "[K23] late phase, docs/science.md §6.6", "derivation", "§6.6", "plain SGD", is_sgd,
          ("small_init", "small_step", "two_layer"),
          "Box-Cox exponent k of rhobar_max = a + b ((t + t0)^k - 1)/k fitted per run (log growth: k = 0), mean "
          "over in-domain cells", "0", "+-0.05, half the slowest power it must tell apart from log (t^0.1)",
          "jackknife-t over seeds", {"tolerance": 0.05}),
    Claim("late_rhounder_small", "rhounder stays small next to rhobar", "[K23] bound on |rhounder|, "
          "docs/science.md §6.6", "derivation", "§6.6", "plain SGD", is_sgd, ("small_init", "small_step", "two_layer"),
          "mean over in-domain cells of max |rhounder| / max rhobar at the last step", "<= 0.5",
          "none (an order-of-magnitude threshold)", "jackknife-t over seeds"),
    Claim("paired_difference", "variant - baseline test error on the same seeds", "exploratory (no prediction)",
          "exploratory", "§5.4", "every variant against sgd and sam", _any, (),
          "mean over (cell, seed) pairs of the test-error difference", "none", "none", "t-interval over seeds"),
    Claim("slope_outside_domain", "the boundary slope over every located cell, in and out of the domain",
          "exploratory (no prediction)", "exploratory", "§5.4", "every variant", _any, (),
          "least-squares slope of log ||mu||* over all located cells", "none", "none", "jackknife-t over seeds"),
)}


def verdict(interval: Interval, region: tuple[float, float] | None) -> tuple[str, int | None]:
    """The one verdict rule: (verdict, seeds that would decide an inconclusive one). ``region`` (low, high) may be
    one-sided (+-inf); None is an exploratory estimate (verdict 'exploratory')."""
    if region is None:
        return "exploratory", None
    if not interval.finite:   # no estimate, or no interval (undefined without one of the seeds)
        return "inconclusive", None
    lo, hi = region
    if lo <= interval.low and interval.high <= hi:
        return "consistent", None
    if interval.high < lo or interval.low > hi:
        return "contradicted", None
    return "inconclusive", seeds_to_decide(interval, region)


def predicted_slope(optimizer: str, dim: str) -> float | None:
    """The boundary slope a theorem predicts for an optimizer along a dimension (None: no theorem predicts one)."""
    claim = {"sgd": CLAIMS["sgd_boundary_slope"], "sam": CLAIMS["sam_boundary_slope"]}.get(optimizer)
    return None if claim is None else claim.extra["slopes"].get(dim)


def claim_row(claim: Claim, variant: str, interval: Interval, region, scope: str = "in domain",
              applicable: bool = True, **info) -> dict:
    """One line of a report: a claim (or an exploratory estimate: region None) for one variant and slice, with
    its interval and verdict; ``applicable`` False: no cell (or too few) inside the claim's domain."""
    word, more = verdict(interval, region) if applicable else ("not applicable", None)
    return dict(claim=claim.name, source=claim.source, kind=claim.kind, variant=variant, scope=scope,
                estimate=float(interval.estimate), ci_low=float(interval.low), ci_high=float(interval.high),
                se=float(interval.se), seeds=int(interval.units),
                region=None if region is None else [float(region[0]), float(region[1])], verdict=word,
                seeds_to_decide=more, **info)


def slope_tolerance(claim: Claim, mu_grid_step: float, values: np.ndarray) -> float:
    """A slope's tolerance (SLOPE_TOLERANCE): h / log-range + 1 / (k log of the geometric mean), h the ||mu||
    grid's log-spacing and k the power of ||mu|| in the claim's condition."""
    v = np.log(np.asarray(values, dtype=float))
    span = v.max() - v.min()
    if span <= 0:
        return float("nan")
    return float(mu_grid_step / span + 1.0 / (claim.extra.get("mu_power", 4) * max(v.mean(), 1.0)))
