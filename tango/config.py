"""Typed schemas under the YAML configs (Hydra ConfigStore).

YAML stays the user surface (``configs/``); these dataclasses type-check it, so a typo or a wrong type fails at
compose time. Method schemas are the method dataclasses themselves (``tango.methods.METHODS``), stored under
``schema/method/<name>`` and pulled in by each ``configs/method/<name>.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from tango.methods import METHODS
from tango.models.base import PER_FAMILY_OPTIONS, Preprocessing


@dataclass
class ModelConfig:
    name: str = MISSING                   # config key, used in run keys and result rows
    family: str = MISSING                 # adapter family: llava_ov | llava_video | qwen2_5_vl | qwen3_vl
    pretrained: str = MISSING             # hub id or local path, loaded with from_pretrained
    tiny: bool = False                    # build a random tiny checkpoint offline at `pretrained` if it is missing
    num_frames: int = 32                  # frames sampled uniformly (linspace(0, n-1, num_frames))
    fps: Optional[float] = None           # sample at this rate instead (Qwen2.5-VL: 2), capped at num_frames
    frame_sampling: str = "uniform"       # uniform (lmms-eval LLaVA wrappers) | qwen_vl_utils (its Qwen wrappers)
    # How a request becomes model inputs where reference paths differ (tango.models.base.Preprocessing):
    system_prompt: Optional[str] = None   # a system turn first (lmms-eval's Qwen chat wrappers: a helpful assistant)
    video_resize: str = "processor"       # processor | qwen_vl_utils (Qwen3-VL: lmms-eval's resize, then no resize)
    min_pixels: Optional[int] = None      # qwen_vl_utils resize bounds (lmms-eval: 200704, 1605632)
    max_pixels: Optional[int] = None
    video_layout: str = "flat"            # Qwen3-VL: flat (transformers 4.57) | nested (what 5.x makes of the template)
    chat_template: str = "processor"      # LLaVA: processor | tokenizer (lmms-eval's llava_hf: "<video>\n" + question)
    reply: str = "until"                  # until (cut at the task's until, stripped) | raw (lmms-eval's wrappers)
    dtype: str = "bfloat16"               # bfloat16 | float16 | float32
    attn_implementation: str = "sdpa"     # sdpa | flash_attention_2 | eager
    video_backend: str = "decord"         # decord | pyav
    max_new_tokens: int = 16
    prompt_variant: str = "default"       # the tasks' lmms_eval_specific_kwargs entry (lmms-eval's --model name)
    seed: int = 0                         # weight seed for tiny checkpoints
    pooling_head: Optional[str] = None    # SigLIP checkpoint supplying the attention-pooling head (LLaVA, Tango)


@dataclass
class SyntheticConfig:
    num_videos: int = 16
    num_frames: int = 32
    size: int = 112                       # frame height = width, pixels
    fps: int = 8
    seed: int = 1234
    question_types: Optional[List[str]] = None  # None: color, shape, count, direction (tango.data.synthetic)


@dataclass
class TaskConfig:
    name: str = MISSING                   # config key
    lmms_task: str = MISSING              # lmms-eval task (or group) name
    include_path: Optional[str] = None    # folder with local task YAMLs, passed to TaskManager(include_path=...)
    data_root: Optional[str] = None       # local benchmark data ($HF_HOME layout): the runner writes the override
                                          # YAMLs for it into include_path (tango.tasks.write_local_tasks)
    metric: str = "acc"                   # metric key in lmms-eval's results (filter `none`)
    metric_scale: float = 1.0             # multiplier that puts the metric on 0-100 (100 for 0-1 fractions)
    synthetic: Optional[SyntheticConfig] = None


@dataclass
class CsvLoggerConfig:
    path: str = MISSING                   # the results table; one row per run


@dataclass
class WandbLoggerConfig:
    mode: str = "offline"                 # offline | online | disabled
    project: str = "tango-harness"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    csv: Optional[CsvLoggerConfig] = None
    wandb: Optional[WandbLoggerConfig] = None


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    repo_dir: str = "${tango_repo:}"      # this repository (shipped files, e.g. checkpoints/), wherever you run from
    results_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class Config:
    model: ModelConfig = MISSING
    method: Any = MISSING                 # one of the method dataclasses, see tango.methods.METHODS
    task: TaskConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    budget: float = 0.1                   # fraction of visual tokens the LLM sees, in (0, 1]
    seed: int = 0
    limit: Optional[int] = None           # evaluate only the first `limit` documents
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    force: bool = False                   # re-run even if the run's record.json exists
    dry_run: bool = False                 # print what the run would do (task, frames, paths) and exit
    fail_fast: bool = True                # False: a failing run is recorded as failed and returns None (sweeps go on)
    run_key: str = "${run_key:}"          # <model>__<method>__b<budget>__<task>__s<seed>[__limit<n>][__<variant>]
    # Labels, set by an experiment config (configs/experiment/<name>.yaml): its name, and what it sweeps beyond the
    # standard axes (model, method, budget, task, seed) as {label: value}, e.g. {alpha: ${method.alpha}}. The run
    # key appends the variant (``__alpha1.5``); records carry both, and tables group by them.
    experiment: Optional[str] = None
    variant: Dict[str, Any] = field(default_factory=dict)


def effective_budget(cfg: Any) -> float:
    """The budget a run uses: ``cfg.budget``, except ``method=none``, which runs at 1 (all tokens) whatever is asked,
    so that a sweep's ``none`` at several budgets is one cell."""
    return 1.0 if cfg["method"]["name"] == "none" else float(cfg["budget"])


