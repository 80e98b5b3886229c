"""Experiment sweeps as lists of cells, for the plain ``sbatch --array`` route (``slurm/``).

An experiment (``configs/experiment/<name>.yaml``) declares its sweep in ``hydra.sweeper.params``; ``python run.py
-m experiment=<name>`` expands it with Hydra's basic sweeper. :func:`expand` does the same expansion outside Hydra —
same cartesian product, same precedence (a command-line value replaces the declared axis) — then composes every
combination to get its ``run_key`` and keeps one cell per key (``none`` ignores the budget, so ``none`` x 4 budgets is
one cell). Each cell is one line of command-line overrides for ``run.py``.

    cells = expand(["experiment=smoke", "task.synthetic.num_videos=8"])
    [c.line for c in cells]   # "method=none budget=0.1 experiment=smoke task.synthetic.num_videos=8", ...
"""

from __future__ import annotations

import json
import shlex
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Cell:
    overrides: tuple[str, ...]   # command-line overrides for run.py, in Hydra's override syntax
    run_key: str                 # results/runs/<run_key>/
    run_dir: Path

    @property
    def line(self) -> str:
        """The overrides as one shell-quoted line (``shlex.split`` gives them back)."""
        return shlex.join(self.overrides)

    @property
    def done(self) -> bool:
        """True when the cell's ``record.json`` exists with status ok (the runner then skips it)."""
        p = self.run_dir / "record.json"
        try:
            return json.loads(p.read_text()).get("status") == "ok"
        except (OSError, ValueError):
            return False


def combinations(overrides: list[str]) -> list[list[str]]:
    """Hydra's basic-sweeper expansion of ``overrides`` plus the composed config's ``hydra.sweeper.params``."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with _hydra():
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())  # for glob(...)
        fixed = [o.input_line for o in parser.parse_overrides(list(overrides)) if not o.is_sweep_override()]
        params = _compose(fixed).hydra.sweeper.get("params") or {}
        declared = [f"{k}={v}" for k, v in params.items()]
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(declared + list(overrides)), None)
    return batch


def expand(overrides: list[str]) -> list[Cell]:
    """One :class:`Cell` per distinct ``run_key``, in sweep order (the first combination of a key wins)."""
    cells: dict[str, Cell] = {}
    combos = combinations(overrides)
    with _hydra():
        for combo in combos:
            cfg = _compose(combo)
            key = str(cfg.run_key)
            if key not in cells:
                cells[key] = Cell(tuple(combo), key, Path(cfg.paths.results_dir) / "runs" / key)
    return list(cells.values())


def compose_cell(overrides: list[str]):
    """The job config of one cell, as ``run.py`` would see it (the ``hydra`` node removed)."""
    from omegaconf import open_dict

    with _hydra():
        cfg = _compose(list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
    return cfg


@contextmanager
def _hydra():
    import tango.config  # noqa: F401  (schemas + run_key resolver)
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="run"):
        yield


def _compose(overrides: list[str]):
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # paths interpolate ${hydra:runtime.cwd}
    return cfg


def record_failure(overrides: list[str], error: str) -> Path | None:
    """Record a cell whose process died without recording itself (killed by the OOM killer, a segfault): a
    ``failed.json`` and a ``failed`` CSV row, as the runner writes for an exception. A finished cell is left alone.
    Returns the run directory, or None when the cell is already done."""
    from tango.records import FAILED, upsert_csv, write_json
    from tango.runner import _identity

    cfg = compose_cell(overrides)
    run_dir = Path(cfg.paths.results_dir) / "runs" / cfg.run_key
    if Cell(tuple(overrides), cfg.run_key, run_dir).done:
        return None
    from tango.config import effective_budget

    failed = {**_identity(cfg, OmegaConf.to_object(cfg.method), effective_budget(cfg)), "status": "failed",
              "error": error, "wall_s": None}
    write_json(run_dir / FAILED, failed)
    if cfg.logger.get("csv") is not None:
        upsert_csv(cfg.logger.csv.path, failed)
    return run_dir
