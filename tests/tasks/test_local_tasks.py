"""Offline overrides of the four real video benchmarks (tango.tasks): the YAMLs compose from lmms-eval's built-in
ones and, on a tiny local dataset in the real schema with synthetic videos, run through the real prompts,
process_results and aggregation, giving the metric keys and scales the harness reads."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tango_tasks_fixtures import (
    LVB_DOCS,
    MLVU_DOCS,
    VIDEOMME_DOCS,
    WRONG,
    build_data_root,
)

from tango.tasks import (
    BENCHMARKS,
    MANIFEST,
    default_out_dir,
    find_annotations,
    local_task_names,
    resolve_benchmark,
    write_local_tasks,
)
from tango.tasks.layout import builtin_tasks_dir, mvbench_subtasks

ROOT = Path(__file__).resolve().parents[2]
LOCAL_TASKS = ["videomme_local", "mlvu_dev_local", "longvideobench_val_v_local", "mvbench_local"]
CONFIGS = {"videomme_local": "videomme", "mlvu_local": "mlvu", "longvideobench_local": "longvideobench",
           "mvbench_local": "mvbench"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> tuple[Path, dict]:
    """(root, {benchmark: [video paths]}): all four benchmarks in their real schemas, tiny mp4s."""
    root = tmp_path_factory.mktemp("tango_data")
    return root, build_data_root(root)


# ---------------------------------------------------------------------------------------------------------------
# unit: names, writing, errors (no lmms-eval import)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_benchmark_names_resolve_and_bad_ones_list_the_valid_ones():
    assert resolve_benchmark("videomme").local_task == "videomme_local"
    assert resolve_benchmark("mlvu").key == resolve_benchmark("mlvu_dev_local").key == "mlvu_dev"
    assert resolve_benchmark("longvideobench").key == "longvideobench_val_v"
    assert resolve_benchmark("mvbench_local_action_antonym").key == "mvbench"
    with pytest.raises(ValueError, match=r"unknown benchmark 'videome'.*'longvideobench_val_v'.*'mvbench'"):
        resolve_benchmark("videome")
    assert local_task_names("mvbench")[:2] == ["mvbench_local", "mvbench_local_action_sequence"]
    assert len(local_task_names("mvbench")) == 21 and len(mvbench_subtasks()) == 20


@pytest.mark.unit
def test_written_yamls_include_the_builtin_ones_with_local_data(data_root, tmp_path):
    root, _ = data_root
    out = Path(write_local_tasks(root, tmp_path / "tasks"))
    tasks_dir = builtin_tasks_dir()
    names = sorted(p.name for p in out.iterdir())
    assert {"videomme_local.yaml", "mlvu_dev_local.yaml", "longvideobench_val_v_local.yaml", "mvbench_local.yaml",
            "tango_local_videomme.py", "tango_local_mvbench.py", MANIFEST} <= set(names)
    assert sum(n.startswith("mvbench_local_") and n.endswith(".yaml") for n in names) == 20

    def load(name):  # the `!function` tag kept as text
        loader = type("L", (yaml.SafeLoader,), {})
        loader.add_constructor("!function", lambda ld, node: "!function " + ld.construct_scalar(node))
        return yaml.load((out / name).read_text(), Loader=loader)

    v = load("videomme_local.yaml")
    assert v["include"] == str(tasks_dir / "videomme" / "videomme.yaml") and os.path.isfile(v["include"])
    assert v["dataset_path"] == "parquet" and "video" not in v["dataset_kwargs"]
    assert v["dataset_kwargs"]["data_files"] == {"test": [str(root / "videomme" / "test-00000-of-00001.parquet")]}
    assert v["doc_to_visual"] == "!function tango_local_videomme.doc_to_visual"
    s = load("mvbench_local_fine_grained_pose.yaml")
    assert s["include"] == str(tasks_dir / "mvbench" / "mvbench_fine_grained_pose.yaml")
    assert s["dataset_path"] == "json" and s["dataset_name"] is None
    assert s["dataset_kwargs"]["data_files"] == {"train": [str(root / "mvbench_video/json/fine_grained_pose.json")]}
    g = load("mvbench_local.yaml")
    assert g["group"] == "mvbench_local" and g["task"] == [f"mvbench_local_{t}" for t in mvbench_subtasks()]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["benchmarks"]["mlvu_dev"]["data_root"] == str(root)
    # Idempotent: a second call rewrites identical files.
    before = {p.name: p.read_text() for p in out.iterdir() if p.suffix in (".yaml", ".py")}
    write_local_tasks(root, out)
    assert before == {p.name: p.read_text() for p in out.iterdir() if p.suffix in (".yaml", ".py")}


@pytest.mark.unit
def test_clear_errors_for_bad_roots_and_missing_annotations(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root .*nope does not exist"):
        write_local_tasks(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ValueError, match="TANGO_DATA"):
        write_local_tasks("", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"(?s)no benchmark annotations.*videomme/test-\*\.parquet.*"
                                                r"prepare_data.py download videomme"):
        write_local_tasks(empty, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"(?s)mvbench subtask 'action_sequence'.*mvbench_video/json"):
        write_local_tasks(empty, tmp_path / "out", ["mvbench"])
    with pytest.raises(ValueError, match="unknown benchmark 'mmbench'"):
        write_local_tasks(empty, tmp_path / "out", ["mmbench"])


@pytest.mark.unit
def test_annotations_are_found_in_the_hub_cache_and_only_present_benchmarks_are_written(tmp_path):
    from tango_tasks_fixtures import _parquet

    repo = tmp_path / "hub" / "datasets--lmms-eval--Video-MME"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    _parquet(repo / "snapshots" / "abc123" / "videomme" / "test-00000-of-00001.parquet", VIDEOMME_DOCS)
    _parquet(repo / "snapshots" / "old999" / "videomme" / "test-00000-of-00001.parquet", VIDEOMME_DOCS[:1])
    assert find_annotations(BENCHMARKS["videomme"], tmp_path) == [
        str(repo / "snapshots" / "abc123" / "videomme" / "test-00000-of-00001.parquet")]
    out = Path(write_local_tasks(tmp_path, tmp_path / "tasks"))  # mlvu, lvb, mvbench absent: skipped
    assert sorted(p.name for p in out.glob("*.yaml")) == ["videomme_local.yaml"]
    # What the runner would pass: the config's lmms_task.
    out2 = Path(write_local_tasks(tmp_path, tmp_path / "tasks2", ["videomme_local"]))
    assert (out2 / "videomme_local.yaml").read_text() == (out / "videomme_local.yaml").read_text()


@pytest.mark.unit
def test_cli_writes_the_tasks(data_root, tmp_path, capsys):
    from tango.tasks.__main__ import main

    root, _ = data_root
    assert main(["--data-root", str(root), "--out-dir", str(tmp_path / "t"), "--benchmarks", "mlvu"]) == 0
    assert f"include_path: {tmp_path / 't'}" in capsys.readouterr().out
    assert (tmp_path / "t" / "mlvu_dev_local.yaml").is_file()
    assert main(["--data-root", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "t")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.unit
def test_local_task_configs_match_the_builtin_configs(monkeypatch, tmp_path):
    from tango.config import compose

    monkeypatch.setenv("TANGO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TANGO_DATA", str(tmp_path / "data"))
    for local, builtin in CONFIGS.items():
        cfg = compose([f"task={local}"]).task
        ref = yaml.safe_load((ROOT / "configs" / "task" / f"{builtin}.yaml").read_text())
        assert cfg.data_root == str(tmp_path / "data")
        # One generated folder per data root: runs on other data never rewrite the tasks this one evaluates.
        assert cfg.include_path == default_out_dir(cfg.data_root)
        assert Path(cfg.include_path).parent == tmp_path / "cache/tasks/local"
        assert compose([f"task={local}", f"task.data_root={tmp_path}/other"]).task.include_path != cfg.include_path
        assert compose([f"task={local}", f"task.data_root={tmp_path}/x/../data"]).task.include_path == cfg.include_path
        assert (cfg.metric, cfg.metric_scale) == (ref["metric"], ref["metric_scale"])
        assert cfg.lmms_task == resolve_benchmark(builtin).local_task


# ---------------------------------------------------------------------------------------------------------------
# tiny: through lmms-eval's simple_evaluate with a stub model
# ---------------------------------------------------------------------------------------------------------------


def _right_letter(task: str, doc: dict) -> tuple[str, int]:
    """(correct letter, number of options) of ``doc`` in the real schema of ``task``."""
    if task in ("videomme_local", "mlvu_dev_local"):
        return doc["answer"], 4
    if task == "longvideobench_val_v_local":
        return chr(65 + doc["correct_choice"]), sum(doc[f"option{k}"] != "N/A" for k in range(5))
    return string.ascii_uppercase[doc["candidates"].index(doc["answer"])], len(doc["candidates"])


MV_WRONG = set(mvbench_subtasks()[:10])  # doc 1 answered wrong -> 50 ...
MV_EMPTY = "action_antonym"              # ... except here: doc 1 answered "" -> left out of the denominator -> 100


def _reply(task: str, doc_id: int, doc: dict) -> str:
    letter, n = _right_letter(task, doc)
    if task.startswith("mvbench_local_"):
        sub = task.removeprefix("mvbench_local_")
        if doc_id == 1 and sub == MV_EMPTY:
            return ""
        wrong = doc_id == 1 and sub in MV_WRONG
    else:
        wrong = doc_id in WRONG[task]
    if wrong:
        letter = chr(65 + (ord(letter) - 65 + 1) % n)
    return {"videomme_local": f"{letter}", "mlvu_dev_local": f"{letter})",
            "longvideobench_val_v_local": f"{letter}."}.get(task, f"({letter})")


EXPECTED = {  # metric on the task's own scale (lmms-eval 0.7.3's aggregations)
    "videomme_local": 100 * 2 / 3,                      # micro accuracy, 0-100
    "mlvu_dev_local": (50 + 100 + 100) / 7,             # macro over the 7 dev types (4 absent -> 0), 0-100
    "longvideobench_val_v_local": 0.75,                 # 0-1
    **{f"mvbench_local_{s}": 50.0 if s in MV_WRONG and s != MV_EMPTY else 100.0 for s in mvbench_subtasks()},
}
KEYS = {"videomme_local": "videomme_perception_score", "mlvu_dev_local": "mlvu_percetion_score",
        "longvideobench_val_v_local": "lvb_acc"}


@pytest.fixture(scope="module")
def evaluated(data_root, tmp_path_factory):
    root, videos = data_root
    tmp = tmp_path_factory.mktemp("lmms")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "LMMS_EVAL_DATASETS_CACHE": str(tmp / "datasets_cache")}.items():
            mp.setenv(k, v)
        from lmms_eval.api.model import lmms
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager

        class Stub(lmms):
            is_simple = True

            def __init__(self):
                super().__init__()
                self.seen = {}

            def generate_until(self, requests):
                replies = []
                for req in requests:
                    ctx, _gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                    doc = self.task_dict[task][split][doc_id]
                    visuals = doc_to_visual(doc)
                    assert len(visuals) == 1 and os.path.isfile(visuals[0]), visuals
                    self.seen[(task, doc_id)] = (ctx, visuals[0])
                    replies.append(_reply(task, doc_id, doc))
                return replies

            def loglikelihood(self, requests):
                raise NotImplementedError

            def generate_until_multi_round(self, requests):
                raise NotImplementedError

            def clean(self):
                pass

        include_path = write_local_tasks(root, tmp / "tasks")
        tm = TaskManager("WARNING", include_path=include_path, include_defaults=False)
        lm = Stub()
        results = simple_evaluate(model=lm, tasks=LOCAL_TASKS, task_manager=tm, bootstrap_iters=0, log_samples=True)
        yield SimpleNamespace(results=results, lm=lm, tm=tm, root=root, videos=videos)


@pytest.mark.tiny
def test_overrides_score_through_the_real_process_results_and_aggregation(evaluated):
    res = evaluated.results["results"]
    for task, key in KEYS.items():
        assert res[task][f"{key},none"] == pytest.approx(EXPECTED[task]), task
    assert set(evaluated.results["group_subtasks"]["mvbench_local"]) == {f"mvbench_local_{s}"
                                                                         for s in mvbench_subtasks()}
    for sub in mvbench_subtasks():
        assert res[f"mvbench_local_{sub}"]["mvbench_accuracy,none"] == pytest.approx(EXPECTED[f"mvbench_local_{sub}"])
    assert "mvbench_accuracy,none" not in res.get("mvbench_local", {})  # like the built-in group: no aggregate
    samples = evaluated.results["samples"]
    assert [s["doc"]["videoID"] for s in sorted(samples["videomme_local"], key=lambda s: s["doc_id"])] == \
        [d["videoID"] for d in VIDEOMME_DOCS]
    assert len(samples["mlvu_dev_local"]) == len(MLVU_DOCS) and len(samples["longvideobench_val_v_local"]) == 4


@pytest.mark.tiny
def test_harness_reads_the_metric_from_the_local_configs_on_0_100(evaluated):
    from tango.runner import _accuracy

    expected = {"videomme_local": 100 * 2 / 3, "mlvu_local": 250 / 7, "longvideobench_local": 75.0,
                "mvbench_local": (9 * 50 + 11 * 100) / 20}
    for name, value in expected.items():
        cfg = yaml.safe_load((ROOT / "configs" / "task" / f"{name}.yaml").read_text())
        task = SimpleNamespace(lmms_task=cfg["lmms_task"], metric=cfg["metric"], metric_scale=cfg["metric_scale"])
        assert _accuracy(evaluated.results, task)[0] == pytest.approx(value), name


@pytest.mark.tiny
def test_real_prompts_and_local_video_paths(evaluated):
    seen, root = evaluated.lm.seen, evaluated.root
    ctx, video = seen[("videomme_local", 0)]
    assert ctx.startswith("Select the best answer to the following multiple-choice question based on the video")
    assert "How many shapes appear?\nA. 1.\nB. 2." in ctx
    assert ctx.endswith("Answer with the option's letter from the given choices directly.")
    assert video == str(root / "videomme" / "data" / "fFjv93ACGo8.mp4")
    ctx, video = seen[("mlvu_dev_local", 3)]
    assert ctx == MLVU_DOCS[3]["question"] + "\nOnly give the best option.\nBest option: ("
    assert video == str(root / "mlvu" / "order_1.mp4")
    ctx, video = seen[("longvideobench_val_v_local", 0)]
    assert "\nA. option text 0-0\n" in ctx and "E. " not in ctx  # "N/A" options are dropped
    assert ctx.endswith("Answer with the option's letter from the given choices directly.\n")
    assert video == str(root / "datasets" / "longvideobench" / "videos" / LVB_DOCS[0]["video_path"])
    ctx, video = seen[("mvbench_local_action_antonym", 1)]
    assert ctx.startswith("Question:What happens in action_antonym clip 1?\nOption:\n(A) action_antonym answer 0\n")
    assert ctx.endswith("Only give the best option.\n")
    assert video == str(root / "mvbench_video" / "ssv2_video_mp4" / "action_antonym_1.mp4")
    _, video = seen[("mvbench_local_moving_count", 0)]  # only under data0613/: the fallback
    assert video == str(root / "mvbench_video" / "data0613" / "clevrer" / "video_validation" / "moving_count_0.mp4")
    assert len(seen) == 3 + 4 + 4 + 40


@pytest.mark.tiny
def test_harness_check_videos_finds_missing_files(evaluated):
    from tango.eval import doc_problems

    assert doc_problems(LOCAL_TASKS, evaluated.tm) == ([], [])
    gone = Path(evaluated.videos["longvideobench_val_v"][2])
    moved = gone.with_suffix(".bak")
    gone.rename(moved)
    try:
        assert doc_problems(["longvideobench_val_v_local"], evaluated.tm) == ([str(gone)], [])
    finally:
        moved.rename(gone)
