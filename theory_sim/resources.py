"""What a run needs before it starts: its memory, estimated from its config, and its number of steps.

``estimate_memory_bytes(configs, representation)`` adds up the arrays an ensemble of R runs (one ``simulate``
command, or one sweep chunk) allocates, from the shapes of docs/architecture.md's layout: s = bytes per element of
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

``check_resources`` refuses, before any work, an ensemble whose estimate exceeds the memory available (MemAvailable
of /proc/meminfo, or the cgroup's limit minus its usage if smaller) unless forced, and a run of more than
``MAX_TOTAL_STEPS`` steps (epochs x n / batch_size) unless forced; each with one line naming the parameters.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from theory_sim.config import ConfigError, SimConfig

MAX_TOTAL_STEPS = 10**7      # epochs x n / B beyond this is refused unless forced (hours at the fastest step)
MAX_SEEDS = 10**5            # seeds of one simulate command or sweep (each is a run of one ensemble)
MAX_RUNS = 10**6             # runs of one sweep (cells x seeds x variants; the [K23] grid has 10^5): checked before
                             # its grid is expanded (a num = 10^9 axis alone would fill the memory)
ESTIMATE_FACTOR = 2.0        # the measured peak lies within [estimate / 2, estimate * 2] (tests/test_resources.py)
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


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict          # term -> bytes
    total: int           # persistent terms + the largest end-of-run phase

    @property
    def dominant(self) -> str:
        return max(self.parts, key=self.parts.get)


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
    from theory_sim.cnn.layout import choose_state, group_size   # no torch: a sweep's parent checks every chunk

    c0 = configs[0]
    R = len(configs)
    s = 4 if c0.dtype == "float32" else 8
    draw = 8 + (s if s != 8 else 0)            # a float64 numpy draw, plus its cast copy unless float64
    G = group_size([(c.rng_seed, c.sigma_p, c.flip_p) for c in configs])
    U = R // G
    K = 1 if c0.noise_patches == "shared" else c0.P - 1
    c, M, d = 1 + c0.n * K, 2 * c0.m, c0.d
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


# --------------------------------------------------------------------------------------------------------------------
# What the machine has
# --------------------------------------------------------------------------------------------------------------------
def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory_bytes() -> tuple[int, str] | None:
    """(bytes a new allocation can get, where that number comes from), or None where it cannot be read (no
    /proc/meminfo: not Linux). The smaller of MemAvailable and the cgroup's limit minus its usage (v2
    memory.max / memory.current, or v1 memory.limit_in_bytes / memory.usage_in_bytes)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
                break
    except (OSError, ValueError, IndexError):
        pass
    root = Path("/sys/fs/cgroup")
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes",
                                                            "memory/memory.usage_in_bytes")):
        lim, use = _read_int(root / limit), _read_int(root / usage)
        if lim is not None and use is not None and lim < 2**60:   # v1 reports "no limit" as ~2^63
            found.append((max(lim - use, 0), f"the cgroup limit {root / limit} minus its usage"))
            break
    return min(found) if found else None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} ZiB"   # pragma: no cover


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
    if c0.total_steps > MAX_TOTAL_STEPS and not force_steps:
        raise ConfigError(f"{what}: epochs x n / batch_size = {c0.epochs} x {c0.n} / {c0.batch_size} = "
                          f"{c0.total_steps:.3g} steps, more than the bound {MAX_TOTAL_STEPS:.0e} (hours of "
                          f"training at the fastest step); lower epochs or raise batch_size, or pass {flags[1]}")
    estimate = estimate_memory_bytes(configs, **estimate_options)
    available = available_memory_bytes() if available is None else available
    if available is not None and estimate.total > available[0] and not force_memory:
        top = estimate.dominant
        raise ConfigError(
            f"{what} needs about {format_bytes(estimate.total)} of memory, more than the "
            f"{format_bytes(available[0])} available ({available[1]}); most of it is the {top} "
            f"({format_bytes(estimate.parts[top])}: {_params(c0, PART_PARAMS[top], len(configs))}); lower those, "
            f"or pass {flags[0]} to run anyway")
    return estimate


def add_force_arguments(p: argparse.ArgumentParser) -> None:
    """--force-memory and --force-steps (simulate, sweep)."""
    p.add_argument("--force-memory", action="store_true",
                   help="run even if the memory estimate (theory_sim.resources) exceeds the memory available")
    p.add_argument("--force-steps", action="store_true",
                   help=f"run even if epochs x n / batch_size exceeds {MAX_TOTAL_STEPS:.0e} steps")


