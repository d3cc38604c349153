"""Does Rand-SAM match SAM, and is a more exact ascent worse ([T24], arXiv 2411.01714; docs/science.md §8)? Claim
lines and paired effect sizes of studies/sam_family_phase.toml's sweep by theory_sim.reports.sam_family.

    python -m theory_sim sweep studies/sam_family_phase.toml --out runs/sam_family_phase
    python studies/sam_family_report.py runs/sam_family_phase [--gallery figures]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from theory_sim.reports.sam_family import LARGE_D, write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--gallery", type=Path, default=Path("figures"))
    ap.add_argument("--large-d", type=float, default=LARGE_D, help="the verdicts pool the cells with d >= this")
    args = ap.parse_args()
    write_report(args.dir, args.gallery, args.large_d)


if __name__ == "__main__":
    main()
