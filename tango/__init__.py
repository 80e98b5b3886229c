"""Reference harness for visual-token pruning in Video LLMs.

``tango.load(model, method, budget, **overrides)`` loads a pruned model as ``run.py`` would (see ``tango.api``);
``tango.register_method(cls)`` adds a method defined outside this package (see README, "Extending").
"""

from __future__ import annotations


def __getattr__(name: str):  # lazy: `import tango` stays cheap (no torch, Hydra or lmms-eval until used)
    if name == "load":
        from tango.api import load

        return load
    if name == "register_method":
        from tango.config import register_method

        return register_method
    raise AttributeError(f"module 'tango' has no attribute {name!r}")


__all__ = ["load", "register_method"]
