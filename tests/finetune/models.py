"""Tiny models covering every layer kind FNGD supports (float64 for exact checks)."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class CNN(nn.Module):
    """Plain conv, grouped + strided + reflect-padded conv, and a bias-free linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, padding_mode="reflect")
        self.fc = nn.Linear(36, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.flatten(1))


class SeqNet(nn.Module):
    """Conv1d with 'same' padding, then a linear applied at every position ([N, T, d])."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding="same", dilation=2)
        self.proj = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).transpose(1, 2)
        return self.head(torch.tanh(self.proj(h)).mean(1))


class EmbedNet(nn.Module):
    """Embedding with padding_idx, and a linear shared by two calls."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4, padding_idx=0)
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.emb(x)
        h = self.shared(torch.tanh(self.shared(h)))
        return self.head(h.mean(1))


def batch_for(name: str, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if name == "mlp":
        x = torch.randn(n, 6, generator=g)
    elif name == "cnn":
        x = torch.randn(n, 2, 6, 6, generator=g)
    elif name == "seq":
        x = torch.randn(n, 3, 7, generator=g)
    else:
        x = torch.randint(0, 7, (n, 5), generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return (x.double() if x.is_floating_point() else x), y


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {"mlp": MLP, "cnn": CNN, "seq": SeqNet, "emb": EmbedNet}[name]()
    return model.double()
