"""Kernel bench on Cortex-M4: emulated instructions per MAC, portable loops against the DSP paths.

Run: ``.venv/bin/python bench/bench_kernels_m4.py`` (needs arm-none-eabi-gcc, qemu-system-arm).

Each layer runs once in a bare-metal program under ``qemu-system-arm -M mps2-an386 -icount
shift=0``, where one SysTick tick is 40 emulated instructions (the calibration of
``edgecompile/backends/c/model.py``). The program is built twice from the same runtime sources,
``-DECM_PORTABLE`` (the reference loops: "before") and as shipped (the DSP paths: "after"), both at
the bundles' flags (``-Os -mcpu=cortex-m4 ... -DECW_NO_FAST``); the two builds' outputs must agree
byte for byte (a checksum per layer). MACs count every tap of a window, padding included (the usual
convention); ADD and pooling layers count toward a model's instructions with no MACs. Layers are
the shapes of the MLPerf Tiny models (DS-CNN keyword spotting, MobileNetV1-0.25 visual wake words,
ResNet-8, the FC autoencoder) with random int8 data. Also prints the kernels' .text at -Os.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
M4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-DECW_NO_FAST"]
INSTRUCTIONS_PER_TICK = 40


@dataclass(frozen=True)
class Layer:
    """One kernel call: conv (groups 1 or depthwise), fc, add or avgpool, on an h x w x c input."""

    name: str
    kind: str                     # conv | dw | fc | add | avgpool
    h: int
    w: int
    c: int
    out_c: int = 0
    k: tuple[int, int] = (1, 1)
    stride: int = 1
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    def out_hw(self) -> tuple[int, int]:
        if self.kind in ("fc", "add"):
            return self.h, self.w
        t, left, b, r = self.pad
        return (self.h + t + b - self.k[0]) // self.stride + 1, (self.w + left + r - self.k[1]) // self.stride + 1

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw()
        if self.kind == "conv":
            return oh * ow * self.out_c * self.k[0] * self.k[1] * self.c
        if self.kind == "dw":
            return oh * ow * self.c * self.k[0] * self.k[1]
        if self.kind == "fc":
            return self.h * self.c * self.out_c
        return 0


def _same(k: int, stride: int, size: int) -> tuple[int, int]:
    """TFLite SAME padding (before, after) of one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def conv(name, h, w, c, out_c, k, stride=1, kind="conv") -> Layer:
    kh, kw = (k, k) if isinstance(k, int) else k
    (t, b), (left, r) = _same(kh, stride, h), _same(kw, stride, w)
    return Layer(name, kind, h, w, c, out_c if kind == "conv" else c, (kh, kw), stride, (t, left, b, r))


def ds_cnn() -> list[Layer]:
    """MLPerf Tiny keyword spotting DS-CNN: 49 x 10 MFCC, 64 channels, 4 separable blocks."""
    layers = [conv("conv1 10x4/2", 49, 10, 1, 64, (10, 4), 2)]
    for i in range(4):
        layers += [conv(f"dw{i + 1} 3x3", 25, 5, 64, 64, 3, kind="dw"), conv(f"pw{i + 1}", 25, 5, 64, 64, 1)]
    return layers + [Layer("avgpool 25x5", "avgpool", 25, 5, 64, k=(25, 5), stride=1),
                     Layer("fc 64->12", "fc", 1, 1, 64, 12)]


