"""MLPerf-Tiny-shaped models on an emulated Cortex-M4: edgecompile's generated C against TFLite Micro.

Run: ``.venv/bin/python bench/bench_mcu.py [--models kws,vww,ic,ad] [--opt -O2]``
(needs arm-none-eabi-gcc and qemu-system-arm: scripts/install_toolchains.sh; tflite-micro from
the dev extra for the TFLM arena column).

The four MLPerf Tiny v1.1 benchmark models, built from ``torch.nn`` with seeded weights (shapes as
published; the weights do not change the instruction count of int8 kernels, only of entropy
decoding, which is off here: raw weights): DS-CNN keyword spotting on 49x10 MFCCs, MobileNetV1
0.25 visual wake words at 96x96, ResNet-8 CIFAR-10 at 32x32, the FC autoencoder on 640 inputs.
Each is quantized to full int8 on seeded Gaussian calibration inputs and compiled to C
(`backends.c.model.emit_c`), then:

- *instructions*: emulated instruction count per inference under ``qemu-system-arm -M mps2-an386
  -icount shift=0`` (SysTick ticks x 40, `backends.c.device`), and the estimated ms at 120 MHz
  (one instruction per cycle: an estimate, not a measurement; real cycles differ by wait states,
  multi-cycle loads and multiplies), next to the published MLPerf Tiny v1.1 latencies on a
  Cortex-M4 at 120 MHz (NUCLEO-L4R5ZI): TFLM reference kernels and the fastest, Plumerai;
- *RAM*: our arena (activations, planned statically) + I/O, against the arena the real TFLite
  Micro interpreter needs for the same int8 model as a ``.tflite`` with its weights inside (its
  recording allocator, on a 64-bit host: an upper bound for the MCU);
- *code*: ``.text`` of runtime (kernels + decoder) + generated model code at ``-Os`` (weights and
  the demo's main/libc apart), from arm-none-eabi-gcc;
- the generated program's outputs are checked bit for bit against the numpy integer reference.

A second table streams weights: the embedded digits CNN pruned and clustered (``--prune
magnitude:global:0.7 --cluster-bits 4``) built for nrf52840 with every tensor streamed from the
container and with raw int8 weights: flash (container + code), RAM (arena + I/O), instructions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecompile.backends.c import device as c_device  # noqa: E402
from edgecompile.backends.c.bundle import write_c_model  # noqa: E402
from edgecompile.backends.c.model import emit_c  # noqa: E402
from edgecompile.backends.c.ref.graph import _nhwc  # noqa: E402
from edgecompile.backends.c.ref.session import ReferenceSession  # noqa: E402
from edgecompile.frontend.torch_export import import_model  # noqa: E402
from edgecompile.passes.fold import CleanupPass, FoldBatchNormPass  # noqa: E402
from edgecompile.passes.quantize import QuantConfig, QuantizePass  # noqa: E402

#: MLPerf Tiny v1.1 closed division, NUCLEO-L4R5ZI (Cortex-M4F, 120 MHz), ms per inference.
PUBLISHED = {"kws": (181.9, 47.8), "vww": (600.6, 98.8), "ic": (704.2, 167.8), "ad": (10.05, 4.05)}
CLOCK_MHZ = 120


def _bn(c):
    return nn.BatchNorm2d(c)


class DSCNN(nn.Module):
    """DS-CNN (small): conv 10x4 stride 2 to 64 channels, four depthwise-separable blocks, average
    pool, 12 classes."""

    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(1, 64, (10, 4), stride=2, padding=(5, 1)), _bn(64), nn.ReLU()]
        for _ in range(4):
            layers += [nn.Conv2d(64, 64, 3, padding=1, groups=64), _bn(64), nn.ReLU(),
                       nn.Conv2d(64, 64, 1), _bn(64), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 12)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class MobileNetV1(nn.Module):
    """MobileNetV1, width 0.25, 96x96x3, 2 classes (ReLU6 as Keras' MobileNet)."""

    def __init__(self, alpha=0.25):
        super().__init__()
        c = lambda n: int(n * alpha)  # noqa: E731
        spec = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
        layers = [nn.Conv2d(3, c(32), 3, stride=2, padding=1), _bn(c(32)), nn.ReLU6()]
        cin = c(32)
        for cout, s in spec:
            layers += [nn.Conv2d(cin, cin, 3, stride=s, padding=1, groups=cin), _bn(cin), nn.ReLU6(),
                       nn.Conv2d(cin, c(cout), 1), _bn(c(cout)), nn.ReLU6()]
            cin = c(cout)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 2)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class _Res(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), _bn(cout), nn.ReLU(),
                               nn.Conv2d(cout, cout, 3, 1, 1), _bn(cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), _bn(cout)) if stride != 1 or cin != cout else None

    def forward(self, x):
        return torch.relu(self.a(x) + (x if self.skip is None else self.skip(x)))


