"""``tango.load`` from a notebook: the same composition as run.py (per-model method settings included), and a
one-call ``answer``."""
from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

import tango
from tango.config import ConfigError, compose
from tango.methods import METHODS

pytestmark = pytest.mark.tiny


def test_per_model_settings_are_run_pys():
    from tango.api import compose_run

    cfg = compose_run("llava_ov", "tango", 0.1)
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(compose(["model=llava_ov", "method=tango",
                                                                            "budget=0.1"]))
    # configs/model_method/llava_ov_tango.yaml: LLaVA-OV's sink positions, which the bare dataclass does not know
    assert list(cfg.method.sink_indices) == [28, 27, 41, 169, 11, 12] != METHODS["tango"]().sink_indices


def test_load_and_answer(cache_dir, monkeypatch, tmp_path):
    from tango.data.synthetic import ensure_synthetic_task, load_docs

    monkeypatch.setenv("TANGO_CACHE", str(cache_dir))
    lm = tango.load("tiny_llava_video", "tango", 0.25, device="cpu", **{"model.num_frames": 8})
    expected = OmegaConf.to_object(compose(["model=tiny_llava_video", "method=tango", "budget=0.25"]).method)
    assert dataclasses.asdict(lm.method) == dataclasses.asdict(expected) and lm.method.inner_llm  # per-model stage
    assert (lm.budget, lm.num_frames) == (0.25, 8)
    doc = load_docs(ensure_synthetic_task(tmp_path / "task", num_videos=1, num_frames=8, size=64))[0]
    text = lm.answer(doc["video"], doc["question"], max_new_tokens=2)
    assert isinstance(text, str)
    assert lm.last_stats["tokens_layer_avg"] < 0.3 * lm.last_stats["tokens_in"]  # the realised layer-averaged budget
    assert tango.load("tiny_llava_ov", "none", 0.1, device="cpu").budget == 1.0  # `none` runs at 1, as in run.py


def test_load_refuses_bad_values_before_loading():
    with pytest.raises(ConfigError, match="budget=1.5 is outside the valid range"):
        tango.load("llava_ov", "tango", 1.5)
    with pytest.raises(ConfigError, match="did you mean method.alpha"):
        tango.load("llava_ov", "tango", 0.1, **{"+method.alpah": 2})
