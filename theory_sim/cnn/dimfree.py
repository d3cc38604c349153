"""Dimension-free sampling of a run's data basis and initial filters, exact in distribution (docs/science.md §2.6).

Everything the theory model computes depends on the noise vectors and the initial filters only through their
inner products with each other and with e_1 (the trainer steps in coefficient space from G and P0 = W0 basis^T; the
Gaussian test-error estimator needs W Pi W^T and w_1). With Gaussian noise and a Gaussian init, q such vectors are
iid N(0, I_d) up to scale (and the projection off e_1): their e_1 coordinates are q independent normals, and their
components orthogonal to e_1 are q iid N(0, I_{d-1}) vectors, whose coordinates in the Gram-Schmidt frame of
themselves form a lower-triangular matrix T with (Bartlett decomposition) T_ii^2 ~ chi^2_{d-1-i}, T_ij ~ N(0, 1)
below the diagonal, all independent. So the q vectors are stored in a frame of dimension k = 1 + min(q, d - 1)
whose first axis is e_1, with O(q^2) normals and q chi-square draws: nothing of size d is ever allocated.
"""
from __future__ import annotations

import numpy as np


def frame_coordinates(rng: np.random.Generator, d: int, q: int) -> np.ndarray:
    """(q, 1 + min(q, d - 1)): q iid N(0, I_d) vectors in an orthonormal frame of R^d whose first vector is e_1 (the
    frame's other axes are the Gram-Schmidt frame of the vectors' components orthogonal to e_1)."""
    k1 = min(q, d - 1)
    out = np.zeros((q, 1 + k1))
    out[:, 0] = rng.standard_normal(q)                     # the e_1 coordinates
    rows, cols = np.tril_indices(q, -1, k1)                # below the diagonal (every column, for rows i >= d - 1)
    out[rows, 1 + cols] = rng.standard_normal(len(rows))
    diag = np.arange(k1)
    out[diag, 1 + diag] = np.sqrt(rng.chisquare(d - 1 - diag))   # chi^2 with d - 1 - i degrees of freedom
    return out
