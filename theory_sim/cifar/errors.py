"""What can go wrong with a CIFAR run's files, as exceptions the CLI prints as ONE line (``error: ...``): bad input
exits 2, a failed write exits 1.

Every class but ``OutputWriteError`` is a ``ConfigError``, so ``python -m theory_sim cifar`` reports it without a traceback. Each message names
the file, says what is wrong with it and what to do; ``one_line`` keeps a wrapped exception's text on one line.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Iterator

from theory_sim.config import ConfigError


class CifarDataError(ConfigError):
    """A CIFAR file is there but unreadable or not in the python-pickle format (truncated, corrupt, wrong keys)."""


class DataNotFoundError(CifarDataError):
    """The CIFAR files are not where the loader looks; the message says where to put which file."""


class BadPickleError(CifarDataError, pickle.UnpicklingError):
    """A batch file does not unpickle to a CIFAR batch (also an ``UnpicklingError``, for callers catching that)."""


class CheckpointError(ConfigError):
    """``checkpoint.pt`` or ``config.json`` of a run cannot be read back; the file is left as it is."""


class ResumeMismatchError(ConfigError):
    """``--resume`` asked for settings that differ from the ones the run was trained with."""


class OutputWriteError(OSError):
    """Writing a result file failed (disk full, permissions); the previous version of the file is intact. An
    ``OSError``, not a parameter error: the CLI prints its one line and exits 1, like every failed write."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "could not write a result file"


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``exc`` as a short single line: type and message, whitespace collapsed, cut at ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, OSError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into an ``OutputWriteError`` naming it. The writes inside
    are atomic (temp file + fsync + rename), so the file on disk is still the previous complete version."""
    try:
        yield
    except OSError as exc:  # also theory_sim.io's own write error (an OSError): its strerror is the bare reason
        path = Path(path)
        raise OutputWriteError(
            f"cannot write {path}: {exc.strerror or one_line(exc)}; the previous {path.name} (if any) is unchanged. Free disk space "
            f"(or fix the permissions of {path.parent}) and run again; --resume continues from the last checkpoint"
        ) from exc
