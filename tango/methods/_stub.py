"""Stand-in base for methods that have not landed yet: a valid config choice that refuses to run.

A run never silently falls back to the full-token model.
"""

from __future__ import annotations

from dataclasses import dataclass

from tango.methods.base import PruningMethod


@dataclass
class NotImplementedMethod(PruningMethod):
    def prune(self, x, *, budget, attn=None, timestamps=None, grid=None, metric=None):
        raise NotImplementedError(f"method {self.name!r} is not implemented yet; implemented: 'none'")
