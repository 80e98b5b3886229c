"""Sweeps on a real single-node SLURM cluster on localhost (slurmctld + slurmd + slurmdbd/MariaDB), both routes:

- submitit: ``python run.py -m experiment=smoke hydra/launcher=slurm`` -> one job array, every cell completes, one CSV
  row per distinct cell (``none`` at two budgets is one cell); submitted again, a finished cell is skipped and a
  failing cell is recorded as failed while the sweep still succeeds;
- plain sbatch: ``slurm/submit.sh smoke`` + ``slurm/sweep.sbatch``; one cell is killed mid-run (scancel), a
  deliberately failing cell (missing checkpoint: the runner records it) and a cell whose process is SIGKILLed (as by
  the OOM killer: the sbatch script records it) run beside them; resubmitting the same list skips finished cells
  ("already done"), re-runs the killed one and records the failing one again, and the CSV ends with exactly one row
  per cell.

The fixture installs the Debian packages when they are missing (root + apt-get; skips with the reason otherwise),
starts the daemons in a scratch folder and stops them by PID. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

sys.path.insert(0, str(Path(__file__).parent))
import local_slurm  # noqa: E402

pytestmark = pytest.mark.slurm

SMOKE_KEYS = {f"tiny_llava_ov__{m}__synthetic__s0" for m in ("none__b1", "visionzip__b0.1", "visionzip__b0.25")}
FAILING = ["experiment=smoke", "method=none", "seed=7", "model.tiny=false", "model.pretrained=/nonexistent/checkpoint"]
FAILING_KEY = "tiny_llava_ov__none__b1__synthetic__s7"
SEED0_NONE_KEY = "tiny_llava_ov__none__b1__synthetic__s0"
CRASHING = ["experiment=smoke", "method=none", "seed=8"]
CRASHING_KEY = "tiny_llava_ov__none__b1__synthetic__s8"
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=3", "hydra.launcher.timeout_min=15", "hydra.launcher.array_parallelism=4"]
SBATCH_OPTS = "--cpus-per-task=1 --mem=3G --time=15"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.environ.get("TANGO_SKIP_SLURM"):
        pytest.skip("TANGO_SKIP_SLURM is set")
    if local_slurm.missing_binaries():
        reason = local_slurm.install_reason()
        if reason:
            pytest.skip(f"SLURM/MariaDB not installed ({', '.join(local_slurm.missing_binaries())}) and cannot "
                        f"install them: {reason}")
        local_slurm.install(timeout=600)
        assert not local_slurm.missing_binaries(), local_slurm.missing_binaries()
    cluster = local_slurm.LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _env(run_env: dict, cluster) -> dict:
    return {**run_env, **cluster.env, "TANGO_SBATCH_OPTS": SBATCH_OPTS, "TANGO_ARRAY_PARALLELISM": "4"}


def _wait_for(ok, timeout: float, what: str, cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                         f"{cluster.output(['squeue'])}\n{cluster.logs(15)}")


def _states(cluster, job: str) -> dict[str, str]:
    """sacct's state of every task of array job ``job``: {"<job>_<i>": "COMPLETED", ...}."""
    out = cluster.output(["sacct", "-X", "-n", "-P", "-j", job, "-o", "JobID,State"])
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line and "[" not in line)


def _wait_done(cluster, job: str, n: int, timeout: float = 300) -> dict[str, str]:
    """Wait until array job ``job`` left the queue and sacct has a final state for its ``n`` tasks."""
    _wait_for(lambda: cluster.output(["squeue", "-h", "-j", job]).strip() == "", timeout, f"job {job} to end", cluster)
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
    _wait_for(lambda: len([s for s in _states(cluster, job).values() if s.split()[0] in final]) == n, 30,
              f"sacct to record {n} tasks of {job}: {cluster.output(['sacct', '-X', '-P', '-j', job])}", cluster)
    return {k: v.split()[0] for k, v in _states(cluster, job).items()}


def _csv(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "results.csv")


def _check_cell(results: Path, key: str) -> None:
    run_dir = results / "runs" / key
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "ok" and record["run_key"] == key and "git_sha" in record
    assert (run_dir / "config.yaml").exists()  # the resolved config


