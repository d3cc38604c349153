"""The sweep directory on disk: its spec, its shards and their completeness (read by the runner, status, figures
and verify; it imports none of them).

Layout of a sweep directory::

    DIR/spec.json             the normalised spec and its digest (a different spec in DIR is refused)
    DIR/shards/chunk-NNNNN.parquet   one row per run of chunk NNNNN, written atomically when the chunk finishes
    DIR/results.parquet       every shard, concatenated and sorted (+ results.json: spec, provenance)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from theory_sim.config import ConfigError
from theory_sim.io import provenance, write_json
from theory_sim.sweeps.spec import RUN_KEY, SweepSpec


def shard_path(out: Path, chunk_id: int) -> Path:
    return Path(out) / "shards" / f"chunk-{chunk_id:05d}.parquet"

def load_spec(out: Path) -> SweepSpec:
    """The spec of a sweep directory: spec.json, or the copy in results.json (so results alone suffice)."""
    for name in ("spec.json", "results.json"):
        path = Path(out) / name
        if path.exists():
            return SweepSpec.from_dict(json.loads(path.read_text())["spec"])
    raise ConfigError(f"DIR must be a sweep directory holding spec.json or results.json; neither is in {out}")

def prepare(spec: SweepSpec, out: Path) -> None:
    """Create DIR with spec.json, or check that the spec stored there is the same one."""
    out = Path(out)
    path = out / "spec.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("digest") != spec.digest():
            raise ConfigError(f"spec differs from the one that produced the results in {out} (digest "
                              f"{stored.get('digest')} vs {spec.digest()}); use a new --out directory, or delete "
                              f"{out} to start over")
    else:
        write_json(path, {"spec": spec.to_dict(), "digest": spec.digest(), **provenance()})

def shard_is_complete(path: Path, chunk) -> bool:
    """A shard counts as done only if it reads back and holds exactly the chunk's runs."""
    if not path.exists():
        return False
    try:
        df = pd.read_parquet(path, columns=list(RUN_KEY))
    except Exception:  # noqa: BLE001 - any unreadable file (truncated, corrupt, not parquet) is recomputed
        return False
    got = sorted(map(tuple, df[list(RUN_KEY)].itertuples(index=False, name=None)))
    want = sorted(tuple(key) for key, _ in chunk)
    return got == want

def missing_chunks(spec: SweepSpec, out: Path) -> list[int]:
    return [i for i, chunk in enumerate(spec.chunks()) if not shard_is_complete(shard_path(out, i), chunk)]

def pending_chunks(out: Path, chunk_ids: list[int]) -> list[int]:
    """Chunks submitted through submitit whose jobs may still be queued or running (before their time limit)."""
    record = Path(out) / "submitted.json"
    if not record.exists():
        return []
    submitted = json.loads(record.read_text())
    now = time.time()
    return [i for i in chunk_ids if str(i) in submitted and submitted[str(i)]["deadline"] > now]


