"""How much of each training point's fit comes from memorised noise, at any depth (docs/science.md §6.7).

Every network of ``theory_sim.cnn`` (the two-layer c23/kou2023 networks, and ``theory_sim.cnn.deep``'s L-layer
one) acts on one patch at a time and sums over patches, so f(x_i) = f_sig(x_i) + f_noise(x_i) exactly, with
f_sig the contribution of the signal patch yhat_i mu and f_noise that of the noise patches. A point is fitted
through its signal when y_i f_sig > 0 carries the margin, and through memorised noise when y_i f_noise does; a
flipped label (y_i = -yhat_i) can only be fitted by noise beating the signal. [C23]'s mechanism, in these terms:
SGD's harmful overfitting fits the flipped labels through f_noise, SAM keeps f_noise small.

The first-layer Gamma / Rho of docs/science.md §6.1 stay the coefficient tracker's; this adds the margins, which
need no coefficients and so mean the same whatever the depth.
"""
from __future__ import annotations

import torch

MEMORIZATION_COLUMNS = ("margin_signal_clean", "margin_noise_clean", "margin_signal_flipped", "margin_noise_flipped",
                        "clean_fit_frac", "flipped_fit_frac", "noise_dominated_frac")


def _group_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-run mean of x (R, n) over the samples in ``mask`` (R, n); NaN for a run with none."""
    w = mask.to(x.dtype)
    count = w.sum(1)
    mean = (x * w).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


def memorization_summaries(net, sig: torch.Tensor, z: torch.Tensor, mult: int, b: torch.Tensor | None,
                           y: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per run (R,): mean signal and noise margins y_i f_sig(x_i), y_i f_noise(x_i) over the clean and over the
    flipped training points; the fraction of each fitted (y_i f(x_i) > 0); the fraction of all points whose noise
    margin exceeds their signal margin. sig (R, 2, m, n) and z (R, 2, m, n, K) are the first layer's
    pre-activations, b the network's extra parameters (biases, or the deep model's hidden weights)."""
    fs, fn = net.output_parts(sig, z, mult, b)
    ms, mn = y * fs, y * fn
    fitted = (ms + mn > 0).to(ms.dtype)
    flipped = ~clean
    return {"margin_signal_clean": _group_mean(ms, clean), "margin_noise_clean": _group_mean(mn, clean),
            "margin_signal_flipped": _group_mean(ms, flipped), "margin_noise_flipped": _group_mean(mn, flipped),
            "clean_fit_frac": _group_mean(fitted, clean), "flipped_fit_frac": _group_mean(fitted, flipped),
            "noise_dominated_frac": (mn > ms).to(ms.dtype).mean(1)}
