"""Offline lmms-eval task overrides for the four real video benchmarks, for data already on disk.

``write_local_tasks(data_root, out_dir)`` writes, for each of VideoMME (without subtitles), MLVU dev,
LongVideoBench val (video) and MVBench (20 subtasks), a task YAML that ``include:``s lmms-eval's built-in one (so
prompts, ``process_results`` and aggregation are the real ones) and swaps the dataset for the local annotation file
and the video paths for the local video folder. ``out_dir`` is then the ``include_path`` of a ``TaskManager``.

Built-in task -> local task: results key (filter ``none``), scale (from the built-in tasks'
``process_results`` / ``aggregation`` in lmms-eval 0.7.3):

- ``videomme`` -> ``videomme_local``: ``videomme_perception_score``, 0-100 micro accuracy;
- ``mlvu_dev`` -> ``mlvu_dev_local``: ``mlvu_percetion_score`` (sic), 0-100 macro over the 7 task types;
- ``longvideobench_val_v`` -> ``longvideobench_val_v_local``: ``lvb_acc``, 0-1;
- ``mvbench`` (group) -> ``mvbench_local`` (group of ``mvbench_local_<subtask>``): ``mvbench_accuracy`` per
  subtask, 0-100; no group score (average the 20 subtasks, as the harness does).

Data layout: see ``tango.tasks.layout`` (the ``$HF_HOME`` layout of lmms-eval, as ``scripts/prepare_data.py``
leaves it). Example::

    python scripts/prepare_data.py download videomme --data-root "$TANGO_DATA"   # online machine
    python scripts/prepare_data.py verify videomme --data-root "$TANGO_DATA"
    python -m tango.tasks --data-root "$TANGO_DATA"   # -> $TANGO_CACHE/tasks/local/<digest> (the configs' include_path)
    python run.py model=llava_ov method=tango task=videomme_local

    from lmms_eval.tasks import TaskManager
    from tango.tasks import write_local_tasks
    tm = TaskManager(include_path=write_local_tasks("/data/hf", "/tmp/tasks", ["videomme"]))
"""

from tango.tasks.layout import (
    BENCHMARKS,
    Benchmark,
    find_annotations,
    resolve_benchmark,
    video_path,
)
from tango.tasks.writer import MANIFEST, local_task_names, source_digest, write_local_tasks

__all__ = ["BENCHMARKS", "MANIFEST", "Benchmark", "default_out_dir", "find_annotations", "local_task_names",
           "resolve_benchmark", "source_digest", "video_path", "write_local_tasks"]


def default_out_dir(data_root: str) -> str:
    """``$TANGO_CACHE/tasks/local/<source_digest(data_root)>`` (cache default ``~/.cache/tango-harness``): the
    ``include_path`` that ``configs/task/*_local.yaml`` give the tasks of ``data_root``."""
    import os

    cache = os.environ.get("TANGO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tango-harness")
    return os.path.join(cache, "tasks", "local", source_digest(data_root))