def test_submitit_launcher_runs_the_sweep_as_one_array(slurm, run_env):
    env = _env(run_env, slurm)
    results = Path(env["TANGO_RESULTS"])
    proc = subprocess.run([sys.executable, "run.py", "-m", "experiment=smoke", *LAUNCHER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    csv = _csv(results)
    assert sorted(csv.run_key) == sorted(SMOKE_KEYS) and set(csv.status) == {"ok"}  # one row per distinct cell
    for key in SMOKE_KEYS:
        _check_cell(results, key)
    # submitit's files stay out of results/runs: slurm/submitit/<job>/ (the submission) and <job>_<i>/ (task logs)
    (job,) = [p.name for p in (results / "slurm" / "submitit").iterdir() if "_" not in p.name]
    states = _wait_done(slurm, job, 4)  # 2 methods x 2 budgets = 4 array tasks, 3 distinct cells
    assert sorted(states) == [f"{job}_{i}" for i in range(4)] and set(states.values()) == {"COMPLETED"}, states
    assert not [p for p in (results / "runs").iterdir() if p.is_dir() and p.name not in SMOKE_KEYS]

    # Submit again with a broken checkpoint at seeds 0 and 7. The finished seed-0 cell was made with another
    # checkpoint: it is refused before anything loads, naming what differs, and its folder is left as it was; the
    # seed-7 cell fails and is recorded as failed (fail_fast=false). The refusal is an error of the sweep's own making,
    # so the sweep exits non-zero (submitit reports the refused task) instead of passing it over in silence.
    finished = {p: p.read_bytes() for p in (results / "runs" / SEED0_NONE_KEY).rglob("*") if p.is_file()
                and p.name != ".running.lock"}
    broken = ["method=none", "budget=0.1", "seed=0,7", "model.tiny=false", "model.pretrained=/nonexistent/checkpoint"]
    again = subprocess.run([sys.executable, "run.py", "-m", "experiment=smoke", *LAUNCHER, *broken], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "holds a finished run of another configuration" in again.stderr, again.stderr
    (job2,) = [p.name for p in (results / "slurm" / "submitit").iterdir() if "_" not in p.name and p.name != job]
    states = _wait_done(slurm, job2, 2)
    assert states[f"{job2}_1"] == "COMPLETED" and states[f"{job2}_0"] != "COMPLETED", states
    logs = [(results / "slurm" / "submitit" / f"{job2}_{i}" / f"{job2}_{i}_0_log.{ext}").read_text()
            for i, ext in ((0, "err"), (1, "out"))]
    assert "holds a finished run of another configuration" in logs[0] and "model.pretrained" in logs[0], logs[0]
    assert "FAILED" in logs[1], logs[1]
    assert {p: p.read_bytes() for p in (results / "runs" / SEED0_NONE_KEY).rglob("*") if p.is_file()
            and p.name != ".running.lock"} == finished
    csv = _csv(results)
    assert sorted(csv.run_key) == sorted(SMOKE_KEYS | {FAILING_KEY})
    assert dict(zip(csv.run_key, csv.status))[FAILING_KEY] == "failed"
    assert dict(zip(csv.run_key, csv.status))[SEED0_NONE_KEY] == "ok"


def test_sbatch_route_resumes_a_killed_cell_and_records_a_failing_one(slurm, run_env, tmp_path):
    env = _env(run_env, slurm)
    results = Path(env["TANGO_RESULTS"])

    # The sweep through the helper (3 distinct cells), plus a cell that fails deterministically, as its own list.
    proc = subprocess.run(["slurm/submit.sh", "smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = proc.stdout.split()[-1]
    (sweep_dir,) = (results / "slurm").glob("smoke-*")
    lines = (sweep_dir / "overrides.txt").read_text().splitlines()
    assert len(lines) == 3 and json.loads((sweep_dir / "sweep.json").read_text())["job_id"] == job
    fail_list = tmp_path / "failing.txt"
    fail_list.write_text(" ".join(FAILING) + "\n")
    fail_job = subprocess.run(["sbatch", "--parsable", "--array=0-0", f"--output={tmp_path}/fail_%A_%a.out",
                               *SBATCH_OPTS.split(), "slurm/sweep.sbatch", str(fail_list)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert fail_job.returncode == 0, fail_job.stderr
    fail_job = fail_job.stdout.strip().split(";")[0]
    # A cell whose process is killed outright (as by the OOM killer) cannot record itself; the sbatch script does.
    crash_py = tmp_path / "python_killed_by_oom"
    crash_py.write_text(f'#!/bin/bash\n[ "$1" = run.py ] && kill -KILL $$\nexec {sys.executable} "$@"\n')
    crash_py.chmod(0o755)
    crash_list = tmp_path / "crashing.txt"
    crash_list.write_text(" ".join(CRASHING) + "\n")
    crash_job = subprocess.run(["sbatch", "--parsable", "--array=0-0", f"--output={tmp_path}/crash_%A_%a.out",
                                *SBATCH_OPTS.split(), "slurm/sweep.sbatch", str(crash_list)], cwd=ROOT,
                               env={**env, "TANGO_PYTHON": str(crash_py)}, capture_output=True, text=True, timeout=60)
    assert crash_job.returncode == 0, crash_job.stderr
    crash_job = crash_job.stdout.strip().split(";")[0]

    # Kill the last cell mid-run: once its run directory has its config (the runner started), before its record.
    victim = len(lines) - 1
    victim_dir = results / "runs" / "tiny_llava_ov__visionzip__b0.25__synthetic__s0"
    assert "method=visionzip budget=0.25" in lines[victim]
    _wait_for(lambda: (victim_dir / "config.yaml").exists(), 300, "the victim cell to start", slurm)
    subprocess.run(["scancel", f"{job}_{victim}"], env=env, check=True, timeout=30)
    states = _wait_done(slurm, job, 3)
    assert states[f"{job}_{victim}"] == "CANCELLED", states
    assert [s for k, s in states.items() if k != f"{job}_{victim}"] == ["COMPLETED"] * 2, states
    assert _wait_done(slurm, fail_job, 1) == {f"{fail_job}_0": "COMPLETED"}  # recorded, not crashed
    assert not (victim_dir / "record.json").exists(), "the victim finished before it was killed"
    assert _wait_done(slurm, crash_job, 1) == {f"{crash_job}_0": "FAILED"}

    csv = _csv(results)
    assert sorted(csv.run_key) == sorted(SMOKE_KEYS - {victim_dir.name} | {FAILING_KEY, CRASHING_KEY})
    crashed = csv[csv.run_key == CRASHING_KEY].iloc[0]
    assert crashed.status == "failed" and "code 137" in crashed.error and "SIGKILL" in crashed.error
    failed = csv[csv.run_key == FAILING_KEY].iloc[0]
    assert failed.status == "failed" and "nonexistent" in failed.error
    assert "nonexistent" in json.loads((results / "runs" / FAILING_KEY / "failed.json").read_text())["error"]

    # What is left to do: only the killed cell.
    todo = subprocess.run([sys.executable, "scripts/sweep_overrides.py", "experiment=smoke", "--todo"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert todo.stdout.splitlines() == [lines[victim]], todo.stdout + todo.stderr

    # Resubmit the same list (and the failing cell): finished cells are skipped, the killed one runs again.
    again = subprocess.run(["sbatch", "--parsable", f"--array=0-{len(lines) - 1}",
                            f"--output={sweep_dir}/logs/%A_%a.out", *SBATCH_OPTS.split(), "slurm/sweep.sbatch",
                            str(sweep_dir / "overrides.txt")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0, again.stderr
    job2 = again.stdout.strip().split(";")[0]
    fail2 = subprocess.run(["sbatch", "--parsable", "--array=0-0", f"--output={tmp_path}/fail_%A_%a.out",
                            *SBATCH_OPTS.split(), "slurm/sweep.sbatch", str(fail_list)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert fail2.returncode == 0, fail2.stderr
    assert set(_wait_done(slurm, job2, 3).values()) == {"COMPLETED"}
    assert set(_wait_done(slurm, fail2.stdout.strip().split(";")[0], 1).values()) == {"COMPLETED"}
    logs = {i: (sweep_dir / "logs" / f"{job2}_{i}.out").read_text() for i in range(len(lines))}
    assert all("already done" in logs[i] for i in range(len(lines)) if i != victim), logs
    assert "already done" not in logs[victim] and "accuracy" in logs[victim], logs[victim]

    csv = _csv(results)  # exactly one row per cell
    assert len(csv) == 5 and sorted(csv.run_key) == sorted(SMOKE_KEYS | {FAILING_KEY, CRASHING_KEY})
    assert dict(zip(csv.run_key, csv.status)) == {**{k: "ok" for k in SMOKE_KEYS}, FAILING_KEY: "failed",
                                                  CRASHING_KEY: "failed"}
    for key in SMOKE_KEYS:
        _check_cell(results, key)

    # Submitting the experiment again finds nothing to do.
    done = subprocess.run(["slurm/submit.sh", "smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "nothing submitted" in done.stdout, done.stdout + done.stderr
