"""The embedded default: a small CNN trained on scikit-learn's bundled 8x8 digits (offline, real data).

`model()` is a model factory in the format `edgecompile build` expects (see README): it returns the
trained model, example inputs (batch 1, the deployment shape), and a data dict with calibration
inputs and held-back evaluation inputs with labels. The weights ship as `digits_cnn.npz`;
`python -m edgecompile.data.digits` retrains them (seeded, ~10 s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("digits_cnn.npz")
SEED = 0


class DigitsCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU, with a residual add) and a two-layer classifier head."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                                   nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w))
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w),
                                  nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(self.down(x))


def load_split(seed: int = SEED) -> dict[str, np.ndarray]:
    """Digits as float32 [N, 1, 8, 8] in [0, 1], split 60/20/20 into train / calibration / test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_tr, n_cal = int(0.6 * len(x)), int(0.2 * len(x))
    tr, cal, te = idx[:n_tr], idx[n_tr:n_tr + n_cal], idx[n_tr + n_cal:]
    return {"x_train": x[tr], "y_train": y[tr], "x_calib": x[cal], "y_calib": y[cal],
            "x_test": x[te], "y_test": y[te]}


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30, lr: float = 2e-3,
          seed: int = SEED, batch: int = 64) -> nn.Module:
    """Plain AdamW training with light augmentation (1-pixel shifts); deterministic for a seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((len(x) + batch - 1) // batch))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            b = perm[i:i + batch]
            xb = xt[b]
            shift = torch.randint(-1, 2, (2,), generator=gen)
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def model():
    """Factory: (trained DigitsCNN, example inputs, data) — the embedded default model."""
    net = DigitsCNN()
    state = np.load(WEIGHTS)
    net.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files})
    net.eval()
    split = load_split()
    data = {"calib": (split["x_calib"],), "eval": (split["x_test"],), "labels": split["y_test"],
            "outputs": ["logits"], "train": (split["x_train"],), "train_labels": split["y_train"]}
    return net, (torch.from_numpy(split["x_test"][:1]),), data


def _retrain() -> None:
    split = load_split()
    torch.manual_seed(SEED)
    net = train(DigitsCNN(), split["x_train"], split["y_train"])
    print(f"test accuracy: {accuracy(net, split['x_test'], split['y_test']):.4f}")
    np.savez(WEIGHTS, **{k: v.detach().numpy() for k, v in net.state_dict().items()})


if __name__ == "__main__":
    _retrain()
