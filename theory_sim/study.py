"""The plumbing every script in ``studies/`` shares (docs/architecture.md, "Where to add ... a study"): where a study
writes, its tables as markdown, figures through ``theory_sim.io``, torch's thread count. A package module, so
``python studies/<name>.py`` imports it from any working directory (a script's own folder is not a package)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from theory_sim.io import atomic_write_bytes, save_figure, save_table

STUDY_THREADS = 1  # the studies' models are small: one thread is as fast and far steadier on a shared machine


class Study:
    """One study's outputs, named after its script: ``figures/<name>.png`` (``figures/<name><suffix>``),
    ``figures/<name>.md`` and tables in ``figures/results/<name>/``. ``out`` replaces ``figures/`` (a study's
    ``--out``); creating a Study sets torch's thread count (``threads``)."""

    def __init__(self, script: str | os.PathLike, out: str | os.PathLike | None = None,
                 threads: int | None = STUDY_THREADS):
        self.name = Path(script).stem
        self.figures = Path(script).resolve().parent.parent / "figures" if out is None else Path(out)
        self.results = self.figures / "results" / self.name
        if threads is not None:
            torch.set_num_threads(threads)

    def path(self, suffix: str = ".png") -> Path:
        return self.figures / f"{self.name}{suffix}"

    def save_figure(self, fig, suffix: str = ".png", dpi: int = 100) -> Path:
        """Write the figure atomically (``theory_sim.io.save_figure``), close it and return its path."""
        import matplotlib.pyplot as plt

        path = self.path(suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, path, dpi=dpi)
        plt.close(fig)
        return path

    def write_markdown(self, text: str, suffix: str = ".md") -> Path:
        """``text`` (plus a final newline) to ``figures/<name>.md``, atomically."""
        path = self.path(suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (text + "\n").encode())
        return path

    def save_table(self, df: pd.DataFrame, table: str, sidecar: dict | None = None) -> Path:
        """``df`` as ``figures/results/<name>/<table>.parquet`` with its JSON sidecar (``theory_sim.io``)."""
        path = self.results / f"{table}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_table(df, path, sidecar)
        return path


def _cell(value, float_format: str) -> str:
    if isinstance(value, float):
        return float_format.format(value)
    return str(value).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, float_format: str = "{:.4g}", index: bool = True) -> str:
    """A GitHub markdown table of ``df`` (pandas' ``to_markdown`` needs ``tabulate``, not a dependency). Floats go
    through ``float_format``; the index (named or not) is the first column(s); MultiIndex labels join with " "."""
    def label(key) -> str:
        return " ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)

    names = [label(c) for c in df.columns]
    rows = [[_cell(v, float_format) for v in row] for row in df.itertuples(index=False, name=None)]
    if index:
        index_names = [("" if n is None else str(n)) for n in df.index.names]
        names = index_names + names
        keys = [k if isinstance(k, tuple) else (k,) for k in df.index]
        rows = [[_cell(k, float_format) for k in key] + row for key, row in zip(keys, rows)]
    lines = ["| " + " | ".join(names) + " |", "| " + " | ".join("---" for _ in names) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def text_table(df: pd.DataFrame, float_format: str = "{:.4g}") -> list[str]:
    """``df.to_string`` in a fenced block, as lines (the fixed-width tables of the committed study reports)."""
    return ["```", df.to_string(float_format=lambda v: float_format.format(v)), "```"]
