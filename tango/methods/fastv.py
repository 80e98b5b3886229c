"""FastV: not implemented yet (stub: a valid config choice that raises NotImplementedError)."""

from __future__ import annotations

from dataclasses import dataclass

from tango.methods._stub import NotImplementedMethod


@dataclass
class FastV(NotImplementedMethod):
    name: str = "fastv"
