"""Per-epoch checkpoints of the recovery loop: written atomically, so an interrupted run
resumes from the last finished epoch and loses nothing already trained."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

LATEST = "latest"


def save(directory: str | Path, epoch: int, payload: dict, keep: int = 2) -> Path:
    """Write ``epoch_XXXX.pt`` (temp file + rename) and point ``latest`` at it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"epoch_{epoch:04d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    pointer = directory / (LATEST + ".tmp")
    pointer.write_text(path.name + "\n")
    os.replace(pointer, directory / LATEST)
    for old in sorted(directory.glob("epoch_*.pt"))[:-keep] if keep > 0 else []:
        old.unlink()
    log.info("checkpoint written: %s", path)
    return path


def load_latest(directory: str | Path, map_location) -> dict | None:
    """The newest checkpoint in ``directory``, or ``None`` when there is none."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint pointer {pointer} names {path.name}, which is "
                                "missing; delete the pointer to start over")
    return torch.load(path, map_location=map_location, weights_only=True)
