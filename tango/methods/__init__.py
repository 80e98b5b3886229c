"""Pruning methods and their registry: ``configs/method/<name>.yaml`` <-> ``METHODS[name]``."""

from __future__ import annotations

from tango.methods.base import PruningMethod, Selection, check_budget, identity_selection
from tango.methods.none import NoPruning
from tango.methods.controls import RandomDrop, UniformPool
from tango.methods.dycoke import DyCoke
from tango.methods.evs import EVS
from tango.methods.fastv import FastV
from tango.methods.fastvid import FastVID
from tango.methods.flashvid import FlashVID
from tango.methods.holitom import HoliTom
from tango.methods.tango import Tango
from tango.methods.vidcom2 import VidCom2
from tango.methods.visionzip import VisionZip

#: name -> method dataclass. The key is the config file name under configs/method/; the order is the tables' order.
#: Methods defined elsewhere join with ``tango.register_method``.
METHODS: dict[str, type[PruningMethod]] = {
    "none": NoPruning,
    "fastv": FastV,
    "visionzip": VisionZip,
    "dycoke": DyCoke,
    "tango": Tango,
    "holitom": HoliTom,
    "fastvid": FastVID,
    "evs": EVS,
    "vidcom2": VidCom2,
    "flashvid": FlashVID,
    "random": RandomDrop,
    "uniform_pool": UniformPool,
}


def build_method(name: str, **hparams) -> PruningMethod:
    """Instantiate method ``name`` with its hyperparameters; unknown names list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {sorted(METHODS)}")
    return METHODS[name](**hparams)


__all__ = ["METHODS", "PruningMethod", "Selection", "build_method", "check_budget", "identity_selection"]
