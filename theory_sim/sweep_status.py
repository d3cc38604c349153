"""``python -m theory_sim sweep-status DIR``: chunks and runs done, and an ETA from the finished chunks' times."""
from __future__ import annotations

import argparse
from pathlib import Path

from theory_sim.sweep import status


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="sweep directory")


def run(args: argparse.Namespace) -> int:
    s = status(args.dir)
    eta = s["eta_seconds"]
    print(f"{s['name']}: {s['chunks_done']}/{s['chunks_total']} chunks, {s['runs_done']}/{s['runs_total']} runs "
          f"done; ETA {eta / 60:.1f} min; {s['chunks_submitted_pending']} chunks submitted and pending; "
          f"results.parquet {'written' if s['results'] else 'not yet written'}")
    return 0
