"""Makes ``import torchvision`` work beside our CPU torch.

torchvision 0.28.0 is the release that pins torch 2.13.0, and its PyPI wheel is linked against the
CUDA build of libtorch: its compiled ops do not load with the CPU torch, and the import then fails
on ``torchvision::nms`` missing. timm and transformers import torchvision when it is installed, so
the failure reaches them too. The classification and segmentation models never call the compiled
ops; declaring the two schemas torchvision checks at import (no kernels: calling them raises) is
enough. Call `install()` before importing torchvision, timm or transformers.
"""
from __future__ import annotations

import importlib.util

import torch

_LIB = None


def install() -> None:
    """Declares ``torchvision::nms`` / ``qnms`` once, if torchvision is installed and lacks them."""
    global _LIB
    if _LIB is not None or importlib.util.find_spec("torchvision") is None:
        return
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return                              # a torchvision whose ops loaded: nothing to do
    except RuntimeError:
        pass
    _LIB = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
