"""Do SGD's boundary slope settle at 1/4 and SAM's at 0 inside the theorems' domain, d = 10^2..10^8, under the
fixed and the regime protocol (docs/science.md §5.7, §5.9)? theory_sim.reports.dimfree_boundaries's verdicts.

    python -m theory_sim search studies/dimfree_boundaries.toml --out runs/dimfree_boundaries
    python studies/dimfree_boundaries_report.py runs/dimfree_boundaries [--gallery figures]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from theory_sim.reports.dimfree_boundaries import write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--gallery", type=Path, default=Path("figures"))
    args = ap.parse_args()
    print(write_report(args.dir, args.gallery)[:3000])


if __name__ == "__main__":
    main()
