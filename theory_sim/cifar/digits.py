"""scikit-learn's bundled handwritten digits as a dataset of the WideResNet pipeline: real images at CPU scale.

``sklearn.datasets.load_digits`` ships 1,797 8x8 grey-level images (values 0..16) of the digits 0-9 inside the
package (UCI "optdigits" test set): nothing is downloaded. ``load_digits_arrays`` returns them in the CIFAR loader's
layout (``theory_sim.cifar.data.CifarArrays``: uint8 (N, 1, 8, 8) images, int64 labels), the 17 grey levels
mapped to 0..255 by v * 255 // 16 (distinct levels stay distinct), split once and for all into a stratified training
set of 1,297 images and a test set of 500 (``train_test_split(..., stratify=labels, random_state=0)``), so every run
and every seed sees the same split. Augmentation is off for this dataset (``AUGMENT``): a flip changes a digit's
identity and a 4-pixel crop of an 8x8 image removes half of it.
"""
from __future__ import annotations

import numpy as np

N_TEST = 500
SPLIT_SEED = 0


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train (1297, 1, 8, 8) uint8, y_train, x_test (500, 1, 8, 8), y_test (``load_dataset`` wraps them)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.int64) * 255 // 16).astype(np.uint8)[:, None]          # (1797, 1, 8, 8)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=N_TEST, stratify=y, random_state=SPLIT_SEED)
    return np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te