def run_key(cfg: Any) -> str:
    """Deterministic name of a run's directory (its budget: :func:`effective_budget`)."""
    budget = effective_budget(cfg)
    key = f"{cfg.model.name}__{cfg.method.name}__b{budget:g}__{cfg.task.name}__s{cfg.seed}"
    key += f"__limit{cfg.limit}" if cfg.limit is not None else ""
    variant = cfg.get("variant") or {}
    return key + ("__" + "_".join(f"{k}{v}" for k, v in variant.items()) if variant else "")


def variant_label(variant: Any) -> str:
    """A variant as one canonical record string: JSON with sorted keys, ``""`` for a standard run (no variant)."""
    if isinstance(variant, (DictConfig, ListConfig)):
        variant = OmegaConf.to_container(variant, resolve=True)
    return json.dumps(variant, sort_keys=True) if variant else ""


class ConfigError(ValueError):
    """A configuration value that cannot run; the message names the value and the valid ones (run.py prints it
    as one line, without a traceback, unless HYDRA_FULL_ERROR=1)."""


class DataError(ConfigError):
    """Task data that cannot be evaluated (an annotation field missing or empty), found before inference."""


DTYPES = ("bfloat16", "float16", "float32")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
WANDB_MODES = ("offline", "online", "disabled")


