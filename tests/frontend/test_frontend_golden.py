"""Golden text dumps of imported graphs (regenerate: `python -m tests.frontend.test_frontend_golden`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompile.frontend import import_model
from tests.models import ZOO

GOLDEN = Path(__file__).parent / "golden"
CASES = {"cnn": {}, "lstm_cell_model": {"steps": 2, "batch": 1}, "unet_transposed": {}, "unet_bilinear": {},
         "group_norm_net": {}}


def dump(name: str) -> str:
    model, inputs = ZOO[name](**CASES[name])
    return import_model(model, inputs).dump()


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_dump(name):
    want = (GOLDEN / f"{name}.txt").read_text()
    assert dump(name) == want, f"IR dump of {name} changed; if intended, run python -m tests.frontend.test_frontend_golden"


if __name__ == "__main__":
    for case in CASES:
        (GOLDEN / f"{case}.txt").write_text(dump(case))
        print(f"wrote {GOLDEN / case}.txt")
