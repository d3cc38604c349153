"""Does a more exact ascent find sharper (or flatter) solutions ([T24], [W23]; docs/science.md §8, §7.5)? lambda_1
and Tr(H) of every SAM-family rule's solution along one phase-diagram row against its test error, measured and
reported by theory_sim.reports.sam_family_sharpness (figures/sam_family_sharpness.md and .png).

    python studies/sam_family_sharpness.py [--d 800] [--seeds 6]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from theory_sim.reports.sam_family_sharpness import measure, write_report
from theory_sim.study import Study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=800)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: figures/)")
    args = ap.parse_args()
    study = Study(__file__, out=args.out)  # one thread: many small tensors (see theory_sim.cli)
    write_report(measure(args.d, args.seeds), args.d, args.seeds, study.figures)


if __name__ == "__main__":
    main()
