"""The memory of one CNN ensemble, estimated from its configs alone (no torch: a sweep's parent process checks every
chunk with it before its workers start).

``estimate_memory_bytes(configs, representation)`` adds up the arrays an ensemble of R runs (one ``simulate``
command, or one sweep chunk) allocates, from the shapes of its layout (theory_sim.cnn.layout): s = bytes per element of
the dtype, U = distinct data sets (runs sharing seed, sigma_p and p share one), c = 1 + n K basis columns (K = 1
shared noise vector, or P - 1 independent ones), M = 2 m filters, T = logged steps, S = total steps:

  data basis         U c d (8 + s)        drawn in float64 by numpy, then cast (float64: shared, 8 only);
                     + U c^2 s            the Gram matrix (coefficient space)
  weights            R M d (8 + s) + k R M d s    W0 (drawn in float64), k = 4 dense copies at the end (W, the
                     weights normalised, the reconstruction and its difference); weight space keeps W and the
                     previous W besides, and builds dense gradients and perturbations every step (k = 8)
  coefficients       R C M c s (3 + 6)    A, its previous value and P0, and ~6 step temporaries (projections,
                     A G, gradients) for each of the C m-sharpness chunks
  batch schedule     8 U E n              a permutation per epoch E and data set (B < n only)
  trajectory log     R (S + 1)            which steps a run logs (bytes);
                     + 3 T R M c s        gamma/rho snapshots, stacked, and coefficients.npz in memory
                     + 2 * 30 * 8 T R     the trajectory table
  Monte-Carlo draws  R t K M s 3         the trajectory's t = min(trajectory_mc, n_mc) draws, their product with the
                                          noise factor and a margin for the temporaries after it (measured: 2x);
                     r n_mc K M s 3       the final estimate, r = min(R, 32) runs at a time (counted as the larger)
  held-out test set  r' c' d (8 + s)      r' = min(R, 8) runs' n_test points at a time, c' = 1 + n_test K,
                     + 3 r' M c' s        their projections and pre-activations
  rand-sam draws     R min(64 M c, 2^18) s  (coefficient space) or 2 R M d s (weight space), Rand-SAM runs only

The peak is taken as the persistent arrays (data basis, weights, coefficients, schedule, trajectory log) plus the
largest of the end-of-run phases (Monte-Carlo draws, held-out test set); the Python/torch process itself (~0.3 GB)
is not counted (MemAvailable already excludes it). tests/test_resources.py checks the estimate against the peak RSS
growth of real runs, each dominated by another term: within a factor of 2 either way (``ESTIMATE_FACTOR``).

``check_resources`` adds the step bound and refuses, through ``theory_sim.resources``, what does not fit.
"""
from __future__ import annotations

from theory_sim.cnn.layout import choose_state, group_size
from theory_sim.config import SimConfig
from theory_sim.resources import MemoryEstimate, check_memory, check_steps

TABLE_COLUMNS = 30           # columns of a trajectory row, about

# the parameters each term grows with (named in a refusal)
PART_PARAMS = {
    "data basis": ("d", "n", "P", "noise_patches", "runs"),
    "weights": ("d", "m", "runs"),
    "coefficients": ("m", "n", "P", "m_sharpness", "runs"),
    "batch schedule": ("epochs", "n", "runs"),
    "trajectory log": ("epochs", "n", "batch_size", "log_every", "log_points", "m", "runs"),
    "Monte-Carlo draws": ("n_mc", "trajectory_mc", "m", "P", "runs"),
    "held-out test set": ("n_test", "d", "P", "m"),
    "rand-sam draws": ("m", "n", "d", "runs"),
}
PERSISTENT = ("data basis", "weights", "coefficients", "batch schedule", "trajectory log", "rand-sam draws")
END_PHASES = ("Monte-Carlo draws", "held-out test set")


def logged_steps_bound(cfg: SimConfig) -> int:
    """At most how many steps ``theory_sim.cnn.train.log_steps`` logs (without building the list)."""
    total = cfg.total_steps
    if cfg.log_points:
        return min(cfg.log_points, total + 1) + 4
    return total // cfg.log_every + 2


