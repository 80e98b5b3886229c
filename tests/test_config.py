"""Config composition: every model x method x task composes into the typed schema; bad input fails clearly."""

import itertools
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

import tango.config  # noqa: F401
from tango.methods import METHODS, PruningMethod
from tango.models.base import ADAPTERS

from conftest import ROOT, run_cli

CONFIGS = ROOT / "configs"
pytestmark = pytest.mark.config


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def load(overrides=()):
    return tango.config.compose(overrides)


def test_groups_are_complete():
    shipped = {name for name, cls in METHODS.items() if cls.__module__.startswith("tango.methods.")}
    assert set(choices("method")) == shipped and {"none", "tango"} <= shipped  # a YAML per shipped method
    for family in ADAPTERS:  # every family: its full-size model and a tiny one for the CPU tests
        assert {family, f"tiny_{family}"} <= set(choices("model"))
    assert {"synthetic", "videomme", "mlvu", "longvideobench", "mvbench"} <= set(choices("task"))


@pytest.mark.parametrize("model,method", list(itertools.product(choices("model"), choices("method"))))
def test_compose_every_model_and_method(model, method):
    for task in choices("task"):
        cfg = load([f"model={model}", f"method={method}", f"task={task}", "budget=0.25"])
        assert cfg.model.name == model and cfg.task.name == task
        obj = OmegaConf.to_object(cfg.method)
        assert isinstance(obj, METHODS[method]) and isinstance(obj, PruningMethod) and obj.name == method
        budget = "1" if method == "none" else "0.25"
        assert cfg.run_key == f"{model}__{method}__b{budget}__{task}__s0"


def test_default_is_the_embedded_run():
    cfg = load()
    assert (cfg.model.name, cfg.method.name, cfg.task.name, cfg.budget) == (
        "tiny_llava_ov_trained", "tango", "synthetic_pruning", 0.1)
    assert not cfg.model.tiny and cfg.task.synthetic is not None  # the shipped trained checkpoint
    assert (Path(cfg.model.pretrained) / "config.json").is_file() and Path(cfg.model.pretrained).is_relative_to(ROOT)
    assert cfg.logger.csv.path.endswith("results.csv") and cfg.logger.wandb.mode in ("offline", "disabled", "online")


def test_real_models_point_at_their_hub_ids():
    expected = {"llava_ov": ("llava-hf/llava-onevision-qwen2-7b-ov-hf", 32),
                "llava_video": ("llava-hf/LLaVA-Video-7B-Qwen2-hf", 64),
                "qwen2_5_vl": ("Qwen/Qwen2.5-VL-7B-Instruct", 64)}
    for name, (hub_id, frames) in expected.items():
        m = load([f"model={name}"]).model
        assert (m.pretrained, m.num_frames, m.tiny) == (hub_id, frames, False)
    assert load(["model=qwen2_5_vl"]).model.fps == 2.0


def test_limit_goes_into_the_run_key():
    assert load(["limit=5", "seed=3"]).run_key.endswith("__s3__limit5")


@pytest.mark.parametrize("override,exc", [
    ("method=nope", MissingConfigException), ("model=nope", MissingConfigException),
    ("task=nope", MissingConfigException), ("budget=abc", ConfigCompositionException),
    ("model.num_frames=many", ConfigCompositionException), ("method.no_such_field=1", ConfigCompositionException),
    ("model.no_such_field=1", ConfigCompositionException)])
def test_bad_overrides_fail_at_compose_time(override, exc):
    with pytest.raises(exc):
        load([override])


def test_unknown_choice_lists_the_valid_ones():
    with pytest.raises(MissingConfigException) as e:
        load(["method=nope"])
    for name in METHODS:
        assert name in str(e.value)


@pytest.mark.parametrize("args,message", [
    (["budget=1.5"], "budget=1.5 is outside the valid range (0, 1]"),
    (["budget=0"], "budget=0.0 is outside the valid range (0, 1]"),
    (["method=nope"], "Available options in 'method'"),
    (["model=nope"], "Available options in 'model'"),
])
def test_cli_fails_fast_with_a_clear_message(args, message, run_env):
    proc = run_cli(args, run_env, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (Path(run_env["TANGO_RESULTS"]) / "runs").exists() or not any(
        (Path(run_env["TANGO_RESULTS"]) / "runs").glob("*/record.json"))


def test_trained_tiny_model_and_pruning_task():
    cfg = load(["model=tiny_llava_ov_trained", "task=synthetic_pruning", "method=fastv", "budget=0.5"])
    assert not cfg.model.tiny and cfg.model.pretrained.endswith("checkpoints/tiny_llava_ov_trained")
    assert (cfg.method.layer, cfg.method.num_layers) == (1, 4)  # configs/model_method: its 4 decoder layers
    assert list(cfg.task.synthetic.question_types) == ["brief_color", "order", "when", "count_events", "background"]
    assert load(["model=tiny_llava_ov_trained", "method=dycoke"]).method.kv_layer == 1
    assert load(["task=synthetic"]).task.synthetic.question_types is None  # the default four types
    from tango.data.synthetic import QUESTION_TYPES

    assert set(cfg.task.synthetic.question_types) <= set(QUESTION_TYPES)


@pytest.mark.parametrize("path", sorted((CONFIGS / "model_method").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_method_file_changes_the_method(path):
    """A per-model method file that sets only defaults is dead config: it would hide which settings matter."""
    model, method = next((path.stem[: -len(m) - 1], m) for m in METHODS if path.stem.endswith(f"_{m}"))
    assert model in choices("model"), f"{path.name}: no model config {model!r}"
    composed = OmegaConf.to_container(load([f"model={model}", f"method={method}"]).method)
    settings = OmegaConf.to_container(OmegaConf.load(path))
    assert settings and all(composed[k] == v for k, v in settings.items())
    defaults = OmegaConf.to_container(load([f"model={model}", f"method={method}", "~model_method@method"]).method)
    assert any(defaults[k] != v for k, v in settings.items()), f"{path.name} only restates defaults"
