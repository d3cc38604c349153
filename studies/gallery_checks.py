"""Write each preset's failing checks (verify's "N of M checks hold; failing: ..." of docs/science.md §5.4) next to
its gallery entry in figures/README.md, by theory_sim.reports.gallery. Run after
`python -m theory_sim figures DIR --gallery`.

    python studies/gallery_checks.py [--readme figures/README.md] [--figures figures]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from theory_sim.reports.gallery import fill_readme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=Path("figures/README.md"))
    ap.add_argument("--figures", type=Path, default=Path("figures"))
    args = ap.parse_args()
    fill_readme(args.readme, args.figures)


if __name__ == "__main__":
    main()