def mobilenet_v1_025() -> list[Layer]:
    """MLPerf Tiny visual wake words MobileNetV1 (alpha 0.25) on 96 x 96 x 3."""
    layers = [conv("conv1 3x3/2", 96, 96, 3, 8, 3, 2)]
    size, c = 48, 8
    for i, (out_c, s) in enumerate([(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1),
                                    (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)]):
        layers.append(conv(f"dw{i + 1} 3x3/{s}", size, size, c, c, 3, s, kind="dw"))
        size = -(-size // s)
        layers.append(conv(f"pw{i + 1} {c}->{out_c}", size, size, c, out_c, 1))
        c = out_c
    return layers + [Layer("avgpool 3x3", "avgpool", 3, 3, 256, k=(3, 3)), Layer("fc 256->2", "fc", 1, 1, 256, 2)]


def resnet8() -> list[Layer]:
    """MLPerf Tiny image classification ResNet-8 on 32 x 32 x 3 (16, 32, 64 channels)."""
    layers = [conv("conv1 3x3", 32, 32, 3, 16, 3)]
    size, c = 32, 16
    for stage, out_c in enumerate((16, 32, 64)):
        s = 1 if stage == 0 else 2
        layers.append(conv(f"s{stage + 1}a 3x3/{s}", size, size, c, out_c, 3, s))
        osize = -(-size // s)
        layers.append(conv(f"s{stage + 1}b 3x3", osize, osize, out_c, out_c, 3))
        if s != 1:
            layers.append(conv(f"s{stage + 1}sc 1x1/{s}", size, size, c, out_c, 1, s))
        layers.append(Layer(f"s{stage + 1} add", "add", osize, osize, out_c))
        size, c = osize, out_c
    return layers + [Layer("avgpool 8x8", "avgpool", 8, 8, 64, k=(8, 8)), Layer("fc 64->10", "fc", 1, 1, 64, 10)]


def fc_autoencoder() -> list[Layer]:
    """MLPerf Tiny anomaly detection autoencoder: 640 -> 128 x 4 -> 8 -> 128 x 4 -> 640."""
    dims = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    return [Layer(f"fc {a}->{b}", "fc", 1, 1, a, b) for a, b in zip(dims, dims[1:])]


MICRO = [conv("conv 3x3 16->16 32x32", 32, 32, 16, 16, 3), conv("conv 3x3 64->64 8x8", 8, 8, 64, 64, 3),
         conv("pointwise 64->64 25x5", 25, 5, 64, 64, 1), conv("pointwise 128->128 6x6", 6, 6, 128, 128, 1),
         conv("depthwise 3x3 64 25x5", 25, 5, 64, 64, 3, kind="dw"),
         conv("depthwise 3x3/2 32 48x48", 48, 48, 32, 32, 3, 2, kind="dw"),
         Layer("fc 640->128", "fc", 1, 1, 640, 128), Layer("fc 64->12", "fc", 1, 1, 64, 12)]
MODELS = {"DS-CNN (KWS)": ds_cnn(), "MobileNetV1-0.25 (VWW)": mobilenet_v1_025(), "ResNet-8 (IC)": resnet8(),
          "FC autoencoder (AD)": fc_autoencoder()}

# ---------------------------------------------------------------------------------- the program

_MAIN = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "ecm.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

typedef struct { int kind, h, w, c, oc, kh, kw, s, pt, pl, pb, pr; } layer;
enum { CONV, DW, FC, ADD, AVGPOOL };
static const layer layers[] = {
%(layers)s
};
static int8_t in_a[%(max_in)d], in_b[%(max_in)d], wts[%(max_w)d], out[%(max_out)d];
static int32_t bias[%(max_c)d], mult[%(max_c)d], shift[%(max_c)d];
static uint32_t rng = 12345u;
static int8_t next8(void) { rng = rng * 1664525u + 1013904223u; return (int8_t)(rng >> 24); }
static void fill(int8_t *p, int n) { int i; for (i = 0; i < n; i++) p[i] = next8(); }

int main(void) {
    unsigned k;
    SYST_RVR = 0xFFFFFFu; SYST_CVR = 0u; SYST_CSR = 5u;
    for (k = 0; k < sizeof layers / sizeof layers[0]; k++) {
        const layer *L = &layers[k];
        const int oh = L->kind == FC || L->kind == ADD ? L->h : (L->h + L->pt + L->pb - L->kh) / L->s + 1;
        const int ow = L->kind == FC || L->kind == ADD ? L->w : (L->w + L->pl + L->pr - L->kw) / L->s + 1;
        const int n_in = L->h * L->w * L->c, n_out = oh * ow * (L->oc ? L->oc : L->c);
        ecm_status st = ECM_E_ARG;
        uint32_t t0, t1, sum = 0;
        int i;
        fill(in_a, n_in); fill(in_b, n_in); fill(wts, L->oc * L->kh * L->kw * (L->kind == DW ? 1 : L->c));
        for (i = 0; i < %(max_c)d; i++) {
            bias[i] = (int32_t)next8() * 64; mult[i] = 0x40000000 + ((int32_t)(uint8_t)next8() << 20);
            shift[i] = -7 - (next8() & 3);
        }
        t0 = SYST_CVR;
        if (L->kind == CONV || L->kind == DW) {
            ecm_conv_params p = {L->s, L->s, 1, 1, L->pt, L->pl, L->pb, L->pr, L->kind == DW ? L->c : 1, -3, 5, -128, 127};
            ecm_quant q = {mult, shift, L->oc};
            ecm_dims di = {1, L->h, L->w, L->c}, dw = {L->oc, L->kh, L->kw, L->kind == DW ? 1 : L->c};
            ecm_dims dout = {1, oh, ow, L->oc};
            st = ecm_conv2d(&p, &q, di, in_a, dw, wts, bias, dout, out);
        } else if (L->kind == FC) {
            ecm_fc_params p = {-3, 5, -128, 127};
            ecm_quant q = {mult, shift, L->oc};
            st = ecm_fully_connected(&p, &q, L->h, L->c, L->oc, in_a, wts, bias, out);
        } else if (L->kind == ADD) {
            ecm_add_params p = {-3, 4, 5, 0x40000000, -1, 0x50000000, -1, 0x60000000, -18, 20, -128, 127};
            st = ecm_add(&p, (size_t)n_in, in_a, in_b, out);
        } else {
            ecm_pool_params p = {L->kh, L->kw, L->s, L->s, L->pt, L->pl, L->pb, L->pr, -128, 127};
            ecm_dims di = {1, L->h, L->w, L->c}, dout = {1, oh, ow, L->c};
            st = ecm_avg_pool2d(&p, di, in_a, dout, out);
        }
        t1 = SYST_CVR;
        for (i = 0; i < n_out; i++) sum = sum * 31u + (uint8_t)out[i];
        printf("layer %%u %%lu %%08lx %%s\n", k, (unsigned long)((t0 - t1) & 0xFFFFFFu), (unsigned long)sum,
               ecm_status_name(st));
    }
    return 0;
}
"""


def program(layers: list[Layer]) -> str:
    kinds = {"conv": "CONV", "dw": "DW", "fc": "FC", "add": "ADD", "avgpool": "AVGPOOL"}
    rows, max_in, max_w, max_out, max_c = [], 1, 1, 1, 1
    for L in layers:
        oh, ow = L.out_hw()
        oc = L.out_c if L.kind in ("conv", "dw", "fc") else 0
        rows.append(f"    {{{kinds[L.kind]}, {L.h}, {L.w}, {L.c}, {oc}, {L.k[0]}, {L.k[1]}, {L.stride}, "
                    f"{', '.join(map(str, L.pad))}}},")
        max_in = max(max_in, L.h * L.w * L.c)
        max_w = max(max_w, oc * L.k[0] * L.k[1] * (1 if L.kind == "dw" else L.c))
        max_out = max(max_out, oh * ow * max(oc, L.c))
        max_c = max(max_c, oc, L.c)
    return _MAIN % {"layers": "\n".join(rows), "max_in": max_in, "max_w": max_w, "max_out": max_out, "max_c": max_c}


def kernel_sources() -> list[Path]:
    return sorted((RUNTIME / "src").glob("ecm_kernels*.c"))


def build(work: Path, layers: list[Layer], defines: list[str], name: str) -> Path:
    (work / "bench.c").write_text(program(layers))
    elf = work / f"{name}.elf"
    subprocess.run(["arm-none-eabi-gcc", "-std=c99", "-Os", *M4, *defines, "-ffunction-sections", "-fdata-sections",
                    f"-I{RUNTIME / 'include'}", *map(str, kernel_sources()), str(work / "bench.c"),
                    str(RUNTIME / "mcu" / "startup.c"), "-T", str(RUNTIME / "mcu" / "mps2_an386.ld"),
                    "--specs=nano.specs", "--specs=rdimon.specs", "-lrdimon", "-Wl,--gc-sections", "-o", str(elf)],
                   check=True, capture_output=True, text=True)
    return elf


def run(elf: Path) -> list[tuple[int, str]]:
    """(instructions, checksum) per layer."""
    p = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-icount", "shift=0", "-nographic", "-semihosting",
                        "-kernel", str(elf)], capture_output=True, text=True, timeout=600, check=True)
    out = []
    for line in p.stdout.splitlines():
        m = re.match(r"layer (\d+) (\d+) ([0-9a-f]+) (\S+)", line)
        if m:
            if m.group(4) != "ECM_OK":
                raise RuntimeError(f"layer {m.group(1)}: {m.group(4)}")
            out.append((int(m.group(2)) * INSTRUCTIONS_PER_TICK, m.group(3)))
    return out


def measure(work: Path, layers: list[Layer]) -> list[tuple[Layer, int, int]]:
    """(layer, instructions before, instructions after), checksums checked equal."""
    before = run(build(work, layers, ["-DECM_PORTABLE"], "portable"))
    after = run(build(work, layers, [], "fast"))
    assert len(before) == len(after) == len(layers)
    for L, (_, a), (_, b) in zip(layers, before, after):
        if a != b:
            raise AssertionError(f"{L.name}: the fast path's output differs from the portable loop's")
    return [(L, b, a) for L, (b, _), (a, _) in zip(layers, before, after)]


def text_sizes(work: Path) -> dict[str, int]:
    """.text of each kernels object at the bundles' -Os, fast paths in and (ECM_PORTABLE) out."""
    sizes = {}
    for src in kernel_sources():
        for label, defines in (("", []), (" ECM_PORTABLE", ["-DECM_PORTABLE"])):
            obj = work / f"{src.stem}{label.strip()}.o"
            subprocess.run(["arm-none-eabi-gcc", "-std=c99", "-Os", *M4, *defines, "-ffunction-sections",
                            "-fdata-sections", f"-I{RUNTIME / 'include'}", "-c", str(src), "-o", str(obj)], check=True)
            line = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True,
                                  check=True).stdout.splitlines()[1]
            sizes[f"{src.name}{label}"] = int(line.split()[0])
    return sizes


def _fmt(rows: list[tuple[Layer, int, int]], title: str) -> list[str]:
    lines = [f"{title:<34} {'MACs':>10} {'before':>8} {'after':>8} {'speedup':>8}   (emulated instructions / MAC)"]
    tb = ta = tm = 0
    for L, b, a in rows:
        tb, ta, tm = tb + b, ta + a, tm + L.macs
        if L.macs:
            lines.append(f"  {L.name:<32} {L.macs:>10,} {b / L.macs:>8.2f} {a / L.macs:>8.2f} {b / a:>7.1f}x")
        else:
            lines.append(f"  {L.name:<32} {'-':>10} {b:>8,} {a:>8,} {'insns':>8}")
    if tm:
        lines.append(f"  {'total':<32} {tm:>10,} {tb / tm:>8.2f} {ta / tm:>8.2f} {tb / ta:>7.1f}x")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-only", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.models_only:
            print("\n".join(_fmt(measure(work, MICRO), "kernel")))
            print()
        for name, layers in MODELS.items():
            print("\n".join(_fmt(measure(work, layers), name)))
            print()
        print("kernels .text at -Os (arm-none-eabi-size, Cortex-M4):")
        for k, v in text_sizes(work).items():
            print(f"  {k:<36} {v:>6} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
