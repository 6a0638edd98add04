"""Models the benches train themselves (seeded, offline data): the digits CNN and a small
transformer classifier on the same digits (each 8x8 image as 16 tokens of 2x2 pixels)."""

from __future__ import annotations

import torch
from torch import nn

from edgecompile.data.digits import DigitsCNN, accuracy, load_split, train
from edgecompile.inputs.model import LoadedModel


class DigitsTransformer(nn.Module):
    """Patch embedding, 2 pre-norm encoder layers (GELU), mean pooling, linear head."""

    def __init__(self, d: int = 128, heads: int = 4, layers: int = 2, ff: int = 256):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.pos = nn.Parameter(torch.randn(1, 16, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):                       # x: [B, 1, 8, 8]
        b = x.shape[0]
        p = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        h = self.encoder(self.embed(p) + self.pos)
        return self.head(self.norm(h.mean(1)))


def trained(kind: str, seed: int = 0) -> tuple[nn.Module, dict]:
    split = load_split(seed)
    torch.manual_seed(seed)
    if kind == "cnn":
        net = train(DigitsCNN(), split["x_train"], split["y_train"], seed=seed)
    else:
        net = train(DigitsTransformer(), split["x_train"], split["y_train"], epochs=150, lr=2e-3, seed=seed)
    return net.eval(), split


def loaded(kind: str, net: nn.Module, split: dict, batch: int = 1) -> LoadedModel:
    data = {"calib": (split["x_calib"],), "eval": (split["x_test"],), "labels": split["y_test"]}
    return LoadedModel(f"digits-{kind}", net, (torch.from_numpy(split["x_test"][:batch]),), data)


__all__ = ["DigitsTransformer", "trained", "loaded", "accuracy", "load_split"]
