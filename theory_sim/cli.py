"""``python -m theory_sim <verb>``: one argparse subcommand per verb.

Each verb lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; this file only
dispatches. Every failure is one line on stderr: parameter errors raised as ``ConfigError`` before any work starts
(``error: ...``, exit 2); a result that could not be written, ``ResultWriteError`` or any other ``OSError`` (``error:
could not write PATH: REASON``, exit 1); running out of memory anyway, past the estimate of
``theory_sim.resources`` (``error: out of memory ...``, exit 1); Ctrl-C (``interrupted``, exit 130); SIGTERM
during a sweep (``terminated: ...``, exit 143).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from theory_sim.config import ConfigError

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "simulate": ("theory_sim.cnn.simulate_verb", "train SGD/SAM two-layer CNN runs at one setting, track gamma/rho"),
    "sweep": ("theory_sim.sweeps.runner", "run (or resume) a phase-diagram sweep from a TOML spec"),
    "sweep-status": ("theory_sim.sweeps.status", "chunks done / total and ETA of a sweep directory"),
    "search": ("theory_sim.sweeps.search", "locate the benign boundary per cell by bisection in ||mu|| (resumable)"),
    "figures": ("theory_sim.sweeps.figures", "regenerate every figure of a sweep from its stored results"),
    "sharpness": ("theory_sim.cnn.run_sharpness", "Hessian spectrum, trace and R_Max/R_Asc/R_Avg of a simulate run"),
    "verify": ("theory_sim.sweeps.verify", "fit the benign/harmful boundary's shape and compare it with the theorems"),
    "cifar": ("theory_sim.cifar.train", "train a WideResNet on CIFAR-10/100 with SGD or the SAM family"),
}


# Torch threads per process when --threads is not given. The theory verbs work on many small tensors, where a
# second OpenMP thread buys nothing and can cost a lot (measured here on 2 vCPUs: a 400k-element op took 0.7 ms on
# one thread and 40 ms on two); their parallelism comes from processes instead (sweep --executor process).
# ``cifar`` trains large convolutions and keeps torch's default.
DEFAULT_THREADS = {"cifar": None}
# More threads than 4 per CPU only oversubscribes; a huge count made OpenMP fail to map its stacks (an ImportError
# deep inside torch)
MAX_THREADS = 4 * (os.cpu_count() or 1)
# Verbs that set the threads themselves, where they run torch: ``sweep`` runs torch in its own process only with
# ``--executor inline`` (its local pool's workers set theirs), so its parent skips torch's ~1 s import and starts the
# workers sooner (theory_sim.sweeps.runner.run).
DEFERRED_THREADS = {"sweep"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help (argparse's ArgumentDefaultsHelpFormatter), except where there is nothing to
    show (no default, a flag that is off) or the help text already states it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def config_defaults(verb: str) -> tuple[dict, str]:
    """The values that a verb's options left at None take from its config dataclass (shown in --help), and how to
    name them there."""
    if verb == "simulate":
        from theory_sim.cnn.simulate_verb import flag_fields
        from theory_sim.config import SimConfig

        cfg = SimConfig.preset("c23")
        return {f.name: getattr(cfg, f.name) for f in flag_fields()}, "default with --preset c23"
    if verb == "cifar":
        from dataclasses import asdict

        from theory_sim.cifar.config import CifarConfig

        return asdict(CifarConfig()), "default"
    return {}, "default"


def show_config_defaults(parser: argparse.ArgumentParser, verb: str) -> None:
    """Append the config's value to the help of every option whose argparse default is None (= the config's)."""
    values, name = config_defaults(verb)
    for action in parser._actions:
        value = values.get(action.dest)
        if action.default is None and value is not None and action.help and "default" not in action.help:
            action.help += f" ({name}: {value})"


def version() -> str:
    """The installed distribution's version (``theory_sim.config.package_version``)."""
    from theory_sim.config import package_version

    return package_version()


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen verb's module is imported (fast start, and one verb's dependencies
    never break another's)."""
    parser = argparse.ArgumentParser(prog="python -m theory_sim",
                                     description="theory_sim: check theorems about SAM against simulation.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"theory_sim {version()}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default 1; cifar: torch's default)")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (module, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == verb:
            importlib.import_module(module).add_arguments(p)
            show_config_defaults(p, name)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in argv if a in VERBS), None)
    args = build_parser(verb).parse_args(argv)
    threads = args.threads if args.threads is not None else DEFAULT_THREADS.get(args.verb, 1)
    if threads is not None:
        if not 1 <= threads <= MAX_THREADS:
            print(f"error: threads must be in [1, {MAX_THREADS}] (4 per CPU of this machine), got {threads}",
                  file=sys.stderr)
            return 2
        args.threads = threads
        if args.verb not in DEFERRED_THREADS:
            import torch

            torch.set_num_threads(threads)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except ConfigError as exc:  # invalid parameters: one clear line, no traceback
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a result could not be written (disk full, read-only, permissions): not a parameter error
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:  # past the estimate of theory_sim.resources (or --force-memory)
        # numpy raises MemoryError; torch's CPU allocator a RuntimeError "can't allocate memory", CUDA's
        # OutOfMemoryError (a RuntimeError) "out of memory"
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc) and "out of memory" not in str(exc):
            raise
        print("error: out of memory (numpy/torch could not allocate an array); lower the sizes, or see "
              "docs/usage.md 'What happens when things go wrong' for the memory estimate", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C (or a verb's SIGTERM): finished results are on disk (atomic writes)
        print(_one_line(exc) if str(exc) else "interrupted", file=sys.stderr)
        return getattr(exc, "exit_status", 130)   # 130 = 128 + SIGINT; a SIGTERM's 143


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. ``ResultWriteError`` already reads ``could not write PATH: REASON``; a
    plain ``OSError`` is shown as ``PATH: REASON``."""
    from theory_sim.io import (
        ResultWriteError,  # here, not at the top: the CLI starts without pandas
    )

    if isinstance(exc, OSError) and not isinstance(exc, ResultWriteError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