def estimate_memory_bytes(configs: list[SimConfig], representation: str = "auto", *, log: bool = True,
                          track: bool = True, heldout: bool = True) -> MemoryEstimate:
    """Peak bytes one ensemble of ``configs`` allocates (see the module docstring for the formula per term).
    ``representation``: "auto" (as ``make_ensemble`` picks), "coefficients" or "weights"; ``log``/``track``/
    ``heldout`` as passed to ``train_ensemble``."""
    c0 = configs[0]
    R = len(configs)
    s = 4 if c0.dtype == "float32" else 8
    draw = 8 + (s if s != 8 else 0)            # a float64 numpy draw, plus its cast copy unless float64
    G = group_size([(c.rng_seed, c.sigma_p, c.flip_p) for c in configs])
    U = R // G
    K = 1 if c0.noise_patches == "shared" else c0.P - 1
    c, M, d = 1 + c0.n * K, 2 * c0.m, c0.frame_dim   # d, or a dimension-free run's frame (docs/science.md §2.6)
    weights = choose_state(configs, representation) == "weights"
    # chunks per batch depend on (optimizer, m_sharpness, batch_size) alone: one config of each is enough
    rules = {(cfg.optimizer, cfg.m_sharpness, cfg.batch_size): cfg for cfg in configs}.values()
    C = max(cfg.batch_size // cfg.chunk_size for cfg in rules)
    parts = {
        "data basis": U * c * d * draw + (0 if weights else U * c * c * s),
        "weights": R * M * d * draw + (8 if weights else 4) * R * M * d * s,
        "coefficients": R * C * M * c * s * 9,
        "batch schedule": 8 * U * c0.epochs * c0.n if c0.batch_size < c0.n else 0,
        "trajectory log": 0,
        "Monte-Carlo draws": min(R, 32) * c0.n_mc * K * M * s * 3,
        "held-out test set": 0,
        "rand-sam draws": 0,
    }
    if log:
        T = logged_steps_bound(c0)
        parts["trajectory log"] = R * (c0.total_steps + 1) + 2 * TABLE_COLUMNS * 8 * T * R
        if track:
            parts["trajectory log"] += 3 * T * R * M * c * s
        t = min(c0.trajectory_mc, c0.n_mc)
        parts["Monte-Carlo draws"] = max(parts["Monte-Carlo draws"], R * t * K * M * s * 3)
    if heldout and c0.n_test > 0:
        r, ch = min(R, 8), 1 + c0.n_test * K
        parts["held-out test set"] = r * ch * d * draw + 3 * r * M * ch * s
    randsam = sum(cfg.optimizer == "randsam" for cfg in configs)
    if randsam:
        parts["rand-sam draws"] = 2 * R * M * d * s if weights else R * min(64 * M * c, 2**18) * s
    total = sum(parts[k] for k in PERSISTENT) + max(parts[k] for k in END_PHASES)
    return MemoryEstimate(parts, total)


def _params(cfg: SimConfig, names, runs: int) -> str:
    return " ".join(f"{name}={runs if name == 'runs' else getattr(cfg, name)}" for name in names)


def check_resources(configs: list[SimConfig], *, what: str, force_memory: bool = False, force_steps: bool = False,
                    available: tuple[int, str] | None = None, flags: tuple[str, str] = ("--force-memory",
                                                                                        "--force-steps"),
                    **estimate_options) -> MemoryEstimate:
    """Refuse (``ConfigError``, one line) an ensemble of more than ``MAX_TOTAL_STEPS`` steps unless
    ``force_steps``, or one whose memory estimate exceeds ``available`` (default: ``available_memory_bytes()``)
    unless ``force_memory``. ``what`` names the ensemble (``simulate``, ``chunk 3 (...)``); ``flags`` the options
    that force. Returns the estimate."""
    c0 = configs[0]
    check_steps(c0.total_steps, f"{what}: epochs x n / batch_size = {c0.epochs} x {c0.n} / {c0.batch_size}",
                advice="lower epochs or raise batch_size", force=force_steps, flag=flags[1])
    estimate = estimate_memory_bytes(configs, **estimate_options)
    check_memory(estimate, what=what, available=available, force=force_memory, flag=flags[0],
                 params=lambda top: _params(c0, PART_PARAMS[top], len(configs)))
    return estimate
