"""A new method is one file: two toy methods, a pre-LLM one and one acting inside the LLM, are defined and registered
here, in the test file alone, and run through run.py's code path (compose -> validate -> runner) on every tiny
model family, with their realised token counts in the record."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tango import runner
from tango.config import CONFIG_DIR, compose, register_method
from tango.methods import METHODS
from tango.methods.base import PruningMethod, Selection, identity_selection
from tango.models.base import ADAPTERS

pytestmark = pytest.mark.e2e


@dataclass
class ToyFirstTokens(PruningMethod):
    """Pre-LLM: the first ``budget`` fraction of the visual tokens, in raster order."""

    name: str = "toy_first_tokens"

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        n, length, d = x.shape
        m = max(1, round(budget * n * length))
        idx = torch.arange(m, device=x.device)
        return Selection(x.reshape(-1, d)[idx], idx, {"tokens_in": n * length, "tokens_out": m})


@dataclass
class ToyDropOddAtLayer(PruningMethod):
    """In-LLM: from decoder layer ``layer`` on, every other visual position is dropped."""

    name: str = "toy_drop_odd"
    layer: int = 1

    stage = "in_llm"

    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None) -> Selection:
        return identity_selection(x)

    def decoder_hooks(self, decoder, budget):
        from tango.hooks import drop_tokens_after, keep_positions

        def select(row):
            visual = decoder.visual_positions.to(row.device)
            return keep_positions(row.shape[-1], visual, visual[::2])
        return drop_tokens_after(decoder.layers, self.layer, select, attention_row=decoder.attention_row)


@pytest.fixture(scope="module")
def toys():
    registered = [register_method(ToyFirstTokens), register_method(ToyDropOddAtLayer)]
    yield registered
    for cls in registered:
        METHODS.pop(cls.name)


def _tiny_model(family: str) -> str:
    name = f"tiny_{family}"
    assert (CONFIG_DIR / "model" / f"{name}.yaml").exists(), f"family {family} has no tiny model config {name}"
    return name


@pytest.mark.parametrize("family", sorted(ADAPTERS))
def test_toy_methods_from_a_test_file_run_on_every_tiny_family(toys, family, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("TANGO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TANGO_CACHE", str(cache_dir))
    base = [f"model={_tiny_model(family)}", "task=synthetic", "task.synthetic.num_videos=2", "logger=[csv]",
            "model.num_frames=8"]
    for name in ("toy_first_tokens", "toy_drop_odd"):
        cfg = compose([*base, f"method={name}", "budget=0.5"])
        assert runner.run(cfg) is not None
        record = json.loads((Path(cfg.paths.results_dir) / "runs" / cfg.run_key / "record.json").read_text())
        assert record["status"] == "ok" and record["n_sample_errors"] == 0 and record["method"] == name
        if name == "toy_first_tokens":  # pre-LLM: exactly half the visual tokens enter the LLM
            assert record["visual_tokens_out"] == round(0.5 * record["visual_tokens_in"])
            assert record["visual_tokens_layer_avg"] == record["visual_tokens_out"]
        else:  # in-LLM: all enter, about half remain from layer 1 on
            assert record["visual_tokens_out"] == record["visual_tokens_in"]
            assert record["visual_tokens_layer_avg"] < 0.6 * record["visual_tokens_in"]


@dataclass
class ToyLlavaOnly(ToyFirstTokens):
    """A method that declares the families it supports (``families``)."""

    name: str = "toy_llava_only"
    families = ("llava_ov",)


def test_a_method_limited_to_some_families_is_refused_elsewhere_naming_both(cache_dir):
    """Every shipped method runs on every family today, so the refusal is shown on a toy: at compose time (before
    a model loads) and by the adapter itself."""
    from tango.config import ConfigError, validate
    from tango.models.base import ensure_tiny_checkpoint, load_adapter

    register_method(ToyLlavaOnly)
    try:
        with pytest.raises(ConfigError, match=r"method=toy_llava_only: supports the model families \['llava_ov'\], "
                                              r"not model.family='qwen3_vl'"):
            validate(compose(["model=tiny_qwen3_vl", "method=toy_llava_only", "budget=0.5"]))
        adapter = load_adapter("qwen3_vl", device=torch.device("cpu"), dtype="float32", pretrained=str(
            ensure_tiny_checkpoint("qwen3_vl", cache_dir / "models" / "tiny_qwen3_vl")))
        with pytest.raises(ValueError, match="method 'toy_llava_only' supports the model families"):
            adapter.check_method(ToyLlavaOnly())
    finally:
        METHODS.pop(ToyLlavaOnly.name)
