"""Every command the docs show exists: each `python -m theory_sim VERB --option ...` in README.md, CONTRIBUTING.md,
docs/*.md and figures/README.md names a real verb and real options of it (checked with the CLI's own argparse
parser, nothing is run), and every `--option {a,b,...}` choice list matches the parser's choices. Timings are quoted
from benchmarks/timings.json alone (docs/usage.md, "Timings")."""
import argparse
import importlib.util
import json
import re
from functools import cache
from pathlib import Path

from theory_sim.cli import VERBS, build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "figures" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]

# `python -m theory_sim ...`, `torchrun ... -m theory_sim ...` and the `theory-sim ...` entry point, up to the end of
# the code span, the line or a shell comment
COMMAND = re.compile(r"(?:-m\s+theory_sim|(?<![\w/-])theory-sim)(?P<args>(?:[ \t]+[^\s`#]+)*)")
OPTION = re.compile(r"--(?:\[no-\])?[a-z][a-z0-9-]*")
CHOICES = re.compile(r"(?P<option>--[a-z][a-z0-9-]*) \{(?P<choices>[\w.,-]+)\}")


def name(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


@cache
def verb_parser(verb: str | None) -> argparse.ArgumentParser:
    """The parser of ``verb`` (with the verb's options added), or the top-level parser for None."""
    top = build_parser(verb)
    if verb is None:
        return top
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def commands(text: str) -> list[list[str]]:
    """The argument words of every CLI command in ``text`` (shell line continuations joined)."""
    return [m["args"].split() for m in COMMAND.finditer(text.replace("\\\n", " "))]


def problems(text: str) -> list[str]:
    """Unknown verbs, unknown options and choice lists that differ from the parser's, one string each."""
    found = []
    top = options_of(verb_parser(None))
    for words in commands(text):
        verb = next((w for w in words if w in VERBS), None)
        known = top | (options_of(verb_parser(verb)) if verb else {})
        first = next((w for w in words if not w.startswith(("-", "["))), None)
        if verb is None and first is not None and first.isidentifier() and first.islower():
            found.append(f"unknown verb {first!r} in: {' '.join(words)}")
        for word in words:
            for option in OPTION.findall(word):
                names = ([option.replace("[no-]", ""), option.replace("[no-]", "no-")] if "[no-]" in option
                         else [option])
                found += [f"unknown option {name} for {verb or 'the top level'}" for name in names
                          if name not in known]
    for m in CHOICES.finditer(text):
        actions = [options_of(verb_parser(v)).get(m["option"]) for v in VERBS]
        shown = set(m["choices"].split(","))
        real = [set(map(str, a.choices)) for a in actions if a is not None and a.choices]
        if real and shown not in real:
            found.append(f"{m['option']} {{{m['choices']}}}: the parser's choices are {sorted(real[0])}")
    return found


def test_every_documented_command_and_option_exists():
    shown = {name(doc): commands(doc.read_text()) for doc in DOCS}
    assert len(shown["README.md"]) >= 5 and len(shown["docs/usage.md"]) >= 20   # the extraction finds them
    assert {words[0] for words in shown["README.md"] if words} >= {"sweep", "verify", "figures", "simulate"}
    assert {name(doc): problems(doc.read_text()) for doc in DOCS} == {name(doc): [] for doc in DOCS}


def test_a_made_up_verb_option_or_choice_is_caught():
    assert problems("run `python -m theory_sim sweep s.toml --out d --no-such-option 3`") == [
        "unknown option --no-such-option for sweep"]
    assert problems("    python -m theory_sim simulat --d 3") == ["unknown verb 'simulat' in: simulat --d 3",
                                                         "unknown option --d for the top level"]
    assert problems("`python -m theory_sim verify DIR --[no-]bootstrap`") == [
        "unknown option --bootstrap for verify", "unknown option --no-bootstrap for verify"]
    assert problems("`--dtype {float64,float16}`") == [
        "--dtype {float64,float16}: the parser's choices are ['float32', 'float64']"]
    # an option of another verb is not an option of this one; continuation lines and the entry point are read
    assert problems("theory-sim verify DIR \\\n    --epochs 3") == ["unknown option --epochs for verify"]
    assert problems("python -m theory_sim --threads 2 VERB; `theory-sim simulate --d 3 --[no-]progress`") == []


def off_grid_cells(text: str) -> list[str]:
    """`figures runs/NAME --cell ...` examples whose cell is not on the grid of studies/NAME.toml (the check
    `figures` itself makes, theory_sim.sweeps.trajectory_figures.select_cell), one error line each."""
    import pandas as pd

    from theory_sim.config import ConfigError
    from theory_sim.sweeps.spec import SweepSpec
    from theory_sim.sweeps.trajectory_figures import parse_cell, select_cell

    found = []
    # a run directory is the preset of the same name, or the one a shown sweep command writes into it
    written = {words[words.index("--out") + 1]: ROOT / words[1] for words in commands(text)
               if words[:1] == ["sweep"] and "--out" in words and words[1].startswith("studies/")}
    for words in commands(text):
        if words[:1] != ["figures"] or "--cell" not in words:
            continue
        spec_file = written.get(words[1], ROOT / "studies" / f"{Path(words[1]).name}.toml")
        if not spec_file.exists():
            continue
        spec = SweepSpec.from_toml(spec_file)
        grid = pd.DataFrame([{k: getattr(cfg, k) for k in spec.cell_key} for _, cfg in spec.runs])
        try:
            select_cell(grid, parse_cell(words[words.index("--cell") + 1]), spec.cell_key)
        except ConfigError as exc:
            found.append(f"{' '.join(words)}: {exc}")
    return found


def test_every_documented_cell_is_on_its_presets_grid():
    assert {name(doc): off_grid_cells(doc.read_text()) for doc in DOCS} == {name(doc): [] for doc in DOCS}
    # the example the quick start's grid refused (issue 27), and a value of another grid
    assert len(off_grid_cells("`python -m theory_sim figures runs/phase_diagram_quick --cell d=3200,mu_norm=2`")) == 1
    assert off_grid_cells("`python -m theory_sim figures runs/phase_diagram_c23 --cell d=3200,mu_norm=2`") == []
    quick = "    python -m theory_sim sweep studies/phase_diagram_quick.toml --out runs/q\n"
    assert len(off_grid_cells(quick + "`python -m theory_sim figures runs/q --cell d=3200,mu_norm=2`")) == 1
    assert off_grid_cells(quick + "`python -m theory_sim figures runs/q --cell d=3200,mu_norm=2.13648`") == []


def broken_links(doc: Path, text: str) -> list[str]:
    """Relative markdown link targets (figures, files, folders; the #anchor dropped) that do not exist."""
    targets = re.findall(r"\]\((?!https?:|#)([^)#\s]+)", text)
    return [target for target in targets if not (doc.parent / target).exists()]


def test_every_relative_link_resolves():
    docs = DOCS
    assert {name(doc): broken_links(doc, doc.read_text()) for doc in docs} == {name(doc): [] for doc in docs}
    readme = ROOT / "README.md"
    assert broken_links(readme, "![f](figures/nope.png) [u](docs/usage.md#installing) [w](https://x.org/a)") == [
        "figures/nope.png"]


def load_timings_script():
    spec = importlib.util.spec_from_file_location("timings", ROOT / "benchmarks" / "timings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timings_script_records_wall_cpu_load_and_keeps_other_jobs(tmp_path, monkeypatch):
    timings = load_timings_script()
    burn = ("import time; t = time.process_time(); print('a'); print('3 runs in 1 s')\n"
            "while time.process_time() - t < 0.3: pass")
    monkeypatch.setattr(timings, "JOBS", {"burn": ("a CPU-bound child", ["python", "-c", burn], r" runs in "),
                                          "fail": ("a failing child", ["python", "-c", "raise SystemExit(4)"], "x")})
    out = tmp_path / "timings.json"
    out.write_text(json.dumps({"kept": {"wall_s": 1.0}}))
    timings.record(["burn"], out)
    entry = json.loads(out.read_text())["burn"]
    assert entry["exit_status"] == 0 and entry["summary"] == "3 runs in 1 s"
    assert 0.3 <= entry["cpu_s"] <= entry["wall_s"] + 0.2 and entry["nproc"] >= 1
    assert len(entry["loadavg_before"]) == len(entry["loadavg_after"]) == 3
    assert entry["command"].startswith("python -c ") and json.loads(out.read_text())["kept"] == {"wall_s": 1.0}
    timings.record(["fail"], out)   # a failing job is recorded as failing, not as a timing of the real thing
    failed = json.loads(out.read_text())["fail"]
    assert failed["exit_status"] == 4 and failed["summary"] == ""


def test_timings_come_from_the_benchmark_file():
    timings = json.loads((ROOT / "benchmarks" / "timings.json").read_text())
    assert timings["quick_start"]["exit_status"] == 0   # ("tests" is written after the test run that reads this file)
    for entry in timings.values():   # a test run's failures are recorded as they were (its summary line counts them)
        assert isinstance(entry["exit_status"], int) and entry["wall_s"] > 0 and entry["nproc"] >= 1
        assert len(entry["loadavg_before"]) == 3 and entry["command"].startswith("python -m ")
        assert entry["summary"] and entry["git_commit"] != "unknown"
    readme = (ROOT / "README.md").read_text()
    assert "benchmarks/timings.json" in readme
    # no duration written into the front door: it would go stale apart from the file
    duration = re.compile(r"\b\d+(?:\.\d+)? ?(?:s|min|minutes?|seconds?|hours?)\b")
    assert duration.findall(readme) == []
    assert duration.findall("the quick start takes about 75 s, the tests 2 min") == ["75 s", "2 min"]
