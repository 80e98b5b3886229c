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

# Each bad value and the message it gets: tests/bad_inputs.py, run by tests/test_bad_inputs.py.

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


def test_an_invalid_cell_in_a_sweep_is_a_failed_row_and_never_touches_a_finished_one(results, capsys):
    assert runner.run(compose(["logger=[csv]"])) == 50.0
    (run_dir,) = (results / "runs").iterdir()
    before = _snapshot(run_dir)
    # Same run key, invalid config (a typo Hydra suggests appending): reported, the finished cell left as it is.
    assert runner.run(compose(["logger=[csv]", "fail_fast=false", "+method.alpah=2"])) is None
    assert "did you mean method.alpha?" in capsys.readouterr().err
    assert _snapshot(run_dir) == before and pd.read_csv(results / "results.csv").status.tolist() == ["ok"]
    # A new cell that cannot run (FastV below K / num_layers): a failed row, retried once its config is fixed.
    cell = ["logger=[csv]", "fail_fast=false", "method=fastv", "budget=0.2"]
    assert runner.run(compose(cell)) is None
    failed = json.loads((results / "runs" / compose(cell).run_key / "failed.json").read_text())
    assert failed["error"].startswith("ConfigError: method=fastv: budget=0.2 is infeasible for FastV")
    assert sorted(pd.read_csv(results / "results.csv").status) == ["failed", "ok"]
    with pytest.raises(ConfigError, match="infeasible"):  # fail_fast (a single run): raised, exit 2 in run.py
        runner.run(compose(cell[:1] + cell[2:]))


def test_generated_task_folders_are_keyed_by_their_data(monkeypatch, tmp_path):
    monkeypatch.setenv("TANGO_DATA", str(tmp_path / "a"))
    a = compose(["task=mlvu_local"])
    monkeypatch.setenv("TANGO_DATA", str(tmp_path / "b"))
    b = compose(["task=mlvu_local"])
    assert a.task.include_path != b.task.include_path  # one cache, two data roots: two folders
    s0, s1 = compose([]), compose(["task.synthetic.seed=1235"])
    assert s0.task.include_path != s1.task.include_path
    # Where the folder lies is not part of the result: another cache dir is the same cell.
    monkeypatch.setenv("TANGO_CACHE", str(tmp_path / "other-cache"))
    moved = compose([])
    assert moved.task.include_path != s0.task.include_path and config_hash(moved) == config_hash(s0)


def samples_regime(run_dir: Path) -> str:
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    (regime,) = {r["method/regime"] for r in rows if "method/regime" in r}
    return regime


@pytest.mark.e2e
def test_one_bad_sample_never_sinks_the_run(tmp_path, cache_dir, monkeypatch, capsys):
    """A 1-frame video under DyCoke with fps sampling (SampleError) and a truncated mp4 (VideoDecodeError) are those
    samples' errors; the run is ok, counts them and says so; a short video under uniform sampling is flagged."""
    import numpy as np

    from faults import write_truncated_mp4
    from tango.data.synthetic import _write_mp4, ensure_synthetic_task

    monkeypatch.setenv("TANGO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TANGO_CACHE", str(cache_dir))
    task_dir = ensure_synthetic_task(tmp_path / "task", num_videos=4, num_frames=32, size=112, fps=8, seed=1234)
    docs = [json.loads(line) for line in (task_dir / "test.jsonl").read_text().splitlines()]
    _write_mp4(Path(docs[0]["video"]), np.full((1, 112, 112, 3), 128, np.uint8), 8)  # 1 frame
    write_truncated_mp4(Path(docs[1]["video"]), frames=48, keep=18, size=112)
    base = ["model=tiny_llava_ov", "task=synthetic", "task.synthetic.num_videos=4", f"task.include_path={task_dir}",
            "logger=[csv]"]

    assert runner.run(compose([*base, "method=dycoke", "budget=0.5", "model.fps=2"])) is not None
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    record = json.loads((run_dir / "record.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["n_samples"] == 4 and record["n_sample_errors"] == 2
    assert record["method/regime"] == samples_regime(run_dir) and record["method/anchor_frames"] == 3  # 0, 4, 6 of 8
    assert samples[0]["error"].startswith("SampleError: dycoke needs at least 2 frames, got num_frames=1")
    assert samples[1]["error"].startswith("VideoDecodeError: decoded 18 of the 48 frames its header declares")
    assert all("error" not in s and s["frames"] == 8 for s in samples[2:])
    assert 0 < record["tflops_llm_paper"] < record["tflops_llm"]  # both FLOPs conventions in the record
    assert "sample errors   2 of 4 scored wrong: 1 SampleError, 1 VideoDecodeError" in out

    assert runner.run(compose([*base, "method=none", "model.num_frames=8"])) is not None
    (run_dir,) = [d for d in (tmp_path / "results" / "runs").iterdir() if "__none__" in d.name]
    record = json.loads((run_dir / "record.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["short_video"] is True and samples[0]["frames_repeated"] == 7
    assert [s.get("short_video") for s in samples[2:]] == [False, False] and record["n_short_videos"] == 1


def test_a_setting_added_later_matches_runs_recorded_before_it_only_at_its_old_behaviour():
    """``model.frame_sampling`` did not exist before; at ``uniform`` (the old behaviour) a config without it is the
    same cell, at any other value it is a different configuration (a resume would refuse the old record)."""
    from omegaconf import OmegaConf

    from tango.config import identity, identity_diff

    new = compose(["model=tiny_llava_ov"])
    old = OmegaConf.to_container(new, resolve=True)
    del old["model"]["frame_sampling"]
    assert new.model.frame_sampling == "uniform" and identity_diff(identity(old), identity(new)) == []
    qwen = compose(["model=tiny_llava_ov", "model.frame_sampling=qwen_vl_utils"])
    assert identity_diff(identity(old), identity(qwen)) == ["model.frame_sampling: '<unset>' -> 'qwen_vl_utils'"]
