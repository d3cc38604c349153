"""Figures fit for a paper (issue 27): the same table gives the same bytes, every legend entry shows on its box, titles
say only what is drawn, no grid slot is left empty, shaded bands and markers are explained, non-negative quantities
get linear or log axes, and the swept quantities are written in mathtext."""
from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib
import matplotlib.lines
import matplotlib.mathtext
import matplotlib.patheffects
import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

import theory_sim.cnn.plotting as plotting
from theory_sim.cnn.plotting import PANELS, assignments, plot_trajectory, symbol
from theory_sim.io import save_figure
from theory_sim.sweeps.figures import diverged_note, phase_diagram

ROOT = Path(__file__).resolve().parent.parent


def small_figure():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 2], label=r"$\|\mu\|$")
    ax.legend()
    return fig


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_the_same_figure_gives_the_same_bytes(fmt, tmp_path):
    """save_figure stamps no version or date and takes SVG ids from a fixed salt: two saves are byte-identical.
    matplotlib's own savefig writes its version into a PNG and random ids into an SVG."""
    fig = small_figure()
    save_figure(fig, tmp_path / f"a.{fmt}")
    save_figure(fig, tmp_path / f"b.{fmt}")
    a = (tmp_path / f"a.{fmt}").read_bytes()
    assert a == (tmp_path / f"b.{fmt}").read_bytes()
    assert b"Matplotlib" not in a and b"CreationDate" not in a
    fig.savefig(tmp_path / f"plain1.{fmt}")
    fig.savefig(tmp_path / f"plain2.{fmt}")
    plain = (tmp_path / f"plain1.{fmt}").read_bytes()
    if fmt in ("png", "pdf"):
        assert b"Matplotlib" in plain          # the stamp save_figure leaves out
    if fmt == "svg":
        assert plain != (tmp_path / "plain2.svg").read_bytes()
    plt.close(fig)


@pytest.mark.slow
def test_a_committed_gallery_figure_redraws_byte_for_byte(tmp_path):
    """`figures --gallery` on a committed table gives the committed PNG byte for byte; a table changed in one cell
    does not."""
    from theory_sim.cli import main

    run = tmp_path / "phase_diagram_quick"
    shutil.copytree(ROOT / "figures" / "results" / "phase_diagram_quick", run)
    committed = (ROOT / "figures" / "phase_diagram_quick.png").read_bytes()
    assert main(["figures", str(run), "--gallery", str(tmp_path / "gallery")]) == 0
    assert (tmp_path / "gallery" / "phase_diagram_quick.png").read_bytes() == committed
    df = pd.read_parquet(run / "results.parquet")
    df.loc[(df.d == df.d.max()) & (df.label == "sgd") & (df.mu_norm == df.mu_norm.max()), "test_error"] = 0.5
    df.to_parquet(run / "results.parquet", index=False)
    assert main(["figures", str(run), "--gallery", str(tmp_path / "changed")]) == 0
    assert (tmp_path / "changed" / "phase_diagram_quick.png").read_bytes() != committed


def shows_on_white(line) -> bool:
    """A legend line shows on a pale box: a dark colour, or a dark outline drawn under it."""
    dark = lambda colour: sum(to_rgb(colour)) / 3 < 0.5  # noqa: E731
    strokes = [pe for pe in line.get_path_effects() if isinstance(pe, matplotlib.patheffects.withStroke)]
    return dark(line.get_color()) or any(dark(pe._gc.get("foreground", "w")) for pe in strokes)


def synthetic_phase(nan_cell: bool = False):
    """Two variants on a 3 x 4 grid of (d, ||mu||) with a located boundary each."""
    ds, mus = np.array([100.0, 400.0, 1600.0]), np.array([0.5, 1.0, 2.0, 4.0])
    grids = {"sgd": np.linspace(0.5, 0.05, 12).reshape(4, 3), "sam": np.linspace(0.4, 0.05, 12).reshape(4, 3)}
    if nan_cell:
        grids["sam"][0, 0] = np.nan
    bnd = pd.DataFrame([dict(label=lab, d=d, n=20, P=2, sigma_p=1.0, mu_star=m * d ** 0.25 / 3, status="ok")
                        for lab, m in (("sgd", 1.0), ("sam", 0.7)) for d in ds])
    fits = pd.DataFrame([dict(label=lab, dim="d", n=20, P=2, sigma_p=1.0, slope=0.25, intercept=np.log(m / 3))
                         for lab, m in (("sgd", 1.0), ("sam", 0.7))])
    edges = (np.array([50.0, 200, 800, 3200]), np.array([0.35, 0.7, 1.4, 2.8, 5.6]))
    fig = phase_diagram(grids, ["sgd", "sam"], ("d", "mu_norm"), edges, (True, True), (0.14, 0.2),
                        (bnd, fits, {"n": 20, "P": 2, "sigma_p": 1.0}))
    fig._bnd = (bnd, fits, {"n": 20, "P": 2, "sigma_p": 1.0})
    return fig, grids