# --------------------------------------------------------------------------------------------------------------------
# cifar: a rough estimate of one WideResNet run
# --------------------------------------------------------------------------------------------------------------------
CIFAR_TRAIN, CIFAR_TEST, CIFAR_IMAGE = 50_000, 10_000, 3 * 32 * 32


def estimate_cifar_memory_bytes(cfg) -> MemoryEstimate:
    """Rough peak bytes of a ``CifarConfig`` run (fp32), on one device:

      dataset       (50,000 + 10,000) x 3072 uint8 as loaded, + the images used, on the device
      model         D parameters x 4 bytes x 5: weights, gradients, momentum, SAM's saved weights and eps
      activations   B x 6 N w (16 32^2 + 32 16^2 + 64 8^2) x 4 bytes x 2: a WRN-depth-w saves ~6 maps per block of
                    its N = (depth - 4) / 6 blocks per group for the backward pass, B = the per-replica batch
      evaluation    eval_batch_size x 3 x 16 w 32^2 x 4 bytes: the few live maps of a no-grad pass
    A factor of about 2 either way (activations depend on the kernels torch picks); meant to refuse what cannot
    fit (a width of 10^4, a batch of 10^6), not to budget a GPU."""
    from theory_sim.cifar.config import wrn_num_params

    N, w = (cfg.depth - 4) // 6, cfg.width
    n_train = min(cfg.n_train or CIFAR_TRAIN, CIFAR_TRAIN)
    n_test = min(cfg.n_test or CIFAR_TEST, CIFAR_TEST)
    per_image = 6 * N * w * (16 * 32**2 + 32 * 16**2 + 64 * 8**2)
    parts = {
        "dataset": (CIFAR_TRAIN + CIFAR_TEST + n_train + n_test) * CIFAR_IMAGE,
        "model": wrn_num_params(cfg.depth, cfg.width, cfg.dataset) * 4 * 5,
        "activations": cfg.batch_size * per_image * 4 * 2,
        "evaluation": cfg.eval_batch_size * 3 * 16 * w * 32**2 * 4,
    }
    total = parts["dataset"] + parts["model"] + max(parts["activations"], parts["evaluation"])
    return MemoryEstimate(parts, total)


CIFAR_PART_PARAMS = {"dataset": ("n_train", "n_test"), "model": ("depth", "width"),
                     "activations": ("batch_size", "depth", "width"), "evaluation": ("eval_batch_size", "width")}


def check_cifar_resources(cfg, *, force_memory: bool = False, force_steps: bool = False,
                          available: tuple[int, str] | None = None) -> MemoryEstimate:
    """The checks of ``check_resources`` for a cifar run: epochs x steps per epoch within ``MAX_TOTAL_STEPS``, and
    the rough estimate within the memory of its device (CUDA: the free memory torch reports; else the host's)."""
    import torch

    n_train = min(cfg.n_train or CIFAR_TRAIN, CIFAR_TRAIN)
    steps = cfg.epochs * max(n_train // cfg.batch_size, 1)
    if steps > MAX_TOTAL_STEPS and not force_steps:
        raise ConfigError(f"cifar: epochs x (training images / batch_size) = {cfg.epochs} x {n_train} / "
                          f"{cfg.batch_size} = {steps:.3g} steps, more than the bound {MAX_TOTAL_STEPS:.0e}; lower "
                          f"epochs, or pass --force-steps")
    estimate = estimate_cifar_memory_bytes(cfg)
    if available is None:
        cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        available = (torch.cuda.mem_get_info()[0], "free CUDA memory") if cuda else available_memory_bytes()
    if available is not None and estimate.total > available[0] and not force_memory:
        top = estimate.dominant
        names = " ".join(f"{k}={getattr(cfg, k)}" for k in CIFAR_PART_PARAMS[top])
        raise ConfigError(f"cifar needs about {format_bytes(estimate.total)} of memory, more than the "
                          f"{format_bytes(available[0])} available ({available[1]}); most of it is the {top} "
                          f"({format_bytes(estimate.parts[top])}: {names}); lower those, or pass --force-memory to "
                          f"run anyway")
    return estimate
