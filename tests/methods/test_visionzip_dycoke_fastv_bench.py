"""``scripts/bench_methods.py --smoke`` runs the three baselines and writes a well-formed CSV."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

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


def _bench():
    spec = importlib.util.spec_from_file_location("bench_methods", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.unit
def test_timed_calls_get_their_setup_untimed_every_time():
    """A reference that writes into its input (Tango's) must get a fresh copy before every timed call, else the
    later calls time other inputs (already-merged features form other segments)."""
    bench, log = _bench(), []

    def fn():
        log.append("call")
    fn.setup = lambda: log.append("setup")
    assert len(bench.time_ms(fn, "cpu", warmup=2, repeats=3)) == 3
    assert log == ["setup", "call"] * 5


@pytest.mark.unit
def test_scenes_input_gives_tango_static_multi_frame_segments():
    from tango.methods.tango import Tango

    x, attn, ts, _, _ = _bench().make_inputs(24, (4, 4), 64, 8, torch.float32, "cpu", scene="scenes")
    stats = Tango().prune(x, budget=0.1, attn=attn, timestamps=ts, grid=(4, 4)).stats
    assert 1 < stats["num_segments"] < 24 and stats["single_frame_segments"] < stats["num_segments"]
    assert stats["static_positions"] > 0
