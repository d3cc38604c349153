"""Reports of the issue-15 SAM-family studies (msam_step_size, lr_schedules, msam_ascent, randsam_radius;
docs/science.md §8, §3.5) by theory_sim.reports.<study>: the claim lines of the sweep's verify.json (run
`python -m theory_sim verify runs/STUDY` first), then paired effect sizes over seeds.

    python studies/sam_questions_report.py STUDY runs/STUDY
"""
from __future__ import annotations

import argparse
from pathlib import Path

from theory_sim.reports import lr_schedules, msam_ascent, msam_step_size, randsam_radius

STUDIES = {m.__name__.rsplit(".", 1)[1]: m.write_report
           for m in (msam_step_size, lr_schedules, msam_ascent, randsam_radius)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=tuple(STUDIES))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--gallery", type=Path, default=Path("figures"))
    args = ap.parse_args()
    STUDIES[args.study](args.dir, args.gallery)


if __name__ == "__main__":
    main()
