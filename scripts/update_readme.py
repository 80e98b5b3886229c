#!/usr/bin/env python
"""Regenerates every generated block of README.md from its source: the record glossary (tango/glossary.py), the
catalogue of bad inputs (tests/bad_inputs.py), and the result tables from the committed run records
(results/tiny_trained, results/demo_cpu). Nothing is re-run: the tables are read from records.

    python scripts/update_readme.py           # rewrite the blocks in place
    python scripts/update_readme.py --check   # exit 1 and name the stale blocks (tests/test_readme.py runs this)

A block is ``<!-- begin:NAME (python scripts/update_readme.py) -->`` ... ``<!-- end:NAME -->``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _glossary() -> str:
    from tango.glossary import markdown

    return markdown()


def _bad_inputs() -> str:
    from bad_inputs import markdown

    return markdown()


def _tiny_trained() -> str:
    from tango import report as R

    ok, failed = R.split_ok_failed(R.select(R.load_runs([ROOT / "results" / "tiny_trained"])))
    return R.tables.summary_table(ok[ok["variant"] == ""], failed, "tiny_llava_ov_trained",
                                  "synthetic_pruning").to_markdown()


def _tiny_exact_count() -> str:
    from tango import report as R
    from tango.methods import METHODS
    from tango.methods.base import ExactCount

    exact = [name for name, cls in METHODS.items() if issubclass(cls, ExactCount)]
    ok, failed = R.split_ok_failed(R.select(R.load_runs([ROOT / "results" / "tiny_trained"])))

    def pick(df):  # the standard runs of those methods and their exact_count experiment
        return df[df["method"].isin(exact + ["none"]) & ((df["variant"] == "") | (df["experiment"] == "exact_count"))]
    return R.tables.summary_table(pick(ok), pick(failed), "tiny_llava_ov_trained", "synthetic_pruning",
                                  variants=True).to_markdown()


def _demo() -> str:
    from tango import report as R

    runs = R.load_runs([ROOT / "results" / "demo_cpu"])
    tables, _ = R.build_tables(runs, significance=False)
    return tables["synthetic"].to_markdown()


BLOCKS: dict[str, Callable[[], str]] = {"glossary": _glossary, "bad-inputs": _bad_inputs,
                                        "tiny-trained": _tiny_trained, "tiny-exact-count": _tiny_exact_count,
                                        "demo-synthetic": _demo}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- begin:{name} (python scripts/update_readme.py) -->\n", f"<!-- end:{name} -->"


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every block regenerated, and the names of the blocks that changed."""
    stale = []
    for name, make in BLOCKS.items():
        begin, end = markers(name)
        if begin not in text or end not in text:
            raise SystemExit(f"README.md lacks the block {name!r} ({begin.strip()} ... {end})")
        head, rest = text.split(begin, 1)
        old, tail = rest.split(end, 1)
        new = make()
        if new != old:
            stale.append(name)
        text = head + begin + new + end + tail
    return text, stale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="report stale blocks instead of rewriting them")
    a = p.parse_args(argv)
    readme = ROOT / "README.md"
    text, stale = render(readme.read_text())
    if a.check:
        if stale:
            print(f"README.md: stale generated block(s): {', '.join(stale)}; run python scripts/update_readme.py")
            return 1
        return 0
    readme.write_text(text)
    print(f"README.md: regenerated {', '.join(stale) if stale else 'nothing (all blocks current)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
