"""litert-torch on the pretrained zoo models (bench/zoo), for bench/bench_pretrained.py.

Runs in the peers' own environment (``bash scripts/setup_peers.sh`` makes .venv-peers):

  .venv-peers/bin/python bench/pretrained_peers.py KEY OUT_DIR [--quick N]

For the factory's module, example inputs and data (the same seeds as the main bench), converts with
litert-torch three ways, as its documentation shows them:
  fp32          ``litert_torch.convert(module, example)``
  dynamic int8  PT2E with ``get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)``
  static int8   PT2E per-channel static, observers calibrated on the factory's calibration data
and runs each .tflite in LiteRT's interpreter (1 thread) on the evaluation data. Writes
OUT_DIR/KEY-<variant>.tflite and OUT_DIR/KEY-<variant>.npz (the outputs, and the median latency in
ms of the example) or OUT_DIR/KEY-<variant>.err (the first line of the failure); the main bench
judges them with the same metric as every other row.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FACTORIES = {"silero-vad": "bench.zoo.silero_vad", "minilm": "bench.zoo.minilm",
             "effnet-lite0": "bench.zoo.efficientnet_lite0", "mtcnn-onet": "bench.zoo.mtcnn_onet"}
VARIANTS = ("fp32", "dynamic int8", "static int8")


def _batches(arrays, batch: int):
    n = (len(arrays[0]) // batch) * batch
    for i in range(0, n, batch):
        yield [np.ascontiguousarray(a[i:i + batch]) for a in arrays]


def convert(variant: str, module, example, calib, batch: int) -> bytes:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    if variant == "fp32":
        edge = litert_torch.convert(module, example)
    else:
        quantizer = pq.PT2EQuantizer().set_global(
            pq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=variant.startswith("dynamic")))
        m = torch.export.export(module, example).module()
        m = quantize_pt2e.prepare_pt2e(m, quantizer)
        with torch.no_grad():
            for xs in _batches(calib, batch):
                m(*[torch.from_numpy(x) for x in xs])
        m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
        edge = litert_torch.convert(m, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        edge.export(str(Path(d) / "m.tflite"))
        return (Path(d) / "m.tflite").read_bytes()


class LiteRTRunner:
    """LiteRT's interpreter through the model's signature: inputs and outputs in the order of the
    torch module's arguments and results (``args_<i>`` / ``output_<i>``), integer outputs
    dequantized with their own scale and zero point."""

    def __init__(self, raw: bytes):
        import re

        from ai_edge_litert.interpreter import Interpreter

        self.sig = Interpreter(model_content=raw, num_threads=1).get_signature_runner()
        def order(d):
            return sorted(d, key=lambda n: int(re.findall(r"\d+", n)[-1]) if re.findall(r"\d+", n) else 0)
        self.ins, self.outs = self.sig.get_input_details(), self.sig.get_output_details()
        self.in_names, self.out_names = order(self.ins), order(self.outs)

    def run(self, *xs):
        res = self.sig(**{n: np.ascontiguousarray(x, dtype=self.ins[n]["dtype"]) for n, x in zip(self.in_names, xs)})
        outs = []
        for n in self.out_names:
            y, (scale, zero) = res[n], self.outs[n]["quantization"]
            outs.append((y.astype(np.float32) - zero) * scale if np.issubdtype(y.dtype, np.integer) and scale
                        else y)
        return outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("key", choices=list(FACTORIES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", type=int, default=0, help="keep this many calibration / evaluation samples")
    args = ap.parse_args()
    torch.set_num_threads(1)
    module, example, data = importlib.import_module(FACTORIES[args.key]).model()
    module.eval()
    example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    calib, evals = data["calib"], data["eval"]
    if args.quick:
        calib, evals = [a[:args.quick] for a in calib], [a[:args.quick] for a in evals]
    batch = int(example[0].shape[0])
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        stem = args.out / f"{args.key}-{variant.replace(' ', '-')}"
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = convert(variant, module, example, calib, batch)
            secs = time.perf_counter() - t
            runner = LiteRTRunner(raw)
            outs = [runner.run(*xs) for xs in _batches(evals, batch)]
            ex = [x.numpy() for x in example]
            for _ in range(3):
                runner.run(*ex)
            ts = []
            for _ in range(30):
                t0 = time.perf_counter()
                runner.run(*ex)
                ts.append(time.perf_counter() - t0)
        except Exception as e:  # a peer that cannot take the model is a result of the bench
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            Path(f"{stem}.err").write_text(f"{type(e).__name__}: {first[:200]}")
            continue
        Path(f"{stem}.tflite").write_bytes(raw)
        arrays = {f"out{k}": np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))}
        np.savez(f"{stem}.npz", ms=np.median(ts) * 1e3, build_s=secs, **arrays)


if __name__ == "__main__":
    main()