def validate(cfg: Any) -> None:
    """Check every value that compose-time typing cannot: unknown keys, ranges, choices, the method's feasibility at
    this budget and frame count, the task's data. Runs before anything loads; raises :class:`ConfigError`."""
    from tango.data.synthetic import check_args as check_synthetic
    from tango.methods.base import check_budget
    from tango.models.base import ADAPTERS
    from tango.video import BACKENDS, FRAME_SAMPLINGS

    def choice(key: str, value, valid) -> None:
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not one of the valid values {list(valid)}")

    def at_least(key: str, value, low, optional: bool = False) -> None:
        if value is None and optional:
            return
        if value is None or value < low:
            raise ConfigError(f"{key}={value!r} must be >= {low}" + (" (or null)" if optional else ""))

    _check_keys(cfg)
    try:
        check_budget(cfg.budget)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    m = cfg.model
    choice("model.family", m.family, list(ADAPTERS))
    at_least("model.num_frames", m.num_frames, 1)
    if m.fps is not None and not m.fps > 0:
        raise ConfigError(f"model.fps={m.fps!r} must be > 0 (or null: {m.num_frames} uniform frames)")
    choice("model.dtype", m.dtype, DTYPES)
    choice("model.attn_implementation", m.attn_implementation, ATTN_IMPLEMENTATIONS)
    choice("model.video_backend", m.video_backend, BACKENDS)
    choice("model.frame_sampling", m.frame_sampling, FRAME_SAMPLINGS)
    choice("model.video_resize", m.video_resize, VIDEO_RESIZES)
    choice("model.video_layout", m.video_layout, VIDEO_LAYOUTS)
    choice("model.chat_template", m.chat_template, CHAT_TEMPLATES)
    choice("model.reply", m.reply, REPLIES)
    at_least("model.min_pixels", m.min_pixels, 1, optional=True)
    at_least("model.max_pixels", m.max_pixels, 1, optional=True)
    if m.family in ADAPTERS:
        from tango.models.base import adapter_class

        supported = adapter_class(m.family).preprocessing_options
        for key, default in PREPROCESSING_DEFAULTS.items():
            if m[key] != default and key not in supported:
                raise ConfigError(f"model.{key}={m[key]!r} is not supported by the {m.family!r} adapter (it supports "
                                  f"{list(supported)}; leave it at {default!r})")
    at_least("model.max_new_tokens", m.max_new_tokens, 1)
    at_least("limit", cfg.limit, 1, optional=True)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(cfg.device)):
        raise ConfigError(f"device={cfg.device!r} is not one of auto, cpu, cuda, cuda:N")
    try:
        method = OmegaConf.to_object(cfg.method)  # runs the method's own hyperparameter checks
        if method.families and m.family not in method.families:
            raise ValueError(f"supports the model families {list(method.families)}, not model.family={m.family!r} "
                             f"(model={m.name})")
        if method.name != "none":
            method.check_feasible(float(cfg.budget), int(m.num_frames))
    except ValueError as e:
        raise ConfigError(f"method={cfg.method.name}: {e}") from None
    if cfg.logger.get("wandb") is not None:
        choice("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    task = cfg.task
    if not task.metric_scale > 0:
        raise ConfigError(f"task.metric_scale={task.metric_scale!r} must be > 0")
    if task.synthetic is not None:
        try:
            check_synthetic(task_name=task.lmms_task, **OmegaConf.to_container(task.synthetic, resolve=True))
        except ValueError as e:
            raise ConfigError(f"task.synthetic: {e}") from None
    if task.data_root is not None:
        _check_data_root(task)


def _check_keys(cfg: Any) -> None:
    """Every key is a field of its schema: Hydra's ``+key=value`` (what it suggests for a typo) adds keys to
    structured configs that nothing would read."""
    import difflib
    from dataclasses import fields

    def check(node, schema, prefix: str) -> None:
        valid = [f.name for f in fields(schema)]
        for key in node.keys():
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"did you mean {prefix}{close[0]}? " if close else ""
                raise ConfigError(f"{prefix}{key} is not a setting of {prefix.rstrip('.') or 'the config'}; "
                                  f"{hint}valid: {valid}")

    check(cfg, Config, "")
    check(cfg.model, ModelConfig, "model.")
    check(cfg.method, METHODS[cfg.method.name], "method.")
    check(cfg.task, TaskConfig, "task.")
    if cfg.task.synthetic is not None:
        check(cfg.task.synthetic, SyntheticConfig, "task.synthetic.")
    check(cfg.paths, PathsConfig, "paths.")
    check(cfg.logger, LoggerConfig, "logger.")
    for name, schema in (("csv", CsvLoggerConfig), ("wandb", WandbLoggerConfig)):
        if cfg.logger.get(name) is not None:
            check(cfg.logger[name], schema, f"logger.{name}.")


def _check_data_root(task: Any) -> None:
    """The data root is a folder holding the task's annotations (videos are checked per doc before inference)."""
    from tango.tasks import find_annotations, resolve_benchmark
    from tango.tasks.layout import mvbench_subtasks

    root = Path(task.data_root)
    hint = ("it comes from $TANGO_DATA (else $HF_HOME, else ~/.cache/huggingface): set TANGO_DATA to the folder "
            "holding the benchmarks (layout: tango/tasks/layout.py) or pass task.data_root=PATH")
    if not root.is_dir():
        raise ConfigError(f"task.data_root={str(root)!r} is not a folder; {hint}")
    try:
        bench = resolve_benchmark(task.lmms_task)
        for sub in mvbench_subtasks() if bench.key == "mvbench" else (None,):
            find_annotations(bench, root, sub)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"task.data_root={str(root)!r}: {e}\n({hint})") from None


# Keys that cannot change a result: where it is written, how it is logged, and how the call behaves.
# ``experiment`` and ``variant`` are labels: the settings a variant names are in the identity already.
NON_RESULT_KEYS = ("paths", "logger", "force", "dry_run", "fail_fast", "run_key", "experiment", "variant")
VIDEO_RESIZES = ("processor", "qwen_vl_utils")
VIDEO_LAYOUTS = ("flat", "nested")
CHAT_TEMPLATES = ("processor", "tokenizer")
REPLIES = ("until", "raw")
#: the per-family preprocessing settings (``VideoAdapter.preprocessing_options``) and their defaults
PREPROCESSING_DEFAULTS = {k: getattr(Preprocessing(), k) for k in PER_FAMILY_OPTIONS}
#: settings added after runs were recorded -> the value that reproduces the behaviour before they existed. At that
#: value they are left out of a run's identity, so finished runs recorded before still match (and resume); any other
#: value is a different configuration.
ADDED_LATER = {("model", "frame_sampling"): "uniform",
               **{("model", f.name): f.default for f in fields(Preprocessing)}}
