"""The verdict of studies/sam_family_phase.toml: does Rand-SAM match SAM, and is a more exact (multi-step) ascent
worse? [T24] (arXiv 2411.01714) reports both for WideResNets; this reads the theory model's answer from the sweep.

For every rule (each X for the first 200 steps, then SGD): the boundary's log-log slope in d with its seed-bootstrap
interval (verify.json), the located boundary ||mu||* at the largest d, the mean test error over the cells with
d >= 3200, the Gamma/Rho amplification over SGD during the rule's phase and the update-point noise-active fraction
(the trajectory claims). Writes figures/sam_family_phase.md.

    python -m theory_sim sweep studies/sam_family_phase.toml --out runs/sam_family_phase
    python studies/sam_family_report.py runs/sam_family_phase [--gallery figures]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from theory_sim.io import atomic_write_bytes
from theory_sim.sweeps.store import load_spec, read_results


def _fmt(x: float) -> str:
    if x is None or np.isnan(x):
        return "n/a"
    return ("inf" if x > 0 else "-inf") if np.isinf(x) else f"{x:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--gallery", type=Path, default=Path("figures"))
    args = ap.parse_args()
    spec, results = load_spec(args.dir), read_results(args.dir)
    report = json.loads((args.dir / "verify.json").read_text())
    slope = {c["label"]: c for c in report["slopes"] if c["dim"] == "d"}
    claims = report["trajectory_claims"]
    amp = {c["variant"].split(" vs ")[0]: c for c in claims
           if c["claim"] == "sam_amplification" and c["dimension"] == "median over cells"}
    noise = {c["variant"]: c for c in claims if c["claim"] == "update_noise_active_frac"}
    d_max = max(b["d"] for b in report["boundaries"])
    mu_star = {b["label"]: b for b in report["boundaries"] if b["d"] == d_max}
    err = results.test_error.where(~results.diverged, 0.5)
    large = results.assign(err=err)[results.d >= 3200].groupby("label").err.mean()
    labels = [o.label for o in spec.optimizers]
    rows = []
    for lab in labels:
        s, b = slope.get(lab, {}), mu_star.get(lab, {})
        mu = b.get("mu_star") if b.get("status") == "ok" else {"never_benign": np.inf,
                                                                 "benign_everywhere": -np.inf}.get(b.get("status"))
        a, n = amp.get(lab, {}), noise.get(lab, {})
        rows.append(f"| {lab} | {_fmt(s.get('slope'))} [{_fmt(s.get('ci_low'))}, {_fmt(s.get('ci_high'))}] | "
                    f"{_fmt(mu)} | {large.get(lab, float('nan')):.3f} | {_fmt(a.get('measured'))} "
                    f"[{_fmt(a.get('ci_low'))}, {_fmt(a.get('ci_high'))}] | {_fmt(n.get('measured'))} |")
    e = large.to_dict()
    verdict = [
        f"- Rand-SAM does {'not ' if e['randsam'] > e['sam'] + 0.02 else ''}match SAM: mean test error "
        f"{e['randsam']:.3f} vs SAM {e['sam']:.3f} (SGD {e['sgd']:.3f}) at d >= 3200, boundary slope "
        f"{_fmt(slope['randsam']['slope'])} vs SAM {_fmt(slope['sam']['slope'])} (SGD {_fmt(slope['sgd']['slope'])}); "
        f"a random direction of the same radius does not switch the noise terms off (amplification "
        f"{_fmt(amp['randsam']['measured'])}, noise-active fraction {_fmt(noise['randsam']['measured'])} vs SGD's "
        f"{_fmt(noise['sgd']['measured'])}): it behaves like SGD, as [T24] finds for WideResNets.",
        f"- Multi-step SAM: K = 2 gives test error {e['msam2']:.3f} (slope {_fmt(slope['msam2']['slope'])}), K = 5 "
        f"{e['msam5']:.3f} (slope {_fmt(slope['msam5']['slope'])}), against SAM's {e['sam']:.3f}: "
        + ("the more exact ascent is worse at K = 5" if e["msam5"] > e["sam"] + 0.02 else
           "the more exact ascent is not worse") + f" (K = 2 {'helps' if e['msam2'] < e['sam'] - 0.02 else 'is close'}).",
        f"- 1-SAM (per-sample perturbations) switches every noise term off during its phase (Rho stays exactly 0: "
        f"amplification {_fmt(amp['1-sam']['measured'])}, noise-active fraction {_fmt(noise['1-sam']['measured'])}); "
        f"test error {e['1-sam']:.3f}. USAM: {e['usam']:.3f}.",
    ]
    lines = [f"# The SAM family on the two-layer CNN ({spec.name}, {results.seed.nunique()} seeds per cell, each rule "
             f"for 200 steps then SGD)", "",
             "| rule | boundary slope in d [95% CI] | mu* at d = " + str(d_max) + " | mean test error, d >= 3200 | "
             "Gamma/Rho amplification over SGD (median over cells) [95% CI] | update-point noise-active fraction |",
             "| --- | --- | --- | --- | --- | --- |", *rows, "", *verdict, "",
             f"From `{args.dir}/verify.json` (boundaries, slopes, trajectory claims) and `results.parquet`."]
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(args.gallery / "sam_family_phase.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()