class ResNet8(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _bn(16), nn.ReLU())
        self.blocks = nn.Sequential(_Res(16, 16, 1), _Res(16, 32, 2), _Res(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class AutoEncoder(nn.Module):
    """The anomaly-detection FC autoencoder: 640 -> 128 x4 -> 8 -> 128 x4 -> 640 (batch norms folded
    into the layers here: the IR folds BN after linear the same way)."""

    def __init__(self):
        super().__init__()
        dims = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
        layers = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(128, 640))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


MODELS = {"kws": (DSCNN, (1, 1, 49, 10)), "vww": (MobileNetV1, (1, 3, 96, 96)), "ic": (ResNet8, (1, 3, 32, 32)),
          "ad": (AutoEncoder, (1, 640))}


def seeded(name: str):
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    net = cls().eval()
    for m in net.modules():          # trained-looking batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net, shape


def quantized_graph(name: str):
    net, shape = seeded(name)
    g = import_model(net, (torch.randn(*shape),))
    FoldBatchNormPass()(g)
    CleanupPass()(g)
    rng = np.random.default_rng(0)
    QuantizePass(QuantConfig(), [(rng.standard_normal(shape).astype(np.float32),) for _ in range(16)])(g)
    return g, shape


def tflm_arena(g) -> int | None:
    try:
        from edgecompile.backends.tflite import tflm
        from edgecompile.backends.tflite import emit_tflite
    except ImportError:
        return None
    return tflm.arena_figures(emit_tflite(g, embed_weights=True).model_bytes)["total_bytes"]


def measure(name: str, opt: str) -> dict:
    g, shape = quantized_graph(name)
    cm = emit_c(g, stream="none")
    ref = ReferenceSession(g, cm.calls)
    xq = ref.quantize_inputs(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
    work = Path(tempfile.mkdtemp(prefix=f"bench_mcu_{name}_"))
    try:
        write_c_model(work, cm, "mcu", name, "arm-none-eabi", "cortex-m4", [[_nhwc(x) for x in xq]])
        rt = work / "runtime"
        run = c_device.emulate(rt, "cortex-m4", opt=opt)
        sizes = c_device.code_sizes(rt, "cortex-m4", opt="-Os")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    want = [_nhwc(y).reshape(-1) for y in ref.run_int8(*xq)]
    exact = run.status == "ECM_OK" and all(np.array_equal(run.outputs[(0, k)], w) for k, w in enumerate(want))
    macs = sum(layer.macs for layer in cm.layers)
    instr = sum(run.steps)
    return {"model": name, "macs": macs, "instructions": instr, "per_mac": instr / max(macs, 1),
            "ms": instr / (CLOCK_MHZ * 1e3), "arena": cm.arena_bytes, "io": cm.io_bytes, "tflm_arena": tflm_arena(g),
            "text": sizes["runtime"]["text"] + sizes["model"]["text"], "weights": len(cm.container),
            "exact": exact, "by_kernel": _by_kernel(cm, run.steps)}


def _by_kernel(cm, steps) -> dict:
    out: dict[str, list[int]] = {}
    for layer, n in zip(cm.layers, steps):
        key = layer.kernel + ("/dw" if layer.kernel == "conv2d" and layer.node and _is_dw(cm, layer) else "")
        acc = out.setdefault(key, [0, 0])
        acc[0] += n
        acc[1] += layer.macs
    return out


def _is_dw(cm, layer) -> bool:
    call = next((c for c in cm.calls if c.node == layer.node and c.kernel == "conv2d"), None)
    return call is not None and call.args["groups"] > 1


def streaming_rows() -> list[dict]:
    """The digits CNN, pruned + clustered, built for nrf52840 twice: every tensor streamed, all raw."""
    from edgecompile.build import BuildConfig, build

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("all", "none"):
            rep = build(None, BuildConfig(target="nrf52840", out=Path(tmp) / mode, prune="magnitude:global:0.7",
                                          cluster_bits=4, optimize="none", stream_weights=mode,
                                          latency_repeats=1)).report
            mem, lat = rep["memory"], rep["latency"]
            largest = max((layer["instructions"], layer) for layer in rep["device"]["emulated"]["per_layer"])[1]
            rows.append({"mode": mode, "flash": mem["flash_needed"], "weights": mem["weights_bytes"],
                         "ram": mem["ram_needed"], "arena": mem["arena_bytes"], "slot": mem["scratch_bytes"],
                         "instr": lat["emulated_instructions"], "largest": largest["layer"],
                         "accuracy": rep["fidelity"]["accuracy_bundle"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="kws,vww,ic,ad")
    ap.add_argument("--opt", default="-O2", help="optimization of the timed build (code size is always -Os)")
    ap.add_argument("--no-streaming", action="store_true", help="skip the streaming table")
    args = ap.parse_args()
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        sys.exit("needs arm-none-eabi-gcc and qemu-system-arm (scripts/install_toolchains.sh)")
    torch.set_num_threads(1)
    rows = [measure(m, args.opt) for m in args.models.split(",")]
    print(f"\nCortex-M4 (qemu mps2-an386, -icount shift=0), timed build {args.opt}; ms at {CLOCK_MHZ} MHz assume 1 "
          "instruction/cycle (estimate). MLPerf Tiny v1.1 NUCLEO-L4R5ZI ms: published, measured on hardware.")
    hdr = (f"{'model':6} {'MACs':>10} {'instr':>12} {'instr/MAC':>9} {'est ms':>8} {'TFLM ms':>8} {'Plumerai':>8} "
           f"{'vs Plum.':>8} {'arena+IO':>9} {'TFLM arena':>10} {'ratio':>6} {'.text':>7} {'weights':>8} {'exact':>5}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        tflm_ms, plum = PUBLISHED[r["model"]]
        ta = r["tflm_arena"]
        print(f"{r['model']:6} {r['macs']:>10,} {r['instructions']:>12,} {r['per_mac']:>9.2f} {r['ms']:>8.2f} "
              f"{tflm_ms:>8.2f} {plum:>8.2f} {r['ms'] / plum:>7.2f}x {r['arena'] + r['io']:>9,} "
              f"{ta if ta is not None else '-':>10} {(r['arena'] + r['io']) / ta if ta else float('nan'):>6.2f} "
              f"{r['text']:>7,} {r['weights']:>8,} {'yes' if r['exact'] else 'NO':>5}")
    print("\ninstructions per MAC by kernel:")
    for r in rows:
        parts = ", ".join(f"{k} {n / max(m, 1):.2f} ({n / r['instructions']:.0%})" if m else f"{k} ({n / r['instructions']:.0%})"
                          for k, (n, m) in sorted(r["by_kernel"].items(), key=lambda kv: -kv[1][0]))
        print(f"  {r['model']}: {parts}")
    if args.no_streaming:
        return
    st = streaming_rows()
    print("\ndigits CNN, --prune magnitude:global:0.7 --cluster-bits 4, nrf52840 (Cortex-M4, -Os build):")
    print(f"{'weights':10} {'flash':>9} {'container':>9} {'RAM':>8} {'arena':>8} {'slot':>8} {'instr':>12} {'accuracy':>8}")
    for r in st:
        print(f"{'streamed' if r['mode'] == 'all' else 'raw int8':10} {r['flash']:>9,} {r['weights']:>9,} {r['ram']:>8,} "
              f"{r['arena']:>8,} {r['slot']:>8,} {r['instr']:>12,} {r['accuracy']:>8.2%}")
    a, b = st
    print(f"flash raw / streamed: {b['flash'] / a['flash']:.2f}x; RAM streamed {a['ram']:,} B <= raw arena + the largest "
          f"streamed layer's weights = {b['arena'] + a['slot']:,} B: {a['ram'] <= b['arena'] + a['slot']}")


if __name__ == "__main__":
    main()
