"""Write the local override tasks for a data root.

    python -m tango.tasks --data-root "$TANGO_DATA"                       # all benchmarks found there
    python -m tango.tasks --data-root /data/hf --benchmarks videomme mvbench --out-dir /tmp/tasks

The default ``--data-root`` is ``$TANGO_DATA``, else ``$HF_HOME``; the default ``--out-dir`` is
``$TANGO_CACHE/tasks/local/<digest of the data root>``, the ``include_path`` of ``configs/task/*_local.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys

from tango.tasks import BENCHMARKS, default_out_dir, write_local_tasks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tango.tasks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("TANGO_DATA") or os.environ.get("HF_HOME"),
                   help="folder with the benchmarks in the $HF_HOME layout (default: $TANGO_DATA, else $HF_HOME)")
    p.add_argument("--out-dir", default=None,
                   help="where the task YAMLs go (default: $TANGO_CACHE/tasks/local/<digest of the data root>)")
    p.add_argument("--benchmarks", nargs="+", default=None, metavar="NAME",
                   help=f"some of {sorted(BENCHMARKS)} (default: every one whose annotations are found)")
    args = p.parse_args(argv)
    if not args.data_root:
        p.error("no data root: pass --data-root or set $TANGO_DATA / $HF_HOME")
    try:
        out = write_local_tasks(args.data_root, args.out_dir or default_out_dir(args.data_root), args.benchmarks)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"include_path: {out}")
    for name in sorted(n for n in os.listdir(out) if n.endswith(".yaml")):
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
