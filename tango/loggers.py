"""Result sinks over the same flat record: CSV always, W&B optionally. Compute code never imports wandb."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tango.glossary import rows
from tango.records import to_jsonable, upsert_csv


class CsvSink:
    def __init__(self, path: str):
        self.path = path

    def log(self, record: dict, samples: list[dict], config: dict, run_dir: Path) -> None:
        upsert_csv(self.path, record, rebuild_from=Path(run_dir).parent.parent)  # <results>/runs/<key>


class WandbSink:
    """One W&B run per harness run: config, the record as summary + one history row, a per-sample table, and the
    glossary entries of the record's fields (table ``glossary``, from :mod:`tango.glossary`).

    ``mode="offline"`` writes ``<run_dir>/wandb/offline-run-*`` (upload later with ``wandb sync``)."""

    MODES = ("offline", "online", "disabled")

    def __init__(self, mode: str = "offline", project: str = "tango-harness", entity: str | None = None,
                 tags: list[str] | None = None):
        if mode not in self.MODES:
            raise ValueError(f"logger.wandb.mode={mode!r}; valid: {list(self.MODES)}")
        self.mode, self.project, self.entity, self.tags = mode, project, entity, list(tags or [])

    def log(self, record: dict, samples: list[dict], config: dict, run_dir: Path) -> None:
        if self.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        # This sink owns <run_dir>/wandb: a run that logs again (force=true, or a retry after an interrupted
        # attempt) replaces the earlier offline run instead of leaving a second, possibly incomplete one beside it.
        shutil.rmtree(Path(run_dir) / "wandb", ignore_errors=True)

        run = wandb.init(project=self.project, entity=self.entity, name=record["run_key"], config=config,
                         dir=str(run_dir), mode=self.mode, tags=self.tags, reinit="finish_previous")
        try:
            scalars = {k: v for k, v in to_jsonable(record).items() if isinstance(v, (int, float)) and v is not None}
            run.log(scalars)
            run.summary.update(to_jsonable(record))
            glossary = [list(r) for r in rows(record)]
            run.log({"glossary": wandb.Table(columns=["field", "unit", "meaning"], data=glossary)})
            if samples:
                cols = sorted({k for s in samples for k, v in s.items() if isinstance(v, (str, int, float, bool))})
                run.log({"samples": wandb.Table(columns=cols, data=[[s.get(c) for c in cols] for s in samples])})
        finally:
            run.finish()


def build_sinks(logger_cfg) -> list:
    sinks = []
    if logger_cfg.get("csv") is not None:
        sinks.append(CsvSink(logger_cfg.csv.path))
    if logger_cfg.get("wandb") is not None:
        w = logger_cfg.wandb
        sinks.append(WandbSink(mode=w.mode, project=w.project, entity=w.entity, tags=list(w.tags)))
    return sinks
