"""Model adapters: load a checkpoint with ``from_pretrained`` and run pruned prefill + decoding.

An adapter turns one decoded clip and a question into generated text, calling the method's pure tensor code between
the vision side and the LLM through public transformers seams only. Families map to adapter classes by dotted path, so
listing or composing configs never imports a model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch

ADAPTERS = {
    "llava_ov": "tango.models.llava_ov.LlavaOneVision",
    "llava_video": "tango.models.llava_ov.LlavaVideo",
    "qwen2_5_vl": "tango.models.qwen2_5_vl.Qwen25VL",
}
PLANNED: tuple[str, ...] = ()  # families with config entries whose adapters have not landed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Generation:
    """One request's output: the text and its per-request figures (token counts, latency split in ms)."""

    text: str
    stats: dict[str, float | int | None] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; valid here: 'auto', 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; valid: {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_adapter(family: str, **kwargs):
    """Instantiate the adapter of model ``family`` (``configs/model/*.yaml: family``)."""
    if family in PLANNED:
        raise NotImplementedError(f"the adapter for model family {family!r} is not implemented yet; "
                                  f"implemented: {sorted(ADAPTERS)}")
    if family not in ADAPTERS:
        raise ValueError(f"unknown model family {family!r}; valid: {sorted(ADAPTERS) + list(PLANNED)}")
    module, cls = ADAPTERS[family].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**kwargs)
