"""The memory of one CIFAR WideResNet run, roughly, and the checks before it starts (``cifar`` verb)."""
from __future__ import annotations

from theory_sim.cifar.config import wrn_num_params
from theory_sim.resources import MemoryEstimate, available_memory_bytes, check_memory, check_steps

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
    """The checks of ``theory_sim.cnn.memory.check_resources`` for a cifar run: epochs x steps per epoch within
    ``MAX_TOTAL_STEPS``, and the rough estimate within the memory of its device (CUDA: the free memory torch
    reports; else the host's)."""
    import torch

    n_train = min(cfg.n_train or CIFAR_TRAIN, CIFAR_TRAIN)
    check_steps(cfg.epochs * max(n_train // cfg.batch_size, 1),
                f"cifar: epochs x (training images / batch_size) = {cfg.epochs} x {n_train} / {cfg.batch_size}",
                advice="lower epochs", force=force_steps, flag="--force-steps")
    estimate = estimate_cifar_memory_bytes(cfg)
    if available is None:
        cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        available = (torch.cuda.mem_get_info()[0], "free CUDA memory") if cuda else available_memory_bytes()
    check_memory(estimate, what="cifar", available=available, force=force_memory, flag="--force-memory",
                 params=lambda top: " ".join(f"{k}={getattr(cfg, k)}" for k in CIFAR_PART_PARAMS[top]))
    return estimate
