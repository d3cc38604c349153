"""Results on disk: atomic writes, parquet tables with a JSON sidecar, provenance (config, git commit, versions).

A finished result is never lost or half-written: every file is written to a temporary file in the same directory,
flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX), so a reader sees either the old
file or the complete new one.
"""
from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


class ResultWriteError(OSError):
    """Writing a result file failed (disk full, read-only file system, no permission). The message names the file,
    e.g. ``could not write runs/x/summary.parquet: No space left on device``; the previous version of the file (if
    any) is intact and no temporary file is left. The CLI prints it as one line and exits with status 1."""

    def __init__(self, path: str | os.PathLike, cause: OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, reason)
        self.path, self.cause = Path(path), cause
        self.filename = str(path)

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.strerror}"

    def __reduce__(self):
        # rebuilt from (path, cause), not OSError's (errno, strerror): a pool worker's error reaches the sweep's
        # process as itself (one line), not as a BrokenProcessPool
        return type(self), (self.path, self.cause)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically: a temp file in the same directory, fsync, chmod, rename. Any
    ``OSError`` becomes a ``ResultWriteError`` naming ``path``; on every failure (also an interrupt) the temp file is
    removed and ``path`` keeps its previous content."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the writer's pid in the name: a later run can tell a killed writer's leftover (removed, see
        # theory_sim.sweeps.store.remove_stale_temp_files) from a live writer's file
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ResultWriteError(path, exc) from exc
    try:
        try:
            fh = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give results the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:  # already renamed, or never created: nothing to clean
            pass
        if isinstance(exc, OSError) and not isinstance(exc, ResultWriteError):
            raise ResultWriteError(path, exc) from exc
        raise


# Metadata a backend would stamp into the file besides the drawing (matplotlib's version, a date): left out, so that
# the same table redrawn gives the same bytes on every machine and day (the committed gallery is checked that way)
_NO_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
                "svg": {"Creator": None, "Date": None}}


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """A matplotlib figure, rendered in memory and written atomically like every other result; the same figure
    gives the same bytes (no version or date stamped, SVG ids from a fixed salt)."""
    import matplotlib

    fmt = Path(path).suffix.lstrip(".") or "png"
    buf = io.BytesIO()
    try:
        with matplotlib.rc_context({"svg.hashsalt": "theory_sim"}):  # else SVG ids are random per file
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=_NO_METADATA.get(fmt))
    except OSError as exc:  # a backend writing through the file system failed: the figure's write failed
        raise ResultWriteError(path, exc) from exc
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def save_table(df: pd.DataFrame, path: str | os.PathLike, sidecar: dict | None = None) -> None:
    """Write ``df`` as parquet and, when given, its metadata as ``<path without .parquet>.json``."""
    write_parquet(df, path)
    if sidecar is not None:
        write_json(Path(path).with_suffix(".json"), sidecar)


def git_commit() -> str:
    """The commit of the theory_sim checkout (with '-dirty' when it has uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _torch_version() -> str:
    """torch's version, without importing torch where it is not loaded (a sweep's parent process)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        import torch

        return torch.__version__


def provenance() -> dict[str, Any]:
    import numpy as np

    from theory_sim.config import package_version

    return {
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "argv": sys.argv,
        "versions": {"python": platform.python_version(), "theory_sim": package_version(),
                     "torch": _torch_version(), "numpy": np.__version__, "pandas": pd.__version__},
    }
