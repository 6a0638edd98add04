"""torch.cumsum and torch.gather from a uniform constant (RoBERTa's position ids and token types)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.frontend import UnsupportedOpError, import_model
from edgecompile.ir import run_graph


class PositionIds(nn.Module):
    """RoBERTa's position ids from input ids (padding 1), a float running sum, and torch.gather of
    an all-zero buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("token_types", torch.zeros(1, 16, dtype=torch.long))
        self.fc = nn.Linear(6, 6)

    def forward(self, ids, x):
        mask = ids.ne(1).int()
        pos = torch.cumsum(mask, dim=1).type_as(mask) * mask + 1
        types = torch.gather(self.token_types.expand(ids.shape[0], -1), 1, pos.long())
        return pos + types, torch.cumsum(self.fc(x), -1)


def test_cumsum_converts_and_matches_torch():
    ids = torch.tensor([[5, 7, 1, 9, 1, 3], [1, 1, 4, 4, 4, 2]])
    x = torch.randn(2, 3, 6)
    net = PositionIds().eval()
    g = import_model(net, (ids, x))
    ops = [n.op for n in g.nodes]
    assert ops.count("cumsum") == 2 and "gather" not in ops          # the uniform gather folded away
    assert all(n.attrs["axis"] >= 0 for n in g.nodes if n.op == "cumsum")
    cs = [n for n in g.nodes if n.op == "cumsum"]
    assert {n.output.dtype for n in cs} == {"int64", "float32"}       # torch sums integers in int64
    with torch.no_grad():
        ref = net(ids, x)
    got = run_graph(g, ids.numpy(), x.numpy())
    assert np.array_equal(got[0], ref[0].numpy())
    assert np.allclose(got[1], ref[1].numpy(), atol=1e-5)


class GatherRuntime(nn.Module):
    def forward(self, x, idx):
        return torch.gather(x, 1, idx)


def test_gather_of_a_runtime_tensor_is_named():
    with pytest.raises(UnsupportedOpError, match=r"aten.gather.default \(torch.gather of a run-time tensor"):
        import_model(GatherRuntime(), (torch.randn(2, 5), torch.zeros(2, 3, dtype=torch.long)))


GOLDEN = Path(__file__).parent / "golden" / "position_ids.txt"


def _dump() -> str:
    torch.manual_seed(0)
    ids = torch.tensor([[5, 7, 1, 9, 1, 3]])
    return import_model(PositionIds().eval(), (ids, torch.randn(1, 3, 6))).dump()


def test_golden_dump():
    assert _dump() == GOLDEN.read_text(), \
        "IR dump of PositionIds changed; if intended, run python -m tests.frontend.test_frontend_cumsum"


if __name__ == "__main__":
    GOLDEN.write_text(_dump())
    print(f"wrote {GOLDEN}")
