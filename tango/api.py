"""The harness as a library: the same composition as ``run.py``, from a notebook or another program.

    import tango
    lm = tango.load("llava_ov", "tango", 0.1)              # configs/model_method/llava_ov_tango.yaml included
    lm.answer("video.mp4", "What happens after the man opens the door?")
    lm = tango.load("tiny_llava_ov", "fastv", 0.5, **{"model.num_frames": 8})

``load`` returns the lmms-eval model object (``tango.eval.PrunedVideoLM``), so ``simple_evaluate(model=lm, ...)``
works on it too. ``HarnessLM`` is the same object built from ``--model_args`` for lmms-eval's own CLI.
"""

from __future__ import annotations

import sys
from dataclasses import fields

from omegaconf import DictConfig, OmegaConf

from tango.config import ConfigError, compose, effective_budget, validate
from tango.eval import PrunedVideoLM


def lm_kwargs(cfg: DictConfig) -> dict:
    """``PrunedVideoLM`` arguments for a composed, validated config: the model's adapter loaded on ``cfg.device``,
    the method object with its per-model settings, the budget the run uses."""
    from tango.models.base import Preprocessing, load_adapter, resolve_device

    m = cfg.model
    extra = {"pooling_head": m.pooling_head} if m.pooling_head else {}
    adapter = load_adapter(m.family, pretrained=m.pretrained, device=resolve_device(cfg.device), dtype=m.dtype,
                           attn_implementation=m.attn_implementation, tiny=m.tiny, seed=m.seed, **extra)
    adapter.configure(Preprocessing(**{f.name: m[f.name] for f in fields(Preprocessing)}))
    return dict(adapter=adapter, method=OmegaConf.to_object(cfg.method), budget=effective_budget(cfg),
                num_frames=m.num_frames, fps=m.fps, video_backend=m.video_backend, max_new_tokens=m.max_new_tokens,
                frame_sampling=m.frame_sampling)


def build_lm(cfg: DictConfig) -> PrunedVideoLM:
    """The lmms-eval model of a composed, validated config (what the runner evaluates)."""
    return PrunedVideoLM(**lm_kwargs(cfg))


def task_manager(cfg: DictConfig):
    """lmms-eval's ``TaskManager`` for the run's task folder. ``model_name`` = ``model.prompt_variant`` picks the tasks'
    ``lmms_eval_specific_kwargs`` entry as ``lmms-eval --model <name>`` does (a task without that entry uses its
    ``default`` one, as in lmms-eval)."""
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=cfg.task.include_path or None, model_name=cfg.model.prompt_variant)


def compose_run(model: str, method: str, budget: float, overrides: dict | None = None) -> DictConfig:
    """``run.py model=<model> method=<method> budget=<budget> <key>=<value>...`` as a validated config."""
    cfg = compose([f"model={model}", f"method={method}", f"budget={budget}",
                   *(f"{k}={v}" for k, v in (overrides or {}).items())])
    validate(cfg)
    return cfg


def load(model: str, method: str = "none", budget: float = 1.0, **overrides) -> PrunedVideoLM:
    """Load ``model`` pruned by ``method`` at ``budget`` exactly as ``python run.py model=... method=...
    budget=... <overrides>`` would (per-model method settings included); ``overrides`` are config keys, e.g.
    ``**{"model.num_frames": 16, "method.alpha": 2.0, "device": "cpu"}``. Raises ``ConfigError`` on a bad value."""
    return build_lm(compose_run(model, method, budget, overrides))


class HarnessLM(PrunedVideoLM):
    """Built from harness config overrides, for the lmms-eval CLI:
    ``python -m lmms_eval --model tango_harness --model_args model=llava_ov,method=tango,budget=0.1 --tasks ...``.
    Any other ``key=value`` in ``model_args`` is passed on as a config override (e.g. ``model.num_frames=16``)."""

    def __init__(self, model: str = "tiny_llava_ov", method: str = "none", budget: float = 1.0,
                 device: str = "auto", batch_size: int | str = 1, **overrides):
        from hydra.errors import HydraException

        # lmms-eval's CLI catches every Exception from here and exits 0: a bad argument leaves as SystemExit(2),
        # which it does not catch, after one line that names the value and the valid ones.
        try:
            if str(batch_size) != "1":
                raise ConfigError(f"batch_size={batch_size!r}; the harness answers requests one at a time (valid: 1)")
            cfg = compose_run(model, method, budget, {"device": device, **overrides})
        except (ConfigError, HydraException) as e:
            print(f"[tango] error in --model_args: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from e
        super().__init__(**lm_kwargs(cfg))
