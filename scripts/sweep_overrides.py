"""Experiment config -> override list: one line of `run.py` overrides per distinct cell, for `slurm/sweep.sbatch`.

The sweep is the one `python run.py -m experiment=<name>` runs (the experiment's `hydra.sweeper.params`, with
command-line values replacing a declared axis), minus duplicates: cells with the same run_key (`none` at every
budget) appear once.

    python scripts/sweep_overrides.py experiment=main                      # print the lines
    python scripts/sweep_overrides.py experiment=main model=llava_ov --todo --out sweep.txt   # only unfinished cells
    sbatch --array=0-$(( $(wc -l < sweep.txt) - 1 ))%32 slurm/sweep.sbatch sweep.txt

    # used by slurm/sweep.sbatch when a cell's process dies without recording itself (OOM kill, segfault):
    python scripts/sweep_overrides.py --record-failure "exit code 137" -- experiment=main method=tango budget=0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tango.sweeps import expand, record_failure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for `python run.py -m`; sweeps allowed (a=1,2)")
    p.add_argument("--out", help="write the lines to this file instead of stdout")
    p.add_argument("--todo", action="store_true", help="leave out cells whose record.json exists (status ok)")
    p.add_argument("--keys", action="store_true", help="print '<run_key>\\t<line>' (for reading, not for sbatch)")
    p.add_argument("--record-failure", metavar="ERROR", help="record the cell given by the overrides as failed")
    args = p.parse_intermixed_args(argv)

    if args.record_failure is not None:
        run_dir = record_failure(args.overrides, args.record_failure)
        print(f"[sweep] recorded as failed: {run_dir}" if run_dir else "[sweep] cell already done; nothing recorded",
              file=sys.stderr)
        return 0

    cells = expand(args.overrides)
    todo = [c for c in cells if not (args.todo and c.done)]
    lines = [f"{c.run_key}\t{c.line}" if args.keys else c.line for c in todo]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    print(f"[sweep] {len(cells)} cells, {len(cells) - len(todo)} already done left out, {len(todo)} listed"
          + (f" in {args.out}" if args.out else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