#: the same, per method (``method.name`` -> setting -> the value of runs recorded before the setting existed)
METHOD_ADDED_LATER = {name: {"count_rule": "authors"} for name in ("tango", "holitom", "flashvid")}


def identity(cfg: Any) -> dict:
    """Everything in the resolved config that can change a result (the cell's identity beyond its run key)."""
    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    out = {k: v for k, v in container.items() if k not in NON_RESULT_KEYS and k != "hydra"}
    for (group, key), before in ADDED_LATER.items():
        if isinstance(out.get(group), dict) and out[group].get(key) == before:
            out[group] = {k: v for k, v in out[group].items() if k != key}
    method = out.get("method")
    if isinstance(method, dict):
        before = METHOD_ADDED_LATER.get(method.get("name"), {})
        out["method"] = {k: v for k, v in method.items() if k not in before or v != before[k]}
    task = out.get("task") or {}
    if task.get("synthetic") is not None or task.get("data_root") is not None:
        # A generated task's folder is named after its data source under the cache dir: where it lies is not data.
        out["task"] = {k: v for k, v in task.items() if k != "include_path"}
    out["budget"] = effective_budget(out)
    return out


def config_hash(cfg: Any) -> str:
    """16 hex digits of the sha256 of ``identity(cfg)``: equal iff every result-relevant setting is equal."""
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:16]


def identity_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two identities."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b, key = old.get(k, "<unset>"), new.get(k, "<unset>"), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_diff(a, b, key + ".")
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose(overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The resolved config for ``overrides`` (as on the command line), outside a Hydra app (tests, lmms-eval CLI)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # paths interpolate ${hydra:runtime.cwd}
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
    return cfg


def _source_digest(source: Any) -> str:
    from tango.tasks.writer import source_digest

    if isinstance(source, (DictConfig, ListConfig)):
        source = OmegaConf.to_container(source, resolve=True)
    return source_digest(source)


def register_method(cls: type) -> type:
    """Add a method to ``tango.methods.METHODS`` and to the ``method`` config group, so ``method=<cls.name>``
    composes (and runs through ``run.py``'s code path) without a YAML file. Usable as a class decorator.

    ``cls``: a dataclass subclass of :class:`tango.methods.base.PruningMethod` whose ``name`` field default is the
    registry key; per-model settings still go to ``configs/model_method/<model>_<name>.yaml`` if any."""
    import dataclasses

    from tango.methods.base import PruningMethod

    if not (isinstance(cls, type) and issubclass(cls, PruningMethod) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass subclass of tango.methods.base.PruningMethod")
    name = next(f.default for f in dataclasses.fields(cls) if f.name == "name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name == "base":
        raise ValueError(f"{cls.__name__}.name={name!r}: give the dataclass a `name: str = \"<key>\"` field, "
                         f"lower_snake_case")
    if METHODS.get(name, cls) is not cls:
        raise ValueError(f"method name {name!r} is taken by {METHODS[name].__qualname__}; "
                         f"registered: {sorted(METHODS)}")
    METHODS[name] = cls
    cs = ConfigStore.instance()
    cs.store(group="schema/method", name=name, node=cls)
    if not (CONFIG_DIR / "method" / f"{name}.yaml").exists():  # a shipped method's YAML is its config entry
        cs.store(group="method", name=name, node=cls)
    return cls


def register() -> None:
    """Store the schemas and resolvers; idempotent (called on import)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, node in [("model", ModelConfig), ("task", TaskConfig)]:
        cs.store(group=f"schema/{group}", name="base", node=node)
    for name, cls in METHODS.items():
        cs.store(group="schema/method", name=name, node=cls)
    if not OmegaConf.has_resolver("run_key"):
        OmegaConf.register_new_resolver("run_key", lambda *, _root_: run_key(_root_))
    if not OmegaConf.has_resolver("source_digest"):  # ${source_digest:${.data_root}}: one task folder per data source
        OmegaConf.register_new_resolver("source_digest", _source_digest)
    if not OmegaConf.has_resolver("tango_repo"):
        OmegaConf.register_new_resolver("tango_repo", lambda: str(CONFIG_DIR.parent))


register()
