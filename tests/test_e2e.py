"""`python run.py` end to end on the embedded default: record, samples, CSV row, W&B offline run; resume; failure."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, run_cli
from tango.environment import lock_diff
from wandb_offline import find_offline_run, read_run

pytestmark = pytest.mark.e2e
SMALL = ["task.synthetic.num_videos=8"]


def test_default_run_writes_record_csv_and_wandb(run_env):
    proc = run_cli(SMALL, run_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = Path(run_env["TANGO_RESULTS"])
    (run_dir,) = [p for p in (results / "runs").iterdir() if p.is_dir()]
    assert run_dir.name == "tiny_llava_ov_trained__tango__b0.1__synthetic_pruning__s0"
    assert str(run_dir) in proc.stdout and "accuracy" in proc.stdout

    record = json.loads((run_dir / "record.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["n_samples"] == len(samples) == 8
    assert record["model"] == "tiny_llava_ov_trained" and record["task"] == "synthetic_pruning"
    assert 0.0 <= record["accuracy"] <= 100.0
    assert record["accuracy"] == pytest.approx(100 * sum(s["acc"] for s in samples) / 8)
    assert record["visual_tokens_in"] == 16 * 16  # 16 frames x 4x4 pooled tokens
    assert record["method"] == "tango" and 0 < record["visual_tokens_out"] < 0.2 * 256
    assert record["visual_tokens_out"] == pytest.approx(sum(s["tokens_out"] for s in samples) / 8)
    assert record["retention_input"] == pytest.approx(record["visual_tokens_out"] / record["visual_tokens_in"])
    assert record["retention"] == pytest.approx(sum(s["tokens_layer_avg"] for s in samples) / (8 * 256))
    assert record["budget_gap"] == pytest.approx(100 * (record["retention"] - 0.1))  # realised - requested, points
    if abs(record["budget_gap"]) > 1:
        assert f"{record['budget_gap']:+.1f} points off the budget 10 %" in proc.stdout
    assert record["ttft_ms"] > 0 and record["transformers"] == "5.23.0"
    # the environment a number came from: the lock's hash, whether .venv is exactly it, and the versions that matter
    assert record["lock_sha256"] == hashlib.sha256((ROOT / "uv.lock").read_bytes()).hexdigest()
    assert record["env_matches_lock"] is (not lock_diff()) and record["lmms_eval"] == "0.7.3"
    assert record["torch"] == torch.__version__ and record["cuda"] == torch.version.cuda
    assert {s["question_type"] for s in samples} == {"brief_color", "order", "when", "count_events", "background"}
    assert (run_dir / "config.yaml").exists()

    csv = pd.read_csv(results / "results.csv")
    assert list(csv.run_key) == [run_dir.name] and csv.accuracy[0] == pytest.approx(record["accuracy"])

    wb = read_run(find_offline_run(run_dir))
    assert wb["exit_code"] == 0 and wb["run"]["name"] == run_dir.name
    assert wb["config"]["model"]["name"] == "tiny_llava_ov_trained"
    assert wb["summary"]["accuracy"] == pytest.approx(record["accuracy"])
    assert wb["summary"]["visual_tokens_out"] == pytest.approx(record["visual_tokens_out"])
    assert any(row.get("ttft_ms") == pytest.approx(record["ttft_ms"]) for row in wb["history"])
    (table,) = run_dir.glob("wandb/offline-run-*/files/media/table/samples_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == 8
    # The glossary documents every field of the record, W&B carries it, and every unconditional field is written.
    from tango import glossary

    assert glossary.undocumented(record) == []
    assert set(glossary.FIELDS) - set(glossary.CONDITIONAL) - {glossary.entry(k) for k in record} == set()
    (gtable,) = run_dir.glob("wandb/offline-run-*/files/media/table/glossary_*.table.json")
    assert {r[0] for r in json.loads(gtable.read_text())["data"]} == {glossary.entry(k) for k in record}
    assert record["experiment"] is None and record["variant"] == ""
    assert record["question_set"].startswith("tango_synthetic_pruning@")

    # A second call finds the record and does not redo the work, nor write into the folder; the CSV keeps one row.
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".running.lock"}
    again = run_cli(SMALL, run_env)
    assert again.returncode == 0 and "already done" in again.stdout
    assert len(pd.read_csv(results / "results.csv")) == 1
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".running.lock"} == files
    assert not (run_dir / ".hydra").exists() and not (run_dir / "run.log").exists()
    # Another configuration under the same run key is refused in one line, naming what differs.
    other = run_cli([*SMALL, "method.alpha=3.0"], run_env)
    assert other.returncode == 2 and "method.alpha: 1.5 -> 3.0" in other.stderr and "Traceback" not in other.stderr


def test_failed_run_is_recorded_and_retried(run_env, tmp_path):
    args = [*SMALL, "method=none", "model.tiny=false", f"model.pretrained={tmp_path}/no_such_checkpoint"]
    proc = run_cli(args, run_env)
    assert proc.returncode != 0
    results = Path(run_env["TANGO_RESULTS"])
    csv = pd.read_csv(results / "results.csv")
    assert len(csv) == 1 and csv.status[0] == "failed" and "no_such_checkpoint" in csv.error[0]
    assert not list(results.glob("runs/*/record.json"))  # not marked done: the next call retries
    (failed,) = results.glob("runs/*/failed.json")
    assert "no_such_checkpoint" in json.loads(failed.read_text())["error"]

    # In a sweep (fail_fast=false) the failure is recorded the same way but the process exits 0 so others go on.
    proc = run_cli([*args, "fail_fast=false"], run_env)
    assert proc.returncode == 0 and "FAILED" in proc.stdout
    assert len(pd.read_csv(results / "results.csv")) == 1


def test_missing_videos_fail_before_the_run_with_their_list(run_env, tmp_path):
    from lmms_eval.tasks import TaskManager

    from tango.data.synthetic import ensure_synthetic_task
    from tango.eval import check_docs

    task_dir = ensure_synthetic_task(tmp_path / "task", num_videos=4, num_frames=4, size=64)
    docs = [json.loads(line) for line in (task_dir / "test.jsonl").read_text().splitlines()]
    Path(docs[2]["video"]).unlink()
    tm = TaskManager(include_path=str(task_dir))
    check_docs(["tango_synthetic"], tm, limit=2)  # the first two docs are complete
    with pytest.raises(FileNotFoundError, match="1 video") as e:
        check_docs(["tango_synthetic"], tm)
    assert docs[2]["video"] in str(e.value)


def _readme_cli_example() -> list[str]:
    """The README's lmms-eval CLI example, as written: one command per line (continuations joined)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [line.split("   #")[0].split("    #")[0].strip() for line in text.splitlines()
            if line.startswith(("python -m tango.data.synthetic", "python -m lmms_eval"))]


