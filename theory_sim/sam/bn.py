"""BatchNorm and DDP around SAM's passes (kept apart from the optimizer, as davda54/sam keeps its bypass_bn).

SAM's perturbed passes must not move BatchNorm's running statistics [F21]: ``disable_running_stats`` freezes them for
a block. Under DDP only the last pass of a step should all-reduce: ``no_sync`` wraps the others (a no-op without DDP).
``BN_UPDATES``: the choices of ``SAM(bn_update=...)``, which chunks' clean passes update the running statistics.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

BN_UPDATES = ("per_chunk", "per_step")


@contextlib.contextmanager
def disable_running_stats(model: nn.Module | None) -> Iterator[None]:
    """Within the block, BatchNorm layers normalise with batch statistics but leave running_mean, running_var and
    num_batches_tracked untouched: the perturbed passes of SAM must not move the running statistics [F21]."""
    if model is None:
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False  # in train mode: batch stats, no running-stat update, no counter increment
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def no_sync(model: nn.Module | None):
    """``model.no_sync()`` for a DDP model (also through torch.compile's wrapper), a no-op context otherwise."""
    fn = getattr(model, "no_sync", None) if model is not None else None
    return fn() if fn is not None else contextlib.nullcontext()
