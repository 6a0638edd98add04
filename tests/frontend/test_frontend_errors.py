"""Unsupported operators and bad inputs give one-line errors naming the op and the user's line."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from edgecompile.frontend import FrontendError, UnsupportedOpError, import_model, load_pt2, supported_ops


class CumprodModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.fc(x).cumprod(1)
        return y


class TwoUnsupported(nn.Module):
    def forward(self, x):
        a = torch.cumprod(x, dim=1)
        b = torch.fft.rfft(x).real
        return a.sum() + b.sum()


def _line_of(fn, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_unsupported_op_names_op_source_line_and_supported_list():
    with pytest.raises(UnsupportedOpError) as e:
        import_model(CumprodModel(), (torch.randn(2, 8),))
    msg = str(e.value)
    assert "\n" not in msg
    line = _line_of(CumprodModel.forward, ".cumprod(1)")
    assert f"aten.cumprod.default at tests/frontend/test_frontend_errors.py:{line}" in msg
    assert "`y = self.fc(x).cumprod(1)`" in msg
    assert "supported: " in msg and "aten.convolution" in msg and "aten.addmm" in msg
    assert e.value.ops == ("aten.cumprod.default",)
    assert isinstance(e.value, ValueError)


def test_all_unsupported_ops_are_reported_at_once():
    with pytest.raises(UnsupportedOpError) as e:
        import_model(TwoUnsupported(), (torch.randn(2, 8),))
    assert e.value.ops[0] == "aten.cumprod.default"
    assert any("fft" in op for op in e.value.ops)
    assert str(e.value).startswith("unsupported operators ")


class ChainedUnsupported(nn.Module):
    def forward(self, x):
        y = torch.cumprod(x, dim=1)
        z = torch.fft.rfft(y).real      # behind the failed cumprod: named all the same
        return torch.relu(z)            # converts; not named


def test_unsupported_ops_behind_a_failed_op_are_reported_too():
    with pytest.raises(UnsupportedOpError) as e:
        import_model(ChainedUnsupported(), (torch.randn(2, 8),))
    assert e.value.ops[0] == "aten.cumprod.default"
    assert any("fft" in op for op in e.value.ops)
    assert not any("relu" in op for op in e.value.ops)
    line = _line_of(ChainedUnsupported.forward, "rfft")
    assert f"test_frontend_errors.py:{line}" in str(e.value)


def test_unsupported_arguments_of_a_known_op_are_explained():
    model = nn.Sequential(nn.ConvTranspose3d(2, 2, 3))
    with pytest.raises(UnsupportedOpError, match=r"aten.convolution.default \(3-D transposed convolution\)"):
        import_model(model, (torch.randn(1, 2, 5, 5, 5),))


def test_constant_only_use_of_an_unsupported_op_is_folded():
    """cumsum of a buffer is computed at import; only ops on activations need a conversion."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("steps", torch.arange(4.0))

        def forward(self, x):
            return x * self.steps.cumsum(0)

    graph = import_model(M(), (torch.randn(2, 4),))
    assert graph.op_counts() == {"mul": 1}


def test_random_ops_are_not_folded_into_constants():
    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.randn(x.shape)

    with pytest.raises(UnsupportedOpError, match=r"aten.randn.default \(random numbers drawn at run time\)"):
        import_model(Noisy(), (torch.randn(2, 3),))


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(FrontendError, match="example input 0 is a int, not a tensor"):
        import_model(nn.Linear(2, 2), (3,))
    with pytest.raises(FrontendError, match="no such exported program"):
        load_pt2(tmp_path / "missing.pt2")
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FrontendError, match="cannot load"):
        load_pt2(bad)


def test_export_failure_is_wrapped():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:       # data-dependent control flow: torch.export refuses it
                return x
            return -x

    with pytest.raises(FrontendError, match="torch.export failed for DataDependent"):
        import_model(DataDependent(), (torch.randn(3),))


def test_supported_ops_listing():
    ops = supported_ops()
    assert ops == sorted(ops) and "aten.linear" in ops and "aten.cumprod" not in ops
