"""``scripts/bench_methods.py --smoke`` runs the three baselines and writes a well-formed CSV."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from tango.environment import lock_status

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_methods.py"


@pytest.mark.unit
def test_bench_smoke_writes_csv(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_methods", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = bench.main(["--smoke", "--devices", "cpu", "--methods", "visionzip", "dycoke", "fastv", "--out-dir",
                       str(tmp_path)])
    assert path == tmp_path / "bench_cpu_smoke.csv"
    rows = list(csv.DictReader(path.open()))
    assert {r["method"] for r in rows} == {"visionzip", "dycoke", "fastv"}
    assert {r["dtype"] for r in rows} == {"bfloat16", "float32"} and len(rows) == 6
    for r in rows:
        assert r.keys() == set(bench.FIELDS) and float(r["median_ms"]) <= float(r["p90_ms"])
        assert r["lock_sha256"] == (lock_status()["lock_sha256"] or "") and r["env_matches_lock"] != ""
        assert int(r["tokens_in"]) == 4 * 16 and int(r["tokens_out"]) <= int(r["tokens_in"])
    assert "wrote 6 rows" in capsys.readouterr().out
