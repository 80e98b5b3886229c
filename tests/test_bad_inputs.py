"""Every row of the catalogue of bad inputs (tests/bad_inputs.py) against the real code, and the README's table."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import CATALOGUE, markdown
from faults import write_truncated_mp4
from hydra.errors import HydraException

from tango.config import ConfigError, compose, validate

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def _row_id(b) -> str:
    return f"{b.kind}:{b.given}"


def _error_text(e: BaseException) -> str:
    """The message with its causes, as Hydra prints them (``Error merging override`` + why)."""
    parts = []
    while e is not None:
        parts.append(str(e))
        e = e.__cause__
    return "\n".join(parts)


@pytest.mark.parametrize("bad", [b for b in CATALOGUE if b.kind == "config"], ids=_row_id)
def test_run_refuses_before_anything_loads(bad, monkeypatch, tmp_path):
    overrides = []
    for token in bad.given.split():
        if token.startswith("TANGO_DATA="):
            value = token.split("=", 1)[1]
            if value == "<empty-dir>":
                value = str(tmp_path)
            monkeypatch.setenv("TANGO_DATA", value)
        else:
            overrides.append(token)
    with pytest.raises((ConfigError, HydraException)) as e:
        validate(compose(overrides))
    assert bad.message in _error_text(e.value)


@pytest.mark.parametrize("bad", [b for b in CATALOGUE if b.kind == "lmms_eval"], ids=_row_id)
def test_lmms_eval_model_args_exit_2_with_one_line(bad, capsys):
    from tango.api import HarnessLM

    with pytest.raises(SystemExit) as e:  # lmms-eval catches every Exception from the model's constructor
        HarnessLM.create_from_arg_string(bad.given)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert bad.message in err and "Traceback" not in err


# ---- data ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_task(tmp_path_factory) -> Path:
    from tango.data.synthetic import ensure_synthetic_task

    return ensure_synthetic_task(tmp_path_factory.mktemp("task") / "t", num_videos=4, num_frames=4, size=64)


def _broken_task(src: Path, dst: Path, edit) -> Path:
    """A copy of the synthetic task whose docs went through ``edit(docs)``."""
    shutil.copytree(src, dst)
    docs = [json.loads(line) for line in (src / "test.jsonl").read_text().splitlines()]
    docs = [{**d, "video": d["video"].replace(str(src), str(dst))} for d in docs]
    edit(docs)
    (dst / "test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (dst / "tango_synthetic.yaml").write_text((src / "tango_synthetic.yaml").read_text().replace(str(src), str(dst)))
    return dst


def _drop(key: str, docs_: str = "one"):
    def edit(docs):
        for i, d in enumerate(docs):
            if docs_ == "all" or i == {"answer": 1, "video": 2, "options": 3}[key]:
                del d[key]
    return edit


def _delete_video(docs):
    Path(docs[2]["video"]).unlink()


DATA_CASES = {
    "an annotation without `answer`": _drop("answer"),
    "no annotation has `answer`": _drop("answer", "all"),
    "an annotation without `video`": _drop("video"),
    "an annotation without `options`": _drop("options"),
    "a video file missing": _delete_video,
}


@pytest.mark.parametrize("bad", [b for b in CATALOGUE if b.kind == "data"], ids=_row_id)
def test_bad_data_is_named_before_inference_or_recorded_per_sample(bad, synthetic_task, tmp_path):
    if bad.given.startswith("a truncated mp4"):
        from tango.video import read_clip

        for backend in ("decord", "pyav"):  # both decoders read 18 frames without an error of their own
            with pytest.raises(Exception) as e:
                read_clip(write_truncated_mp4(tmp_path / "cut.mp4"), 8, backend=backend)
            assert bad.message in f"{type(e.value).__name__}: {e.value}"
        return
    if bad.given.startswith("a 1-frame clip"):
        import torch

        from tango.methods import METHODS

        with pytest.raises(Exception) as e:
            METHODS["dycoke"]().prune(torch.randn(1, 4, 8), budget=0.5)
        assert bad.message in f"{type(e.value).__name__}: {e.value}"
        return
    from lmms_eval.tasks import TaskManager

    from tango.eval import check_docs

    task_dir = _broken_task(synthetic_task, tmp_path / "task", DATA_CASES[bad.given])
    with pytest.raises((ConfigError, FileNotFoundError)) as e:
        check_docs(["tango_synthetic"], TaskManager(include_path=str(task_dir)))
    assert bad.message in str(e.value) and str(task_dir) in str(e.value)  # the annotation file or the video named


def test_the_complete_synthetic_task_passes_the_checks(synthetic_task):
    from lmms_eval.tasks import TaskManager

    from tango.eval import doc_problems

    assert doc_problems(["tango_synthetic"], TaskManager(include_path=str(synthetic_task))) == ([], [])


def test_every_data_row_has_a_case():
    data = {b.given for b in CATALOGUE if b.kind == "data"}
    assert set(DATA_CASES) | {b.given for b in CATALOGUE if b.given.startswith(("a truncated", "a 1-frame"))} == data


def test_readme_table_is_the_catalogue():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- begin:bad-inputs (python scripts/update_readme.py) -->\n", "<!-- end:bad-inputs -->"
    assert begin in readme and end in readme, "the README lost its catalogue of bad inputs"
    assert readme.split(begin, 1)[1].split(end, 1)[0] == markdown(), "regenerate: python scripts/update_readme.py"


def test_short_clips_are_flagged_not_silently_padded():
    from tango.video import Clip

    clip = Clip(frames=np.zeros((4, 2, 2, 3), np.uint8), indices=np.array([0, 0, 1, 1]), timestamps=np.zeros(4),
                avg_fps=8.0, total_frames=2)
    assert clip.repeated_frames == 2
