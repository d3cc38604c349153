"""README's promises to a newcomer: a front door (about 2,000 words at most, no line over 300 characters, exactly
two commands: install and run the main job, install and run the tests as CI does), its Python snippet and
docs/usage.md's run, the example script runs, and the docs name every preset, study script and output file that
exists."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from theory_sim.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
USAGE = (ROOT / "docs" / "usage.md").read_text()


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands(text: str) -> list[str]:
    """The indented (code block) lines of ``text`` outside fenced blocks."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_readme_is_a_front_door():
    assert len(README.split()) <= 2000
    assert [n for n, line in enumerate(README.splitlines(), 1) if len(line) > 300] == []
    install_and_run, tests = shell_commands(README)     # exactly two commands
    assert install_and_run.startswith("pip install torch==2.13.0 ") and "&& pip install -e . &&" in install_and_run
    assert install_and_run.endswith("python -m theory_sim sweep studies/phase_diagram_quick.toml --out runs/quick")
    assert tests == 'pip install -e ".[dev]" && python -m pytest -q'
    assert tests in (ROOT / ".ci" / "run").read_text().replace(" --durations=20", "")   # as CI runs them
    assert shell_commands("text\n\n    one\n\n```python\n    not a command\n```\n    two\n") == ["one", "two"]


def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks(README) + python_blocks(USAGE)
    assert len(blocks) == 2 and "SweepSpec" in blocks[0] and "train_ensemble" in blocks[1]
    for code in blocks:
        proc = run_python(code, tmp_path)  # in a fresh directory: its runs/ go there
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "mini" / "verify.md").exists()
    # the runner reports a failing block (the check above can fail)
    assert run_python(python_blocks("```python\nraise SystemExit(3)\n```\n")[0], tmp_path).returncode == 3


def test_usage_lists_every_preset_and_study_script():
    files = sorted((ROOT / "studies").glob("*.toml")) + sorted((ROOT / "studies").glob("*.py"))
    assert len(files) >= 10
    assert [f.name for f in files if f"`{f.name}`" not in USAGE] == []
    # and README's gallery has a line for every preset
    assert [f.stem for f in files if f.suffix == ".toml" and f"[{f.stem}](figures/" not in README] == []
    assert "theory-sim" in README and 'theory-sim = "theory_sim.cli:main"' in (ROOT / "pyproject.toml").read_text()


@pytest.fixture
def readme_sweep(tiny_sweep):
    """The tiny sweep on d = 40, 160 and ||mu|| = 1, 2, 4 (float64), SAM for 2 steps."""
    return tiny_sweep(chunk_runs=8, base={"n_mc": 300, "dtype": "float64"},
                      grid={"d": {"values": [40, 160]}, "mu_norm": {"values": [1.0, 2.0, 4.0]}},
                      optimizers=[{"label": "sgd", "optimizer": "sgd"},
                                  {"label": "sam", "optimizer": "sam", "sam_steps": 2}])


@pytest.fixture(scope="module")
def simulate_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("readme") / "sim"
    assert main(["simulate", "--optimizer", "sam", "--d", "60", "--epochs", "4", "--seeds", "2", "--n-test", "50",
                 "--n-mc", "300", "--no-progress", "--out", str(out)]) == 0
    return out


def unnamed(names: list[str]) -> list[str]:
    """The names docs/usage.md never mentions (a trajectory figure is named by its pattern)."""
    return [n for n in names if n not in USAGE and not (n.startswith("trajectories_") and
                                                        "trajectories_<cell>.png" in USAGE)]


def test_usage_names_every_output_file(readme_sweep, simulate_run, tmp_path):
    assert unnamed(sorted(p.name for p in simulate_run.iterdir())) == []
    (tmp_path / "tiny.toml").write_text(readme_sweep)
    out = tmp_path / "sweep"
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--out", str(out), "--executor", "inline",
                 "--no-progress"]) == 0
    top = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    assert {"run.json", "spec.json", "shards/", "figures/", "verify.md", "trajectories.parquet"} <= set(top)
    assert unnamed(top) == []
    assert unnamed(sorted(p.name for p in (out / "figures").iterdir())) == []
    assert unnamed(["not_an_output.png"]) == ["not_an_output.png"]


def test_example_plots_one_trajectory(simulate_run, tmp_path):
    script = ROOT / "examples" / "load_and_plot_trajectory.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    png = tmp_path / "one.png"
    proc = subprocess.run([sys.executable, str(script), str(simulate_run), "--seed", "1", "--out", str(png)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "17 logged steps" in proc.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    bad = subprocess.run([sys.executable, str(script), str(simulate_run), "--seed", "9"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "seeds in the table: [0, 1]" in bad.stderr
