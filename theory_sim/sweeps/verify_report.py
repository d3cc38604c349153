"""verify.md: the report of ``theory_sim.sweeps.verify`` as markdown (compute lives there, rendering here).

It opens with one line per claim (claim, source, cells in domain, estimate with interval, verdict), then the
exploratory estimates, the paired differences and the boundary of every cell with its domain flags.
"""
from __future__ import annotations

import numpy as np

from theory_sim.claims import CLAIMS, DOMAIN, VERDICTS


def summary_sentence(summary: dict) -> str:
    """'verdicts: 2 consistent, 1 inconclusive, ...; contradicted: X (variant); not run: ...' (one line)."""
    counts = summary["counts"]
    head = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts.get(v))
    bad = [f"{x['claim']} ({x['variant']}" + (f", {x['dim']}" if x.get("dim") else "") + ")"
           for x in summary["lines"] if x["verdict"] == "contradicted"]
    text = f"claims: {head or 'none evaluated'}"
    if bad:
        text += f"; contradicted: {', '.join(dict.fromkeys(bad))}"
    if summary.get("not_run"):
        text += "; trajectory claims not run (no trajectories.parquet)"
    return text + "."


def fmt(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a" if x is None or np.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def region_text(region) -> str:
    if region is None:
        return "none (exploratory)"
    lo, hi = region
    if np.isinf(hi) and np.isinf(lo):
        return "any"
    if np.isinf(hi):
        return f">= {fmt(float(lo))}" if lo != 0 else "> 0"
    if np.isinf(lo):
        return f"<= {fmt(float(hi))}" if hi != 0 else "< 0"
    return f"[{fmt(float(lo))}, {fmt(float(hi))}]"


def estimate_text(c: dict) -> str:
    est = fmt(c["estimate"])
    if c.get("ci_low") is None or not np.isfinite(c["ci_low"]):
        return est
    return f"{est} [{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]"


def verdict_text(c: dict) -> str:
    v = c["verdict"]
    if v == "inconclusive":
        n = c.get("seeds_to_decide")
        v += f" (about {n} seeds would decide)" if n else " (more seeds would not decide it: the estimate sits on an edge)"
    if c.get("note"):
        v += f": {c['note']}"
    return v


def subject(c: dict) -> str:
    """What a line is about: the variant, the dimension and the slice held fixed."""
    bits = [c["variant"]]
    if c.get("dim"):
        bits.append(f"in {c['dim']}")
    fixed = c.get("fixed") or {}
    if fixed:
        bits.append("(" + ", ".join(f"{k}={fmt(v)}" for k, v in fixed.items()) + ")")
    return " ".join(bits)


def claim_line(c: dict) -> str:
    predicted = (CLAIMS[c["claim"]].prediction if c["verdict"] == "not applicable" else region_text(c.get("region")))
    return (f"| {c['claim']} | {subject(c)} | {c['source']} | {c.get('cells_in_domain', '')}/{c.get('cells', '')} | "
            f"{estimate_text(c)} | {predicted} | {verdict_text(c)} |")


def claim_table(claims: list[dict]) -> list[str]:
    """The claim lines of a report (every study report opens with the same table)."""
    lines = ["| claim | variant, slice | source | cells in domain | estimate [95% CI] | predicted | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    return lines + [claim_line(c) for c in claims if c["verdict"] != "exploratory"]


def markdown(report: dict, spec) -> str:
    claims = report["claims"]
    lines = [f"# verify: {spec.name}", "", f"**Verdicts:** {summary_sentence(report['summary'])}", "",
             f"Benign rule: {report['benign_rule']}; {report['seeds']} seeds per cell; intervals: "
             f"{report['interval']}. Every claim, its source, domain and tolerance: docs/science.md §5.6; "
             "`verify --strict` exits 1 when a claim is contradicted.", "", "## Claims", ""]
    lines += claim_table(claims)
    for item in report.get("not_run", []):
        lines += ["", f"Trajectory claims ({', '.join(item['claims'])}): {item['why']}."]
    explore = [c for c in claims if c["verdict"] == "exploratory"]
    if explore:
        lines += ["", "## Exploratory estimates (no prediction, no verdict)", "",
                  "Fits over every located cell, in and outside the domain, and comparisons no theorem covers.", "",
                  "| estimate | variant, slice | cells in domain | estimate [95% CI] |", "| --- | --- | --- | --- |"]
        lines += [f"| {c['claim']} ({c['scope']}) | {subject(c)} | {c.get('cells_in_domain', '')}/"
                  f"{c.get('cells', '')} | {estimate_text(c)} |" for c in explore]
    lines += _paired_markdown(report, spec)
    lines += _boundary_markdown(report, spec)
    used = sorted({n for c in claims for n in CLAIMS[c["claim"]].domain} if claims else set())
    lines += ["", "Domains (docs/science.md §5.6): " + "; ".join(f"{n}: {DOMAIN[n].text}" for n in used) + "."]
    return "\n".join(lines) + "\n"


def _paired_markdown(report: dict, spec) -> list[str]:
    """Pooled rows as a table; per-cell rows as one symbol per ||mu|| (- below 0, + above 0, . interval covers 0)."""
    rows = report.get("paired_differences") or []
    lines = ["", "## Paired test-error differences (exploratory; variant - baseline, same seeds)", ""]
    if not rows:
        return lines + ["Not computed: the sweep has no baseline (sgd or sam) next to another variant."]
    pooled = [r for r in rows if r["scope"] == "pooled"]
    lines += ["Mean over the (cell, seed) pairs of test_error(variant) - test_error(baseline), a diverged run "
              "scoring 0.5; 95% t-interval over seeds (each seed's mean difference over the cells: cells sharing a "
              "seed are one unit).", "",
              "| variant | baseline | mean difference, all cells | 95% CI | seeds | pairs |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['label']} | {r['baseline']} | {r['mean_diff']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
              f"| {r['seeds']} | {r['n_pairs']} |" for r in pooled]
    cells = [r for r in rows if r["scope"] == "cell"]
    others = [k for k in spec.run_key if k not in ("label", "seed", "mu_norm")]
    symbol = {"better": "-", "worse": "+", "indistinguishable": "."}
    mus = sorted({r["mu_norm"] for r in cells})
    lines += ["", f"Per cell, one symbol per ||mu|| in {[fmt(float(m)) for m in mus]} "
              "(- interval below 0, + above 0, . covers 0, blank: no pairs):", "",
              f"| variant | baseline | {' | '.join(others)} | per ||mu|| |",
              "| --- | --- | " + "--- | " * len(others) + "--- |"]
    groups: dict[tuple, dict] = {}
    for r in cells:
        groups.setdefault((r["label"], r["baseline"], *(r[k] for k in others)), {})[r["mu_norm"]] = r["verdict"]
    for key, signs in groups.items():
        marks = "".join(symbol.get(signs.get(m), " ") for m in mus)
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(fmt(_int(v)) for v in key[2:]) + f" | `{marks}` |")
    return lines


def _boundary_markdown(report: dict, spec) -> list[str]:
    dims = spec.cell_dims
    flags = [k for k in DOMAIN if report["boundaries"] and f"in_{k}" in report["boundaries"][0]]
    lines = ["", "## Boundary per cell", "", "init scale = sigma_0 P sigma_p sqrt(d); step = eta (P-1) sigma_p^2 d / "
             "(2 B m); a domain column says whether the cell meets that predicate (docs/science.md §5.6).", "",
             f"| variant | {' | '.join(dims)} | mu* | status | harmful again at | init scale | step | "
             + " | ".join(flags) + " |",
             "| --- | " + "--- | " * len(dims) + "--- | --- | --- | --- | --- | " + "--- | " * len(flags)]
    for b in report["boundaries"]:
        marks = " | ".join("yes" if b.get(f"in_{k}") else "no" for k in flags)
        lines.append(f"| {b['label']} | " + " | ".join(fmt(_int(b[k])) for k in dims) + f" | "
                     f"{fmt(b['mu_star'])} | {b['status']} | {fmt(b['relapse_mu'])} | {fmt(b.get('init_scale'))} | "
                     f"{fmt(b.get('step_memorisation'))} | {marks} |")
    lines += ["", "Censored cells (benign_everywhere: below the grid; never_benign: above it) are left out of the "
              "slope fits; the SAM-below-SGD gap counts them at the grid's ends (a lower bound)."]
    return lines


def _int(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v