def test_readme_lmms_eval_cli_example_works_as_written(run_env, tmp_path):
    """The entry point makes `python -m lmms_eval --model tango_harness` build the harness model by config name."""
    import shlex
    import subprocess
    import sys

    commands = _readme_cli_example()
    assert len(commands) == 2 and "--include_path /tmp/tango_synthetic" in commands[1]
    out = tmp_path / "lmms_out"
    for cmd in commands:
        argv = [sys.executable, *shlex.split(cmd.replace("/tmp/tango_synthetic", str(tmp_path / "task")))[1:]]
        if "lmms_eval" in argv:
            argv += ["--output_path", str(out)]
        proc = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tango_harness" in proc.stdout and "|tango_synthetic|" in proc.stdout.replace(" ", "")
    (results,) = out.rglob("*_results.json")
    assert json.loads(results.read_text())["results"]["tango_synthetic"]["acc,none"] in (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.mark.parametrize("model_args,message", [
    ("model=tiny_llava_ov,budget=1.5", "budget=1.5 is outside the valid range (0, 1]"),
    ("model=tiny_llava_ov,method=nope", "Available options in 'method'"),
])
def test_lmms_eval_cli_exits_2_on_a_bad_model_arg(run_env, tmp_path, model_args, message):
    import subprocess
    import sys

    from tango.data.synthetic import ensure_synthetic_task

    task_dir = ensure_synthetic_task(tmp_path / "task", num_videos=2, num_frames=8, size=64)
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "tango_harness", "--model_args", model_args,
                           "--tasks", "tango_synthetic", "--include_path", str(task_dir), "--limit", "1"],
                          env=run_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "[tango] error in --model_args" in proc.stderr and message in proc.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(run_env):
    proc = run_cli(["model=llava_ov", "task=videomme", "method=tango", "budget=0.1", "dry_run=true"], run_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for expected in ["llava-hf/llava-onevision-qwen2-7b-ov-hf", "32 uniform", "lmms-eval task  videomme",
                     "prompt variant default", "llava_ov__tango__b0.1__videomme__s0", "results.csv"]:
        assert expected in out
    runs = Path(run_env["TANGO_RESULTS"]) / "runs"  # Hydra may create the dir with its .hydra/; nothing else
    assert not [p for p in runs.rglob("*") if p.is_file() and ".hydra" not in p.parts and p.name != "run.log"]


def test_a_broken_video_is_a_recorded_sample_error(run_env, tmp_path):
    from tango.data.synthetic import ensure_synthetic_task

    task_dir = ensure_synthetic_task(tmp_path / "task", num_videos=4, num_frames=32, size=112)
    docs = [json.loads(line) for line in (task_dir / "test.jsonl").read_text().splitlines()]
    Path(docs[1]["video"]).write_bytes(b"not a video")
    proc = run_cli(["method=none", "task=synthetic", "task.synthetic.num_videos=4", f"task.include_path={task_dir}"],
                   run_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = Path(run_env["TANGO_RESULTS"]).glob("runs/*/record.json")
    record = json.loads(rec.read_text())
    samples = [json.loads(line) for line in (rec.parent / "samples.jsonl").read_text().splitlines()]
    assert record["n_samples"] == 4 and record["n_sample_errors"] == 1
    (bad,) = [s for s in samples if s.get("error")]
    assert bad["doc_id"] == 1 and docs[1]["video"] in bad["error"] and bad["acc"] == 0.0
