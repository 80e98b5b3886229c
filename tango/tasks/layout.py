"""Where each benchmark's annotations and videos live under a data root, and how a doc maps to its video file.

The data root has the layout lmms-eval 0.7.3 itself uses under ``$HF_HOME`` (what ``scripts/prepare_data.py
download`` produces), so ``TANGO_DATA=$HF_HOME`` works for a cache that lmms-eval filled too::

    <data_root>/
      videomme/test-*.parquet              annotations (copied there by prepare_data; else found in the hub cache)
      videomme/data/<videoID>.mp4          (.MP4 / .mkv also accepted, like the built-in task)
      mlvu/test-*.parquet
      mlvu/<video_name>
      datasets/longvideobench/validation-*.parquet
      datasets/longvideobench/videos/<video_path>
      mvbench_video/json/<subtask>.json    (mvbench_video: the `video` revision snapshot, or a link to it)
      mvbench_video/<DATA_LIST[subtask]>/<video>   (fallback: mvbench_video/data0613/<DATA_LIST[subtask]>/<video>)
      hub/datasets--<org>--<name>/snapshots/<rev>/...   the HF hub cache; annotations are also looked up there

Nothing here imports lmms-eval (it pulls in torch and datasets): the built-in task folder is located with
``importlib.util.find_spec`` and MVBench's ``DATA_LIST`` is read from its ``utils.py`` with ``ast``.
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import os
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "builtin_tasks_dir",
    "find_annotations",
    "mvbench_data_list",
    "mvbench_subtasks",
    "resolve_benchmark",
    "video_path",
]


@dataclass(frozen=True)
class Benchmark:
    key: str                      # the built-in lmms-eval task (group) this overrides
    local_task: str               # the override's task (group) name
    builtin_yaml: str             # relative to lmms_eval/tasks
    dataset_path: str             # local datasets builder: parquet | json
    split: str                    # the built-in task's split
    video_dir: str                # relative to the data root (= lmms-eval's dataset_kwargs.cache_dir layout)
    annotations: tuple[str, ...]  # globs relative to the data root, tried in order ({sub}: MVBench subtask)
    hub_repo: str                 # HF dataset repo and revision of the built-in YAML
    hub_revision: str
    hub_annotations: str          # glob inside the hub snapshot
    metric: str                   # results key the harness reads (filter `none`)
    metric_scale: float           # multiplier to 0-100


BENCHMARKS: dict[str, Benchmark] = {
    b.key: b
    for b in (
        Benchmark("videomme", "videomme_local", "videomme/videomme.yaml", "parquet", "test", "videomme/data",
                  ("videomme/test-*.parquet", "videomme/videomme/test-*.parquet"),
                  "lmms-eval/Video-MME", "main", "videomme/test-*.parquet", "videomme_perception_score", 1.0),
        Benchmark("mlvu_dev", "mlvu_dev_local", "mlvu/mlvu_dev.yaml", "parquet", "test", "mlvu",
                  ("mlvu/test-*.parquet", "mlvu/mlvu/test-*.parquet"),
                  "sy1998/MLVU_dev", "main", "mlvu/test-*.parquet", "mlvu_percetion_score", 1.0),
        Benchmark("longvideobench_val_v", "longvideobench_val_v_local", "longvideobench/longvideobench_val_v.yaml",
                  "parquet", "validation", "datasets/longvideobench/videos",
                  ("datasets/longvideobench/validation-*.parquet",),
                  "longvideobench/LongVideoBench", "main", "validation-*.parquet", "lvb_acc", 100.0),
        Benchmark("mvbench", "mvbench_local", "mvbench/mvbench.yaml", "json", "train", "mvbench_video",
                  ("mvbench_video/json/{sub}.json",),
                  "OpenGVLab/MVBench", "video", "json/{sub}.json", "mvbench_accuracy", 1.0),
    )
}


def resolve_benchmark(name: str) -> Benchmark:
    """A benchmark by its built-in key (``videomme``), local task name (``videomme_local``) or harness config name
    (``mlvu``, ``longvideobench``); a clear error otherwise."""
    aliases = {"mlvu": "mlvu_dev", "longvideobench": "longvideobench_val_v"}
    key = aliases.get(name, name)
    for b in BENCHMARKS.values():
        if key in (b.key, b.local_task) or key.startswith(b.local_task + "_"):
            return b
    raise ValueError(f"unknown benchmark {name!r}; valid: {sorted(BENCHMARKS)} "
                     f"(or their local tasks {sorted(b.local_task for b in BENCHMARKS.values())})")


def builtin_tasks_dir() -> Path:
    """lmms-eval's installed ``tasks`` folder, found without importing lmms_eval."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("lmms_eval is not installed in this environment (pip install lmms-eval==0.7.3)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    if not path.is_dir():
        raise FileNotFoundError(f"lmms_eval has no tasks folder at {path}")
    return path


