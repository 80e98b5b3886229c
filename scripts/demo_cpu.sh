#!/usr/bin/env bash
# Regenerates results/demo_cpu (real runs of the harness on the tiny random-weight model, synthetic task, CPU) and
# the tables/plots in results/tables from them. Run from the repository root inside .venv: bash scripts/demo_cpu.sh
# The tiny model's weights are random: its accuracies are noise; CPU latencies are not GPU latencies.
set -euo pipefail
export TANGO_CACHE=${TANGO_CACHE:-/tmp/tango_demo_cache}
R=results/demo_cpu
run() { TANGO_RESULTS=$R python run.py task.synthetic.num_videos=16 device=cpu logger=[csv] "$@"; }
for s in 0 1; do
  run method=none seed=$s
  for b in 0.1 0.25; do
    for m in tango fastv visionzip dycoke; do run method=$m budget=$b seed=$s; done
  done
done
run method=fastv budget=0.05 fail_fast=false     # infeasible (12 layers, K=1 needs budget > 1/12): a failed cell
for f in 4 8 32; do                                                 # the 16-frame runs are the ones above
  R=results/demo_cpu/frames/f$f
  for s in 0 1; do run method=none model.num_frames=$f seed=$s; run method=tango budget=0.25 model.num_frames=$f seed=$s; done
done
python scripts/make_tables.py --results results/demo_cpu results/demo_cpu/frames/f4 results/demo_cpu/frames/f8 \
    results/demo_cpu/frames/f32 --compare results/tables/paper_reference_example.csv --out results/tables
