"""A finished result is reused only for the same configuration, written as one commit with its sinks, never
half-written; bad values fail before anything loads, with one line naming the value and the valid ones."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tango import runner
from tango.config import ConfigError, compose, config_hash, validate

from conftest import run_cli
from wandb_offline import find_offline_run, read_run

pytestmark = pytest.mark.unit


# ---- validation before anything loads ------------------------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("budget=1.5", "budget=1.5 is outside the valid range (0, 1]"),
    ("model.num_frames=0", "model.num_frames=0 must be >= 1"),
    ("model.fps=0", "model.fps=0.0 must be > 0"),
    ("model.video_backend=foo", "model.video_backend='foo' is not one of the valid values ['decord', 'pyav']"),
    ("model.dtype=fp8", "model.dtype='fp8' is not one of the valid values ['bfloat16', 'float16', 'float32']"),
    ("model.attn_implementation=flash", "model.attn_implementation='flash' is not one of the valid values"),
    ("model.max_new_tokens=0", "model.max_new_tokens=0 must be >= 1"),
    ("limit=0", "limit=0 must be >= 1 (or null)"),
    ("limit=-1", "limit=-1 must be >= 1 (or null)"),
    ("device=gpu", "device='gpu' is not one of auto, cpu, cuda, cuda:N"),
    ("task.synthetic.num_videos=0", "task.synthetic.num_videos=0 must be >= 1"),
    ("task.synthetic.size=8", "task.synthetic.size=8 must be >= 16"),
])
def test_bad_values_are_rejected_with_the_valid_ones(override, message):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    assert message in str(e.value)


@pytest.mark.e2e
def test_cli_prints_one_line_without_traceback_and_exits_2(run_env):
    proc = run_cli(["model.num_frames=0"], run_env, timeout=120)
    assert proc.returncode == 2
    assert "[tango] error: model.num_frames=0 must be >= 1" in proc.stderr and "Traceback" not in proc.stderr
    assert not [p for p in Path(run_env["TANGO_RESULTS"]).rglob("*") if p.is_file()]  # Hydra makes the folder only


# ---- identity, order and atomicity (the model is replaced by a stub: these are the runner's guarantees) -------------

def _fake_evaluate(accuracy: float = 50.0):
    def evaluate(cfg, method, budget):
        record = {**runner._identity(cfg, method, budget), "status": "ok", "error": None, "accuracy": accuracy,
                  "metric": "acc", "n_samples": 2, "n_sample_errors": 0}
        for k in ("visual_tokens_in", "visual_tokens_out", "visual_tokens_layer_avg", "retention", "ttft_ms",
                  "vision_ms", "pruning_ms", "llm_prefill_ms", "tflops_prefill", "tflops_llm"):
            record[k] = None
        return record, [{"doc_id": 0, "acc": 1.0}, {"doc_id": 1, "acc": 0.0}]
    return evaluate


@pytest.fixture()
def results(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TANGO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(runner, "_evaluate", _fake_evaluate())
    return tmp_path / "results"


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name != ".running.lock"}


def test_a_changed_setting_is_never_answered_with_the_finished_result(results):
    base = ["logger=[csv]", "method.alpha=1.5"]
    assert runner.run(compose(base)) == 50.0
    (run_dir,) = (results / "runs").iterdir()
    record = json.loads((run_dir / "record.json").read_text())
    assert record["config_hash"] == config_hash(compose(base))
    before = _snapshot(run_dir)

    assert runner.run(compose(base)) == 50.0  # the same configuration: reused
    with pytest.raises(ConfigError) as e:
        runner.run(compose([*base[:1], "method.alpha=3.0"]))
    assert "method.alpha: 1.5 -> 3.0" in str(e.value) and "force=true" in str(e.value)
    with pytest.raises(ConfigError, match=r"model.num_frames: 16 -> 4"):
        runner.run(compose([*base, "model.num_frames=4"]))
    with pytest.raises(ConfigError, match=r"task.synthetic.num_videos: 40 -> 8"):
        runner.run(compose([*base, "task.synthetic.num_videos=8"]))
    assert _snapshot(run_dir) == before  # neither a reuse nor a refusal writes into the finished run's folder

    runner._evaluate = _fake_evaluate(75.0)
    assert runner.run(compose([*base[:1], "method.alpha=3.0", "force=true"])) == 75.0
    record = json.loads((run_dir / "record.json").read_text())
    assert record["config_hash"] == config_hash(compose([*base[:1], "method.alpha=3.0"])) and record["accuracy"] == 75
    assert json.loads(record["method_hparams"])["alpha"] == 3.0
    assert len(pd.read_csv(results / "results.csv")) == 1


def test_settings_that_cannot_change_a_result_keep_the_cell(results, tmp_path):
    assert runner.run(compose(["logger=[csv]"])) == 50.0
    runner._evaluate = _fake_evaluate(0.0)  # would show if the cell were recomputed
    assert runner.run(compose(["logger=[csv]", "fail_fast=false", "dry_run=false"])) == 50.0
    # `none` runs at budget 1 whatever budget a sweep asks: one cell, run once
    assert runner.run(compose(["logger=[csv]", "method=none", "budget=0.1"])) == 0.0
    assert runner.run(compose(["logger=[csv]", "method=none", "budget=0.25"])) == 0.0
    assert len(list((results / "runs").iterdir())) == 2


def test_a_failing_sink_leaves_the_run_not_done_and_the_next_call_redoes_it(results, monkeypatch):
    from tango.loggers import WandbSink

    def broken(self, *args):
        raise RuntimeError("wandb: network unreachable")
    monkeypatch.setattr(WandbSink, "log", broken)
    cfg = ["logger.wandb.mode=online", "fail_fast=false"]
    assert runner.run(compose(cfg)) is None
    (run_dir,) = (results / "runs").iterdir()
    assert not (run_dir / "record.json").exists()
    assert "network unreachable" in json.loads((run_dir / "failed.json").read_text())["error"]
    assert pd.read_csv(results / "results.csv").status.tolist() == ["failed"]
    with pytest.raises(RuntimeError, match="network unreachable"):  # fail_fast=true raises the sink's error
        runner.run(compose(["logger.wandb.mode=online"]))

    monkeypatch.undo()
    monkeypatch.setenv("TANGO_RESULTS", str(results))
    monkeypatch.setattr(runner, "_evaluate", _fake_evaluate())
    assert runner.run(compose(["logger=[csv]", "fail_fast=false"])) == 50.0
    assert (run_dir / "record.json").exists() and not (run_dir / "failed.json").exists()
    assert pd.read_csv(results / "results.csv").status.tolist() == ["ok"]


def test_an_interrupted_wandb_offline_run_is_replaced(results, tmp_path, monkeypatch):
    for k in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(k, str(tmp_path / k))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = results / "runs" / compose([]).run_key
    stale = run_dir / "wandb" / "offline-run-20260101_000000-stale"
    stale.mkdir(parents=True)
    (stale / "run-stale.wandb").write_bytes(b"half a run")
    import wandb

    try:
        assert runner.run(compose(["logger.wandb.mode=offline"])) == 50.0
    finally:
        wandb.teardown()  # W&B keeps process-wide settings (its root dir) from the first init: leave none behind
    assert not stale.exists() and len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert read_run(find_offline_run(run_dir))["summary"]["accuracy"] == 50.0


def test_a_corrupt_csv_is_named_moved_aside_and_rebuilt(results, capsys):
    for seed in (0, 1):
        runner.run(compose(["logger=[csv]", f"seed={seed}"]))
    table = results / "results.csv"
    table.write_text("run_key,accuracy\n1,2,3,4\n\"unterminated\n")
    runner.run(compose(["logger=[csv]", "seed=2"]))
    err = capsys.readouterr().err
    (aside,) = results.glob("results.csv.corrupt-*")
    assert f"{table} was not a readable results table" in err and str(aside) in err
    assert aside.read_text().startswith("run_key,accuracy\n1,2,3,4")
    assert sorted(pd.read_csv(table).seed) == [0, 1, 2]
