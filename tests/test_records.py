"""Result rows: atomic records, a CSV that many processes can update at once, warm-up-aware latency summaries."""

import json
import math
import multiprocessing as mp

import numpy as np
import pandas as pd
import pytest

from tango.records import rebuild_csv, summarize, to_jsonable, upsert_csv, write_json

pytestmark = pytest.mark.unit


def _writer(args):
    path, i = args
    upsert_csv(path, {"run_key": f"run{i}", "accuracy": float(i), **({"extra": i} if i % 2 else {})})


def test_concurrent_writers_lose_no_rows(tmp_path):
    path = tmp_path / "results.csv"
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_writer, [(str(path), i) for i in range(16)])
    df = pd.read_csv(path)
    assert sorted(df.run_key) == sorted(f"run{i}" for i in range(16))
    assert df.set_index("run_key").loc["run5", "extra"] == 5  # union of columns
    assert math.isnan(df.set_index("run_key").loc["run4", "extra"])


def test_rerun_replaces_its_row(tmp_path):
    path = tmp_path / "results.csv"
    upsert_csv(path, {"run_key": "a", "status": "failed", "accuracy": None})
    upsert_csv(path, {"run_key": "b", "status": "ok", "accuracy": 10.0})
    upsert_csv(path, {"run_key": "a", "status": "ok", "accuracy": 50.0})
    df = pd.read_csv(path).set_index("run_key")
    assert len(df) == 2 and df.loc["a", "status"] == "ok" and df.loc["a", "accuracy"] == 50.0


def test_rebuild_csv_from_run_dirs(tmp_path):
    for i in range(3):
        write_json(tmp_path / "runs" / f"k{i}" / "record.json", {"run_key": f"k{i}", "accuracy": i})
    (tmp_path / "runs" / "unfinished").mkdir()
    df = rebuild_csv(tmp_path, tmp_path / "results.csv")
    assert list(df.run_key) == ["k0", "k1", "k2"]
    assert len(pd.read_csv(tmp_path / "results.csv")) == 3


def test_summarize_excludes_warmup():
    s = summarize([1000.0, 1.0, 2.0, 3.0, None], "ttft_ms", warmup=1)
    assert s["ttft_ms"] == 2.0 and s["ttft_ms_p90"] == 3.0  # nearest rank: a value that was measured


def test_one_percentile_definition_nearest_rank():
    from tango.records import percentile

    vals = list(range(1, 11))
    assert (percentile(vals, 0.9), percentile(vals, 0.1), percentile(vals, 0.91), percentile([7.0], 0.9)) == (
        9, 1, 10, 7.0)
    assert summarize([5.0], "x", warmup=1)["x"] == 5.0  # a single request is still reported
    assert summarize([None], "x") == {"x": None, "x_p90": None}


def test_json_is_valid_without_nan(tmp_path):
    write_json(tmp_path / "r.json", {"a": np.float64(1.5), "b": float("nan"), "c": [np.int64(2)]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5, "b": None, "c": [2]}
    assert to_jsonable({"x": float("inf")}) == {"x": None}
