"""How SAM's radius must scale with d, and when it is too large ([C23] Sec. 4, docs/science.md §5.3): the verdicts of
studies/tau_sensitivity.toml's sweep by theory_sim.reports.tau_sensitivity (figures/tau_sensitivity.md and .png).

    python -m theory_sim sweep studies/tau_sensitivity.toml --out runs/tau_sensitivity
    python studies/tau_sensitivity_report.py runs/tau_sensitivity [--gallery figures]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from theory_sim.reports.tau_sensitivity import write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--gallery", type=Path, default=Path("figures"))
    args = ap.parse_args()
    write_report(args.dir, args.gallery)


if __name__ == "__main__":
    main()
