#!/usr/bin/env bash
# Submit an experiment's sweep as one plain `sbatch --array` job (no submitit, no process to keep alive).
#
#   slurm/submit.sh EXPERIMENT [HYDRA_OVERRIDES...] [-- SBATCH_OPTIONS...]
#   slurm/submit.sh main
#   slurm/submit.sh main model=llava_ov budget=0.1,0.2 -- --partition=gpu --time=08:00:00
#
# Writes a sweep folder $TANGO_RESULTS/slurm/<experiment>-<UTC time>/ (default results/slurm/...) with
#   overrides.txt  one line of run.py overrides per unfinished cell (scripts/sweep_overrides.py --todo)
#   sweep.json     experiment, overrides, git SHA + dirty flag, date, sbatch command, job id
#   logs/          one log per array task (%A_%a.out; a requeued task appends to its log)
# and prints the job id. Re-running the same command later submits only the cells that are not done yet.
#
# sbatch options: $TANGO_SBATCH_OPTS (default below), then those after `--` (later ones win).
# Array parallelism: $TANGO_ARRAY_PARALLELISM (default 32).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${TANGO_PYTHON:-$ROOT/.venv/bin/python}
DEFAULT_OPTS="--gpus-per-task=1 --cpus-per-task=8 --mem=64G --time=04:00:00"
PARALLEL=${TANGO_ARRAY_PARALLELISM:-32}

[ $# -ge 1 ] || { sed -n '2,17p' "$0"; exit 2; }
experiment=$1; shift
hydra_args=(); sbatch_args=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; sbatch_args=("$@"); break; fi
    hydra_args+=("$1"); shift
done
read -r -a default_opts <<< "${TANGO_SBATCH_OPTS-$DEFAULT_OPTS}"

results=${TANGO_RESULTS:-$ROOT/results}
sweep_dir="$results/slurm/$experiment-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$sweep_dir/logs"
cd "$ROOT"
"$PY" scripts/sweep_overrides.py "experiment=$experiment" "${hydra_args[@]}" --todo --out "$sweep_dir/overrides.txt"
n=$(wc -l < "$sweep_dir/overrides.txt")
if [ "$n" -eq 0 ]; then
    echo "[submit] every cell of $experiment is done; nothing submitted ($sweep_dir)"
    exit 0
fi

cmd=(sbatch --parsable --array="0-$((n - 1))%$PARALLEL" --chdir="$ROOT" --job-name="tango-$experiment"
     --output="$sweep_dir/logs/%A_%a.out" "${default_opts[@]}" "${sbatch_args[@]}"
     "$ROOT/slurm/sweep.sbatch" "$sweep_dir/overrides.txt")
job=$(TANGO_ROOT="$ROOT" "${cmd[@]}")
job=${job%%;*}

SWEEP_JSON="$sweep_dir/sweep.json" "$PY" - "$experiment" "$job" "$n" "${cmd[*]}" "${hydra_args[@]}" <<'EOF'
import json, os, subprocess, sys
from datetime import datetime, timezone
experiment, job, n, cmd, *overrides = sys.argv[1:]
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
json.dump({"experiment": experiment, "overrides": overrides, "job_id": job, "cells": int(n), "sbatch": cmd,
           "git_sha": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain", "-uno")),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
          open(os.environ["SWEEP_JSON"], "w"), indent=1)
EOF
echo "[submit] job $job: $n cells of $experiment; logs in $sweep_dir/logs"
echo "$job"