def test_phase_diagram_legend_entries_show_and_titles_are_true():
    """Every boundary and fit entry of the legend shows on its pale box (SAM's white lines are outlined in black; a
    bare white line would not show); grey cells are named only when some cell has no converged run."""
    fig, grids = synthetic_phase()
    legend = fig.axes[0].get_legend()
    lines = legend.get_lines()
    assert [t.get_text() for t in legend.get_texts()] == ["sgd: boundary", "sgd: fit slope 0.25", "sam: boundary",
                                                          "sam: fit slope 0.25"]
    assert all(shows_on_white(line) for line in lines)
    assert not shows_on_white(matplotlib.lines.Line2D([0], [0], color="w"))
    assert diverged_note(grids) == ""
    plt.close(fig)
    fig, grids = synthetic_phase(nan_cell=True)
    assert "grey: every run diverged" in diverged_note(grids)
    texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert r"signal strength $\|\mu\|$" in texts and not any("||mu||" in t for t in texts)
    plt.close(fig)


def test_cells_outside_the_domain_are_hatched_and_the_fitted_law_has_its_band():
    """issue 24: the phase diagram hatches each variant's cells outside its theorem's domain (here d = 100 for sgd,
    nothing for sam; the difference panel: outside either's) and draws each claim's fitted law with the band of its
    slope interval in the boundaries panel."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Rectangle

    fig0, _ = synthetic_phase()
    bnd, fits, sl = fig0._bnd
    plt.close(fig0)
    outside = {"sgd": np.zeros((4, 3), bool), "sam": np.zeros((4, 3), bool)}
    outside["sgd"][:, 0] = True
    law = dict(variant="sgd", scope="in domain", estimate=0.25, ci_low=0.2, ci_high=0.3, dim="d", fixed={},
               law={"intercept": np.log(1 / 3), "log_x_mean": np.log(400.0), "log_x_min": np.log(100.0),
                    "log_x_max": np.log(1600.0)})
    grids = {"sgd": np.linspace(0.5, 0.05, 12).reshape(4, 3), "sam": np.linspace(0.4, 0.05, 12).reshape(4, 3)}
    edges = (np.array([50.0, 200, 800, 3200]), np.array([0.35, 0.7, 1.4, 2.8, 5.6]))
    fig = phase_diagram(grids, ["sgd", "sam"], ("d", "mu_norm"), edges, (True, True), (0.14, 0.2),
                        (bnd, fits, sl, [law]), outside)
    hatched = lambda ax: [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]  # noqa: E731
    by_title = {ax.get_title(): ax for ax in fig.axes}
    sgd_top, sam_top = by_title["sgd: mean test error"], by_title["sam: mean test error"]
    diff_top = next(ax for title, ax in by_title.items() if title.startswith("sam - sgd"))
    assert [(p.get_x(), p.get_x() + p.get_width()) for p in hatched(sgd_top)] == [(50.0, 200.0)]
    assert hatched(sam_top) == [] and len(hatched(diff_top)) == 1
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("located boundaries"))
    band = [c for c in panel.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1   # sgd's law has an interval; sam has no law row: no band
    ys = band[0].get_paths()[0].vertices[:, 1]
    assert ys.min() < 1 / 3 * 100 ** 0.25 < ys.max()
    texts = [t.get_text() for t in panel.get_legend().get_texts()]
    assert texts[0] == "sgd: slope 0.25 [0.20, 0.30] (in domain)" and "outside the theorem's domain" in texts[-1]
    plt.close(fig)


def test_mathtext_names_of_the_swept_quantities():
    assert assignments({"d": 3200, "mu_norm": 2.0, "sigma_p": 1.0}) == r"$d=3200$, $\|\mu\|=2$, $\sigma_p=1$"
    assert symbol("lr_step_gamma") == r"\mathrm{lr\_step\_gamma}"    # an unlisted axis, upright and escaped
    for key in ("d", "mu_norm", "sigma_p", "lr_step_gamma", "c_tau"):  # each parses as mathtext
        matplotlib.mathtext.MathTextParser("agg").parse(f"${symbol(key)}=1$")


def synthetic_trajectory(columns, rho_start: float = 0.0) -> pd.DataFrame:
    """Two optimizers x 3 seeds over 11 logged steps; Rho starts at rho_start (0: as every run starts)."""
    rng = np.random.default_rng(0)
    rows = []
    for opt in ("sgd", "sam"):
        for seed in range(3):
            for step in range(11):
                row = {c: rng.uniform(0.1, 1.0) for c in columns}
                row.update(optimizer=opt, seed=seed, step=step, train_loss=np.exp(-step) + 1e-3,
                           rhobar_mean=rho_start + step, rhobar_max=rho_start + 2 * step, rhounder_min=-step)
                rows.append(row)
    return pd.DataFrame(rows)[["optimizer", "seed", "step", *columns]]


def empty_slots(fig) -> int:
    """Slots of the figure's grid that no axes covers (the key counts)."""
    specs = [ax.get_subplotspec() for ax in fig.axes if ax.get_subplotspec() is not None]
    nrow, ncol = specs[0].get_gridspec().get_geometry()
    covered = {(r, c) for s in specs for r in s.rowspan for c in s.colspan}
    return nrow * ncol - len(covered)