class _TagIgnoringLoader(yaml.SafeLoader):
    pass


_TagIgnoringLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.load(f, Loader=_TagIgnoringLoader)


@cache
def mvbench_subtasks() -> tuple[str, ...]:
    """The 20 MVBench subtasks (``action_antonym``, ...) in the order of the built-in group YAML."""
    group = _read_yaml(builtin_tasks_dir() / "mvbench" / "mvbench.yaml")
    return tuple(t.removeprefix("mvbench_") for t in group["task"])


@cache
def mvbench_data_list() -> dict[str, str]:
    """The built-in ``DATA_LIST`` (subtask -> video folder), read from lmms-eval's mvbench/utils.py."""
    with warnings.catch_warnings():  # the file has regexes with invalid escapes ("\d"): SyntaxWarning on parse
        warnings.simplefilter("ignore")
        tree = ast.parse((builtin_tasks_dir() / "mvbench" / "utils.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DATA_LIST" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    raise RuntimeError("DATA_LIST not found in lmms_eval/tasks/mvbench/utils.py; lmms-eval changed?")


def _hub_snapshot(data_root: Path, repo: str, revision: str) -> Path | None:
    """The snapshot folder of ``repo@revision`` in the HF hub cache under ``data_root`` (or ``$HF_HUB_CACHE``)."""
    folder = "datasets--" + repo.replace("/", "--")
    caches = [data_root / "hub"]
    if os.environ.get("HF_HUB_CACHE"):
        caches.append(Path(os.environ["HF_HUB_CACHE"]))
    for hub in caches:
        ref = hub / folder / "refs" / revision
        if ref.is_file():
            snap = hub / folder / "snapshots" / ref.read_text().strip()
            if snap.is_dir():
                return snap
    return None


def find_annotations(bench: Benchmark, data_root: str | os.PathLike, subtask: str | None = None) -> list[str]:
    """The annotation files of ``bench`` (one MVBench ``subtask``) under ``data_root``: the first candidate glob
    with matches, then the hub cache. Raises ``FileNotFoundError`` naming every place searched."""
    root = Path(data_root)
    searched = []
    for pattern in bench.annotations:
        pattern = str(root / pattern.format(sub=subtask))
        searched.append(pattern)
        hits = sorted(glob.glob(pattern))
        if hits:
            return [str(Path(h).absolute()) for h in hits]
    snap = _hub_snapshot(root, bench.hub_repo, bench.hub_revision)
    hub_pattern = bench.hub_annotations.format(sub=subtask)
    if snap is not None:
        hits = sorted(glob.glob(str(snap / hub_pattern)))
        if hits:
            return [str(Path(h).absolute()) for h in hits]
    searched.append(f"{root}/hub/datasets--{bench.hub_repo.replace('/', '--')}/snapshots/<refs/{bench.hub_revision}>"
                    f"/{hub_pattern}")
    what = bench.key + (f" subtask {subtask!r}" if subtask else "")
    raise FileNotFoundError(f"no annotations for {what} under data root {root}; searched:\n  " + "\n  ".join(searched)
                            + f"\nDownload them with: python scripts/prepare_data.py download {bench.key} "
                              f"--data-root {root}")


def video_path(bench_key: str, doc: dict, video_dir: str, subtask: str | None = None) -> str:
    """The video file of ``doc``: the same path rule as the built-in ``doc_to_visual``, rooted at ``video_dir``
    (the benchmark's video folder, absolute). Returns the preferred path even if it does not exist, so a missing
    file is reported by the harness's ``check_docs`` instead of ending the process (the built-ins ``sys.exit``)."""
    if bench_key == "videomme":
        base = os.path.join(video_dir, doc["videoID"])
        for ext in (".mp4", ".MP4", ".mkv"):
            if os.path.exists(base + ext):
                return base + ext
        return base + ".mp4"
    if bench_key == "mlvu_dev":
        return os.path.join(video_dir, doc["video_name"])
    if bench_key == "longvideobench_val_v":
        return os.path.join(video_dir, doc["video_path"])
    if bench_key == "mvbench":
        data_list = mvbench_data_list()
        if subtask not in data_list:
            raise ValueError(f"unknown MVBench subtask {subtask!r}; valid: {sorted(data_list)}")
        folder = data_list[subtask]
        primary = os.path.join(video_dir, folder, doc["video"])
        # The built-in fallback for re-released clevrer/star videos (it never fires in 0.7.3: it tests the folder's
        # basename); here it is applied whenever the primary file is missing.
        fallback = os.path.join(video_dir, "data0613", folder, doc["video"])
        return fallback if not os.path.exists(primary) and os.path.exists(fallback) else primary
    raise ValueError(f"unknown benchmark {bench_key!r}; valid: {sorted(BENCHMARKS)}")
