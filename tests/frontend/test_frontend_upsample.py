"""Upsampling and transposed convolution through the frontend: the IR op, its attributes, the
executor against PyTorch (exact), and the variants that stay unsupported (one named error)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompile.frontend import import_model
from edgecompile.frontend.errors import UnsupportedOpError
from edgecompile.ir import run_graph


class Interp(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, x):
        return F.interpolate(x, **self.kw)


class Up(nn.Module):
    """aten.upsample_* called directly with the .default overload (output size and scales)."""

    def __init__(self, op, *args):
        super().__init__()
        self.op, self.args = op, args

    def forward(self, x):
        return self.op(x, *self.args)


aten = torch.ops.aten
# name -> (module, input shape, expected resize attrs)
RESIZE = {
    "nearest_x2": (Interp(scale_factor=2, mode="nearest"), (2, 3, 4, 5),
                   {"mode": "nearest", "size": [8, 10], "scales": None, "align_corners": False}),
    "nearest_size": (Interp(size=(7, 9), mode="nearest"), (1, 3, 4, 5),
                     {"mode": "nearest", "size": [7, 9], "scales": None, "align_corners": False}),
    "nn_upsample_nearest": (nn.Upsample(scale_factor=2), (1, 2, 3, 3),
                            {"mode": "nearest", "size": [6, 6], "scales": None, "align_corners": False}),
    "bilinear_x2": (nn.Upsample(scale_factor=2, mode="bilinear"), (1, 3, 4, 5),
                    {"mode": "linear", "size": [8, 10], "scales": None, "align_corners": False}),
    "bilinear_corners": (Interp(size=(7, 9), mode="bilinear", align_corners=True), (1, 3, 4, 5),
                         {"mode": "linear", "size": [7, 9], "scales": None, "align_corners": True}),
    "bilinear_fractional_scale": (Interp(scale_factor=1.7, mode="bilinear"), (1, 2, 5, 6),
                                  {"mode": "linear", "size": [8, 10], "scales": [1.7, 1.7], "align_corners": False}),
    "bilinear_down": (Interp(size=(3, 4), mode="bilinear"), (1, 2, 7, 9),
                      {"mode": "linear", "size": [3, 4], "scales": None, "align_corners": False}),
    "nearest_1d": (Interp(size=7, mode="nearest"), (2, 3, 5),
                   {"mode": "nearest", "size": [7], "scales": None, "align_corners": False}),
    "linear_1d": (Interp(scale_factor=2, mode="linear"), (2, 3, 5),
                  {"mode": "linear", "size": [10], "scales": None, "align_corners": False}),
    "linear_1d_corners": (Interp(scale_factor=1.5, mode="linear", align_corners=True), (2, 3, 5),
                          {"mode": "linear", "size": [7], "scales": None, "align_corners": True}),
    "aten_nearest2d_default": (Up(aten.upsample_nearest2d.default, [6, 9], 1.5, 3.0), (1, 2, 4, 3),
                               {"mode": "nearest", "size": [6, 9], "scales": None, "align_corners": False}),
    "aten_bilinear2d_vec_scales": (Up(aten.upsample_bilinear2d.vec, None, False, [1.9, 1.9]), (1, 2, 5, 5),
                                   {"mode": "linear", "size": [9, 9], "scales": [1.9, 1.9], "align_corners": False}),
    "nearest_exact": (Interp(scale_factor=2, mode="nearest-exact"), (1, 2, 4, 4),
                      {"mode": "nearest_exact", "size": [8, 8], "scales": None, "align_corners": False}),
    "nearest_exact_1d": (Interp(size=7, mode="nearest-exact"), (1, 2, 4),
                         {"mode": "nearest_exact", "size": [7], "scales": None, "align_corners": False}),
}

CONV_T = {
    "k3_s2_p1_op1": (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 4, 5, 5)),
    "k4_s2_p1": (nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, bias=False), (1, 4, 5, 5)),
    "grouped_dilated": (nn.ConvTranspose2d(4, 6, 3, stride=(2, 1), padding=(1, 2), dilation=2, groups=2), (1, 4, 5, 6)),
    "1d": (nn.ConvTranspose1d(4, 6, 5, stride=3, padding=2, output_padding=2), (2, 4, 7)),
}


def _check_exact(model, shape):
    torch.manual_seed(0)
    model = model.eval()
    x = torch.randn(*shape)
    g = import_model(model, (x,))
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(run_graph(g, x.numpy()), ref, rtol=0, atol=1e-6)
    return g


@pytest.mark.parametrize("name", sorted(RESIZE))
def test_upsampling_becomes_one_resize_matching_torch(name):
    model, shape, attrs = RESIZE[name]
    g = _check_exact(model, shape)
    assert g.op_counts() == {"resize": 1}
    node = g.nodes[0]
    assert {k: node.attrs[k] for k in attrs} == attrs
    if attrs["scales"] is not None:
        assert node.attrs["scales"] == pytest.approx(attrs["scales"])


@pytest.mark.parametrize("name", sorted(CONV_T))
def test_transposed_convolution_becomes_conv_transpose_matching_torch(name):
    model, shape = CONV_T[name]
    g = _check_exact(model, shape)
    assert g.op_counts() == {"conv_transpose": 1}
    node = g.nodes[0]
    nd = len(shape) - 2
    assert node.input(1).shape == tuple(model.weight.shape)      # torch's [in, out/groups, *k]
    for key, torch_key in [("stride", "stride"), ("padding", "padding"), ("output_padding", "output_padding"),
                           ("dilation", "dilation")]:
        assert node.attrs[key] == list(getattr(model, torch_key))[:nd]
    assert node.attrs["groups"] == model.groups


@pytest.mark.parametrize("model, shape, op", [
    (Interp(scale_factor=2, mode="bicubic"), (1, 2, 4, 4), "aten.upsample_bicubic2d"),
    (Interp(scale_factor=2, mode="nearest"), (1, 2, 3, 4, 4), "aten.upsample_nearest3d"),
    (Interp(scale_factor=0.5, mode="bilinear", antialias=True), (1, 2, 8, 8), "aten._upsample_bilinear2d_aa"),
    (Interp(scale_factor=2, mode="trilinear"), (1, 2, 3, 4, 4), "aten.upsample_trilinear3d"),
])
def test_unsupported_interpolation_modes_are_named(model, shape, op):
    with pytest.raises(UnsupportedOpError) as e:
        import_model(model, (torch.randn(*shape),))
    assert op in str(e.value) and "\n" not in str(e.value).strip()