@pytest.mark.parametrize("n_panels", [11, 10, 9])
def test_trajectory_figure_fills_its_grid_and_explains_its_bands(n_panels, tmp_path, monkeypatch):
    """11 panels (test error logged), 10 (not logged) or 9: the key takes the spare slots (or a short row of its own),
    so none is empty; it names the colours, the SAM -> SGD marker and what the line and the shaded band are, and
    no text sits on the panels. The training loss is drawn log (positive), Rho linear (it starts at 0), log once it
    is positive; nothing symmetric-log."""
    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path, dpi: figures.append(fig))
    columns = [p[0] for p in PANELS][:n_panels] if n_panels != 10 else [p[0] for p in PANELS if p[0] != "test_error"]
    plot_trajectory(synthetic_trajectory(columns), tmp_path / "t.png", bayes_error=0.1, markers={"SAM -> SGD": 5})
    fig = figures[-1]
    assert empty_slots(fig) == 0 and len(fig.axes) == n_panels + 1
    key = [ax for ax in fig.axes if not ax.axison]
    assert len(key) == 1
    legend = key[0].get_legend()
    entries = [t.get_text() for t in legend.get_texts()]
    assert {"sgd", "sam", "SAM -> SGD (step 5)"} <= set(entries)
    assert "mean over the 3 seeds" in legend.get_title().get_text() and "shaded: min to max" in \
        legend.get_title().get_text()
    panels = {ax.get_title(): ax for ax in fig.axes if ax.axison}
    assert all(not ax.texts for ax in panels.values())     # no label over the panel titles
    scales = {col: panels[label].get_yscale() for col, label, _ in PANELS if label in panels}
    assert scales["train_loss"] == "log" and scales["rhobar_mean"] == "linear" and "symlog" not in scales.values()
    plot_trajectory(synthetic_trajectory(columns, rho_start=0.5), tmp_path / "t.png")
    assert {ax.get_title(): ax for ax in figures[-1].axes}[PANELS[4][1]].get_yscale() == "log"
    # the checker itself: a 4 x 3 grid with 10 panels has 2 empty slots
    fig, axes = plt.subplots(4, 3)
    for ax in axes.flat[10:]:
        fig.delaxes(ax)
    assert empty_slots(fig) == 2
    plt.close("all")


def test_scaling_figure_without_any_located_boundary_is_drawn(tmp_path):
    """A swept axis whose cells never become benign (no mu*): the panel says so instead of failing to log-scale."""
    from types import SimpleNamespace

    from theory_sim.sweeps.figures import _scaling_figure

    bnd = pd.DataFrame([dict(label="sgd", d=30, n=4, P=2, sigma_p=1.0, sigma_0=s0, mu_star=np.nan,
                             status="never_benign") for s0 in (0.01, 0.02)])
    spec = SimpleNamespace(name="t", optimizers=[SimpleNamespace(label="sgd", optimizer="sgd")])
    path = _scaling_figure(bnd, pd.DataFrame(), ["sigma_0"], ["sgd"], spec, tmp_path,
                           ("d", "n", "P", "sigma_p", "sigma_0"))
    assert path.exists() and path.stat().st_size > 0
