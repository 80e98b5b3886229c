"""Run directories and flat result rows.

One run = one directory ``results/runs/<run_key>/`` holding ``config.yaml`` (resolved), ``samples.jsonl`` and
``record.json`` (one flat row). ``record.json`` is written last and atomically: its presence means the run is done.
The CSV table is a merge of the records under a file lock, keyed by ``run_key`` (a re-run replaces its row), so
concurrent SLURM array tasks never lose or tear rows; ``rebuild_csv`` regenerates it from the run directories.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

RECORD, SAMPLES, CONFIG, FAILED = "record.json", "samples.jsonl", "config.yaml", "failed.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, path)


def to_jsonable(v):
    """numpy / torch scalars -> Python; NaN and inf -> None, so JSON and CSV stay valid."""
    if isinstance(v, dict):
        return {k: to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(to_jsonable(obj), indent=1, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))


def read_record(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / RECORD
    return json.loads(p.read_text()) if p.exists() else None


def percentile(values, q: float) -> float:
    """The nearest-rank percentile, the one definition of the harness (records and benchmark CSVs): the smallest value
    with at least a fraction ``q`` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summarize(values: list, prefix: str, warmup: int = 0) -> dict:
    """Median and p90 (:func:`percentile`) of the non-warm-up values (all values if there are no more than
    ``warmup``)."""
    vals = [v for v in values if v is not None]
    if len(vals) > warmup:
        vals = vals[warmup:]
    if not vals:
        return {f"{prefix}": None, f"{prefix}_p90": None}
    arr = np.asarray(vals, dtype=float)
    return {prefix: float(np.median(arr)), f"{prefix}_p90": float(percentile(vals, 0.9))}


def upsert_csv(csv_path: str | Path, row: dict, key: str = "run_key", rebuild_from: str | Path | None = None) -> None:
    """Insert ``row`` into the CSV, replacing any row with the same key; columns are the union of all rows.

    A CSV that cannot be read (truncated, not a CSV, no ``key`` column) is moved aside to ``<name>.corrupt-<time>``,
    named on stderr, and rebuilt from the records under ``rebuild_from`` (a results folder) before the upsert."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(csv_path) + ".lock"):
        new = pd.DataFrame([to_jsonable(row)])
        if csv_path.exists() and csv_path.stat().st_size > 0:
            try:
                old = pd.read_csv(csv_path)
                old = old[old[key] != row[key]]
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, KeyError) as e:
                aside = csv_path.with_name(f"{csv_path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(csv_path, aside)
                if rebuild_from is None:
                    raise ValueError(f"{csv_path} is not a readable results table ({type(e).__name__}: {e}); "
                                     f"moved to {aside}") from e
                old = _records_frame(rebuild_from)
                old = old[old[key] != row[key]] if len(old) else old
                print(f"[tango] {csv_path} was not a readable results table ({type(e).__name__}: {e}); moved it to "
                      f"{aside} and rebuilt it from the {len(old)} other records under {rebuild_from}",
                      file=sys.stderr, flush=True)
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        fd, tmp = tempfile.mkstemp(prefix=csv_path.name + ".", dir=csv_path.parent)
        os.close(fd)
        new.to_csv(tmp, index=False)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, csv_path)


def _records_frame(results_dir: str | Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(p.read_text()) for p in sorted(Path(results_dir).glob(f"runs/*/{RECORD}"))])


def rebuild_csv(results_dir: str | Path, csv_path: str | Path) -> pd.DataFrame:
    """Regenerate the CSV from every ``runs/*/record.json`` (one row per run directory)."""
    df = _records_frame(results_dir)
    with FileLock(str(csv_path) + ".lock"):
        df.to_csv(csv_path, index=False)
    return df
