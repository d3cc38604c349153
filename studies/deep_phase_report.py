"""Does SAM's advantage survive depth ([C23]'s open question 2, docs/science.md §2.5)? Verdicts of
studies/deep_phase.toml's sweep, computed by theory_sim.reports.deep_phase (writes figures/deep_phase.md).

    python -m theory_sim sweep studies/deep_phase.toml --out runs/deep_phase
    python studies/deep_phase_report.py runs/deep_phase
"""
from __future__ import annotations

import sys
from pathlib import Path

from theory_sim.reports.deep_phase import write_report


def main() -> None:
    write_report(Path(sys.argv[1]))


if __name__ == "__main__":
    main()
