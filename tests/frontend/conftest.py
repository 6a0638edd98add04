"""Imports each zoo model once per session (torch.export dominates the time)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from edgecompile.frontend import import_model
from tests.models import ZOO


@pytest.fixture(scope="session")
def imported():
    """`imported(name) -> (model, example_inputs, graph)` for a `tests.models.ZOO` entry, cached."""
    cache = {}

    def get(name: str):
        if name not in cache:
            model, inputs = ZOO[name]()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name] = (model, inputs, import_model(model, inputs))
        return cache[name]
    return get


def relative_error(ref, out) -> float:
    """max |ref - out| relative to the output's scale (at least 1)."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    return float(np.abs(ref - out).max() / max(1.0, float(np.abs(ref).max())))
