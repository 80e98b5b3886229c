"""Experiment configs and their expansion into cells (tango.sweeps, scripts/sweep_overrides.py), without SLURM;
plus `python run.py -m experiment=smoke` with Hydra's basic launcher (one cell after another, in one process)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from tango.sweeps import combinations, expand, record_failure

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
SMOKE_KEYS = [f"tiny_llava_ov__{m}__synthetic__s0" for m in ("none__b1", "visionzip__b0.1", "visionzip__b0.25")]


@pytest.fixture()
def results(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TANGO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TANGO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "results"


@pytest.mark.config
def test_smoke_expands_to_one_cell_per_run_key(results):
    assert len(combinations(["experiment=smoke"])) == 4  # what `run.py -m` launches: 2 methods x 2 budgets
    cells = expand(["experiment=smoke", "task.synthetic.num_videos=2"])
    assert [c.run_key for c in cells] == SMOKE_KEYS  # `none` ignores the budget: one cell, not two
    assert [c.run_dir for c in cells] == [results / "runs" / k for k in SMOKE_KEYS]
    for cell in cells:
        args = shlex.split(cell.line)
        assert args == list(cell.overrides)
        assert "experiment=smoke" in args and "task.synthetic.num_videos=2" in args and not cell.done


@pytest.mark.config
def test_command_line_values_replace_a_declared_axis(results):
    cells = expand(["experiment=smoke", "method=visionzip", "budget=0.1,0.2,0.3"])
    assert [c.run_key for c in cells] == [f"tiny_llava_ov__visionzip__b{b}__synthetic__s0" for b in (0.1, 0.2, 0.3)]
    assert [c.line for c in cells] == [f"method=visionzip budget={b} experiment=smoke" for b in (0.1, 0.2, 0.3)]


# experiment -> (combinations `run.py -m` launches, distinct cells). Table 1 in full is 576 combinations and 540 cells;
# one model x one task keeps this test fast. `none` ignores the budget, so it is one cell per (model, task, seed).
EXPECTED = {"main": (48, 45), "frames": (48, 48), "ablation_components": (8, 8), "ablation_alpha": (5, 5),
            "ablation_context_ratio": (10, 10), "ablation_bases": (9, 9), "smoke": (4, 3)}


@pytest.mark.config
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_into_distinct_cells(experiment, results):
    overrides = [f"experiment={experiment}"] + (["model=llava_ov", "task=videomme"] if experiment == "main" else [])
    cells = expand(overrides)
    assert len({c.run_key for c in cells}) == len(cells) and all(c.line for c in cells)
    if experiment in EXPECTED:
        assert (len(combinations(overrides)), len(cells)) == EXPECTED[experiment]
    if experiment == "main":
        assert len(combinations([f"experiment={experiment}"])) == 768


@pytest.mark.config
def test_todo_leaves_out_finished_cells_and_failures_are_recorded(results):
    cells = expand(["experiment=smoke"])
    done = cells[1].run_dir
    done.mkdir(parents=True)
    (done / "record.json").write_text(json.dumps({"status": "ok", "run_key": cells[1].run_key}))
    proc = subprocess.run([sys.executable, "scripts/sweep_overrides.py", "experiment=smoke", "--todo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [cells[0].line, cells[2].line]
    assert "1 already done left out" in proc.stderr

    # A cell whose process died (OOM kill) is recorded by the sbatch script: failed.json + one `failed` CSV row.
    assert record_failure(list(cells[2].overrides), "run.py exited with code 137") == cells[2].run_dir
    assert record_failure(list(cells[1].overrides), "never") is None  # a finished cell is left alone
    csv = pd.read_csv(results / "results.csv")
    assert list(csv.run_key) == [cells[2].run_key] and csv.status[0] == "failed" and "137" in csv.error[0]
    assert json.loads((cells[2].run_dir / "failed.json").read_text())["method"] == "visionzip"


@pytest.mark.unit
def test_slurm_scripts_parse():
    for script in ("slurm/sweep.sbatch", "slurm/submit.sh"):
        proc = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.e2e
def test_local_multirun_runs_every_cell_once(run_env):
    proc = subprocess.run([sys.executable, "run.py", "-m", "experiment=smoke"], cwd=ROOT, env=run_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("already done") == 1  # none@0.25 is none@0.1's cell
    results = Path(run_env["TANGO_RESULTS"])
    csv = pd.read_csv(results / "results.csv")
    assert sorted(csv.run_key) == SMOKE_KEYS and set(csv.status) == {"ok"}
    assert all((results / "runs" / k / "record.json").exists() for k in SMOKE_KEYS)


@pytest.mark.config
def test_slurm_launcher_and_local_example_compose(results):
    from tango.sweeps import _compose, _hydra

    with _hydra():
        launcher = _compose(["experiment=smoke", "hydra/launcher=slurm", "hydra.launcher.partition=debug"])
        launcher = launcher.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "debug"
        assert launcher.gpus_per_node == 1 and launcher.max_num_timeout == 3
        assert launcher.submitit_folder == f"{results}/slurm/submitit/%j"  # resolvable before the jobs start
        local = _compose(["experiment=smoke", "local=slurm_example"]).hydra.launcher  # as configs/local/default.yaml
        assert local._target_.endswith("SlurmLauncher") and local.partition == "gpu"
