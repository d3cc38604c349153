"""Verdicts of studies/deep_phase.toml ([C23]'s open question 2: does SAM's advantage survive depth?), computed from
the sweep's tables: per depth, the boundary slopes in d (verify.json, seed-bootstrap intervals), SAM - SGD paired
over seeds (mean over the cells with d >= 1600) for the test error, the update-point noise-active fraction during
SAM's phase (steps 1..200) and the fraction of flipped labels fitted at the end, with 95% bootstrap intervals.

The report behind ``studies/deep_phase_report.py`` (docs/science.md §2.5)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from theory_sim.io import atomic_write_bytes


def paired(a: pd.Series, b: pd.Series, n_boot: int = 2000):
    diff = (a - b).dropna().to_numpy()
    boot = diff[np.random.default_rng(0).integers(0, len(diff), (n_boot, len(diff)))].mean(1)
    return float(diff.mean()), *np.percentile(boot, [2.5, 97.5]).tolist()


def depth2_ratio_note(claims: list[dict]) -> list[str]:
    """The depth-2 ratio-law constants at the largest d (verify's trajectory claims) and where their difference from
    phase_diagram_c23's comes from (issue 24 item 10)."""
    rows = [c for c in claims if c["claim"] == "ratio_law_constant" and "depth=2," in c["dimension"]]
    if not rows:
        return []
    d_of = {c["dimension"]: float(c["dimension"].split("d=")[1].split(",")[0]) for c in rows}
    top = [c for c in rows if d_of[c["dimension"]] == max(d_of.values())]
    values = [c["measured"] for c in top]
    lo, hi = min(c["ci_low"] for c in top), max(c["ci_high"] for c in top)
    return ["## Ratio-law constant at depth 2 against phase_diagram_c23", "",
            f"At d = {max(d_of.values()):g}, depth 2's ratio-law constant is {min(values):.3g}-{max(values):.3g} over "
            f"its {len(top)} early-phase cells (intervals within [{lo:.3g}, {hi:.3g}], verify.md), above "
            "phase_diagram_c23's at the same d (figures/phase_diagram_c23_verify.md). Depth 2 is the c23 network run for run (Gamma and Rho equal to "
            "float32 round-off on the same seeds); the difference is the seed set, 0-3 here against 0-7 there: "
            "`python studies/ratio_law_seeds.py` recomputes both networks on both seed sets and on 64 seeds "
            "(`figures/ratio_law_seeds.md`, docs/science.md §2.5).", ""]


def write_report(d: Path, out: Path = Path("figures/deep_phase.md")) -> None:
    """Write the verdicts computed from the sweep in ``d`` to ``out`` and print them."""
    v = json.loads((d / "verify.json").read_text())
    res, traj = pd.read_parquet(d / "results.parquet"), pd.read_parquet(d / "trajectories.parquet")
    lines = ["# deep_phase: SGD vs SAM (then SGD) over d and ||mu|| at depth 2, 3, 4", "",
             "Computed by `python studies/deep_phase_report.py runs/deep_phase` from the sweep of "
             "`studies/deep_phase.toml` (4 seeds, d = 100..6400, 12 ||mu|| values, width 10).", "",
             "## Boundary slopes in d (prediction: SGD 1/4 inside the interval; SAM within +-0.125)", "",
             "| depth | optimizer | slope | 95% interval | cells | holds |", "| --- | --- | --- | --- | --- | --- |"]
    for c in sorted((c for c in v["slopes"] if c["dim"] == "d"), key=lambda c: (c["fixed"]["depth"], c["label"])):
        lines.append(f"| {c['fixed']['depth']:g} | {c['label']} | {c['slope']:.3f} | [{c['ci_low']:.3f}, "
                     f"{c['ci_high']:.3f}] | {c['points']} | {'yes' if c['holds'] else 'no'} |")
    lines += ["", "## SAM - SGD, paired over seeds (cells with d >= 1600)", "",
              "| depth | quantity | SAM - SGD | 95% interval | SAM better |", "| --- | --- | --- | --- | --- |"]
    big = res[res.d >= 1600]
    phase = traj[(traj.d >= 1600) & (traj.step > 0) & (traj.step <= 200)]
    for depth in sorted(res.depth.unique()):
        for name, frame, col in (("test error", big, "test_error"), ("flipped labels fitted", big, "flipped_fit_frac"),
                                 ("noise-active fraction at W + eps, steps 1..200", phase,
                                  "update_noise_active_frac")):
            g = frame[frame.depth == depth].groupby(["label", "seed"])[col].mean()
            m, lo, hi = paired(g.loc["sam"], g.loc["sgd"])
            lines.append(f"| {depth} | {name} | {m:.3g} | [{lo:.3g}, {hi:.3g}] | {'yes' if hi < 0 else 'no'} |")
    lines += ["", "A row's 'SAM better' is yes when the whole interval is below 0.", ""]
    lines += depth2_ratio_note(v["trajectory_claims"])
    atomic_write_bytes(out, "\n".join(lines).encode())
    print("\n".join(lines))

