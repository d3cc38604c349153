"""Write each preset's failing checks next to its gallery entry in figures/README.md, computed from its verify
tables.

figures/README.md marks the place with ``<!-- checks:NAME -->...<!-- /checks -->``; this replaces the text between
the marks with verify's one-line summary ("N of M checks hold; failing: ...",
theory_sim.sweeps.verify.summary_sentence) of figures/NAME_verify.md. A verify.md from before verify wrote summaries
has none: the boundary checks are then re-judged from figures/results/NAME (results alone, no trajectories), and the
text says the trajectory claims were not re-judged. Run after `python -m theory_sim figures DIR --gallery figures` (CONTRIBUTING.md).

The logic behind ``studies/gallery_checks.py``."""
from __future__ import annotations

import re
from pathlib import Path

from theory_sim.io import atomic_write_bytes

MARK = re.compile(r"<!-- checks:(?P<name>[\w-]+) -->(?P<text>.*?)<!-- /checks -->", re.S)
SUMMARY = re.compile(r"^\*\*Summary:\*\* (?P<text>.*?checks hold; (?:none fails\.|failing: .*?\.)) \(Every row", re.M)


def checks_text(name: str, figures: Path) -> str:
    md = figures / f"{name}_verify.md"
    found = SUMMARY.search(md.read_text()) if md.exists() else None
    if found:
        return f"verify (`{md.as_posix()}`): {found['text']}"
    from theory_sim.sweeps.store import load_spec, read_results
    from theory_sim.sweeps.verify import summary_sentence, verify_table

    results = figures / "results" / name
    report = verify_table(read_results(results), load_spec(results))
    return (f"verify, boundary checks re-judged from `{results.as_posix()}`: {summary_sentence(report['summary'])} "
            f"Its trajectory claims were not re-judged under the current rules (they need the sweep's "
            f"trajectories: `python -m theory_sim sweep studies/{name}.toml --out runs/{name}`)")


def fill_readme(readme: Path, figures: Path) -> None:
    """Replace the text between every pair of check marks in ``readme`` with ``checks_text`` (printed)."""
    text = readme.read_text()
    cache: dict[str, str] = {}

    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in cache:
            cache[name] = checks_text(name, figures)
            print(f"{name}: {cache[name]}")
        return f"<!-- checks:{name} -->{cache[name]}<!-- /checks -->"

    atomic_write_bytes(readme, MARK.sub(fill, text).encode())

