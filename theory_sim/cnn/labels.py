"""The labels of a training set, and the flip fraction they realise (numpy only: verify reads it torch-free).

A data set's generator draws, in this order: the clean labels yhat (uniform on +-1), which of them flip (each with
probability p), then the patch positions and the noise (theory_sim.cnn.data.generate). ``flip_fractions`` replays
the first two draws of each run's stream, so the realised fraction p-hat of flipped training labels is known from
the seed alone, without drawing the d-dimensional noise.
"""
from __future__ import annotations

import numpy as np

from theory_sim.seeding import run_generators

LABELS = np.array([-1.0, 1.0])   # the clean labels yhat, drawn uniformly
STREAM_TRAIN = 0                 # theory_sim.cnn.data's stream of the training set


def draw_labels(rng: np.random.Generator, n: int, flip_p: float) -> tuple[np.ndarray, np.ndarray]:
    """(yhat, flips) of n samples: the clean labels and which of them are flipped."""
    yhat = LABELS[rng.integers(0, 2, size=n)]   # = rng.choice(LABELS, size=n), without choice's overhead
    return yhat, rng.random(n) < flip_p


def flip_fractions(seeds, n: int, flip_ps, stream: int = STREAM_TRAIN) -> np.ndarray:
    """The realised fraction of flipped training labels of every run (``seeds``: each run's rng_seed)."""
    flip_ps = np.broadcast_to(np.asarray(flip_ps, dtype=float), (len(seeds),))
    return np.array([draw_labels(rng, n, p)[1].mean() for rng, p in
                     zip(run_generators([int(s) for s in seeds], stream), flip_ps)])
