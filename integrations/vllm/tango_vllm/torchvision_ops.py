"""Declare torchvision's C++ operator schemas before torchvision imports (loaded by ``tango_vllm_torchvision.pth``).

PyPI's torchvision for torch 2.13 is a CUDA build whose native library does not load on a CPU-only torch, so
``import torchvision`` fails with ``operator torchvision::nms does not exist`` when its Python side registers fake
kernels for ops that were never defined. transformers' Qwen2-VL video processor hard-imports
``torchvision.transforms.v2`` (pure Python); declaring the two schemas lets that import succeed. The ops themselves
stay unimplemented (vLLM's Qwen2.5-VL path never calls them). Remove when a CPU torchvision wheel for the pinned
torch is installable.
"""

import importlib.util

if importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 (a working torchvision build: nothing to do)
    except (AttributeError, RuntimeError):
        _lib = torch.library.Library("torchvision", "DEF")
        _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
