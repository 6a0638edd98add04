"""The conversion zoo side by side with the peers: for each architecture of bench/zoo/archs.py
(torchvision, timm, `transformers` from configs, `torch.nn` blocks; seeded random weights; real
inputs), what edgecompile makes of it next to `torch.onnx.export` (dynamo and legacy) and
litert-torch on the same module and the same inputs.

Run: ``.venv/bin/python bench/bench_zoo.py [--archs bert-tiny,gpt2] [--no-peers] [--no-int8] [--json F]``
(peers: ``bash scripts/setup_peers.sh`` once; without .venv-peers their columns say so).

Per architecture, each in its own process (a crash or a blow-up stays one row; peak memory is the
process's):
  conv onnx     `edgecompile.build` --backend onnx --quant none --optimize none: the verified
                conversion; mean per-sample cosine to PyTorch on 32 held-out inputs
  conv tflite   the same with --backend tflite (LiteRT runs it)
  int8          the default rpi4 build (quant auto, per-layer search under the gate): the first
                output's figure, `ok` when the gate passed, else `FAIL`; the bundle's bytes as a
                fraction of fp32 ONNX
  conv s / int8 s   build seconds, peak MB of the process
  peers         the peers' conversion cosine (bench/zoo_peers.py in .venv-peers), or their error
An error cell is `E3 <first words>` for a one-line error with its exit code, `TB <type>` for an
internal error (a bug of ours: exit 70, "please report"). The summary counts conversions at cosine >= 0.9999
and prints the stage times of the largest model.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pretrained import text_table  # noqa: E402

CONV_OK = 0.9999
PEERS = ("torch.onnx dynamo", "torch.onnx legacy", "litert-torch")
PEER_PY = ROOT / ".venv-peers" / "bin" / "python"


# -- one architecture, in its own process ---------------------------------------------------------

def _error_cell(e: BaseException) -> dict:
    """{'exit': code or None, 'error': first line}: what `edgecompile build` would print (None: an
    error the CLI reports as internal, i.e. a bug of ours)."""
    from edgecompile.errors import EdgecompileError, InternalError

    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if not isinstance(e, EdgecompileError) or isinstance(e, InternalError):
        return {"exit": None, "error": f"{type(e).__name__}: {line}"[:300]}
    return {"exit": e.exit_code, "error": line[:300]}


def _build(arch, out: Path, **kw) -> dict:
    import torch

    from edgecompile.build import BuildConfig, build

    torch.manual_seed(0)
    t = time.perf_counter()
    try:
        r = build(arch.loaded(), BuildConfig(target="rpi4", out=out, allow_degraded=True, latency_repeats=3,
                                             max_eval_samples=32, **kw))
    except Exception as e:  # every failure is a row of the table, classified as the CLI would
        return {"seconds": round(time.perf_counter() - t, 1), **_error_cell(e)}
    o = r.fidelity.primary
    tot = r.report["totals"]
    return {"seconds": round(time.perf_counter() - t, 1), "cosine": o.mean_cosine, "top1": o.top1_agreement,
            "passed": r.fidelity.passed, "bundle_bytes": tot["bundle_bytes"], "fp32_bytes": tot["fp32_onnx_bytes"],
            "params": tot["params_before"], "timings": r.report.get("timings_s", {}),
            "quant": r.report.get("chosen", {}).get("quant") if isinstance(r.report.get("chosen"), dict) else None}


def run_one(name: str, int8: bool, conv: bool = True) -> dict:
    import torch

    from bench.zoo.archs import ARCHS

    torch.set_num_threads(1)
    arch = ARCHS[name]
    res = {"name": name, "family": arch.family, "note": arch.note,
           "params": sum(p.numel() for p in arch.module().parameters())}
    with tempfile.TemporaryDirectory() as d:
        if conv:
            res["onnx"] = _build(arch, Path(d) / "onnx", backend="onnx", quant="none", optimize="none")
            res["tflite"] = _build(arch, Path(d) / "tflite", backend="tflite", quant="none", optimize="none")
        if int8:
            res["int8"] = _build(arch, Path(d) / "int8")
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


# -- the table ------------------------------------------------------------------------------------

def _sub(cmd: list[str], timeout: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not last:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"process exit {p.returncode}: {tail[:200]}"}
    return json.loads(last[-1])


def _cos_cell(r: dict | None) -> str:
    if not r:
        return "-"
    if "cosine" in r and r["cosine"] is not None:
        return f"{r['cosine']:.6f}"
    if r.get("exit") is not None:
        return f"E{r['exit']} {r['error'][:28]}"
    return "TB " + r.get("error", "?")[:28]


def _int8_cell(r: dict | None) -> str:
    if not r:
        return "-"
    if "cosine" not in r:
        return _cos_cell(r)
    fig = f"top1 {r['top1']:.3f}" if r.get("top1") is not None else f"cos {r['cosine']:.4f}"
    return f"{fig} {'ok' if r['passed'] else 'FAIL'} {r['bundle_bytes'] / r['fp32_bytes']:.3f}x"


def _converted(r: dict | None) -> bool:
    return bool(r) and r.get("cosine") is not None and r["cosine"] >= CONV_OK


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", help="comma-separated names (default: all; `python -m bench.zoo.archs` lists them)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--int8-only", action="store_true", help="only the int8 builds (no conversion, no peers)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per architecture and side")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--peers-from", type=Path, help="reuse the peers' figures of an earlier --json (same pins)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, not args.no_int8, not args.int8_only), default=float))
        return

    from bench.zoo.archs import ARCHS
    names = args.archs.split(",") if args.archs else list(ARCHS)
    earlier = {}
    if args.peers_from:
        earlier = {r["peers"].get("name"): r["peers"] for r in json.loads(args.peers_from.read_text())}
    peers = not args.no_peers and not args.int8_only and (PEER_PY.exists() or bool(earlier))
    if not args.no_peers and not peers:
        print(f"peers not measured: {PEER_PY} is missing (bash scripts/setup_peers.sh)")
    rows, results = [], []
    for i, name in enumerate(names, 1):
        t = time.perf_counter()
        flags = (["--no-int8"] if args.no_int8 else []) + (["--int8-only"] if args.int8_only else [])
        ours = _sub([sys.executable, __file__, "--one", name] + flags, args.timeout)
        theirs = earlier.get(name) or (_sub([str(PEER_PY), str(ROOT / "bench" / "zoo_peers.py"), name], args.timeout)
                                       if peers else {})
        results.append({"ours": ours, "peers": theirs})
        if "name" not in ours:          # the whole process failed
            ours = {"onnx": ours, "tflite": ours, "int8": ours}
        ours.setdefault("onnx", {})
        ours.setdefault("tflite", {})
        print(f"[{i}/{len(names)}] {name}: {time.perf_counter() - t:.0f} s; onnx {_cos_cell(ours['onnx'])}, "
              f"tflite {_cos_cell(ours['tflite'])}" + "".join(f", {p} {_cos_cell(theirs.get(p))}" for p in PEERS if peers),
              file=sys.stderr, flush=True)
        rows.append([name, ARCHS[name].family, f"{ours.get('params', 0) / 1e6:.2f}",
                     _cos_cell(ours["onnx"]), _cos_cell(ours["tflite"]), _int8_cell(ours.get("int8")),
                     f"{ours['onnx'].get('seconds', '-')}/{ours.get('int8', {}).get('seconds', '-')}",
                     f"{ours.get('peak_mb', 0):.0f}"]
                    + [_cos_cell(theirs.get(p)) if peers else "n/a" for p in PEERS])
    head = ["arch", "family", "M params", "conv onnx", "conv tflite", "int8 (gate, bytes/fp32)", "conv s/int8 s",
            "peak MB", *PEERS]
    print(text_table("conversion zoo (bench/zoo/archs.py)", head, rows, [ARCHS[n].note for n in names]))
    _summary(results, peers)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


def _summary(results: list[dict], peers: bool) -> None:
    n = len(results)
    ours = [r["ours"] for r in results]
    def count(key):
        return sum(_converted(o.get(key)) for o in ours)
    print(f"\nconverted at cosine >= {CONV_OK} of {n}: edgecompile onnx {count('onnx')}, tflite {count('tflite')}", end="")
    if peers:
        for p in PEERS:
            print(f", {p} {sum(_converted(r['peers'].get(p)) for r in results)}", end="")
    print()
    tracebacks = [(o.get("name", "?"), k) for o in ours for k in ("onnx", "tflite", "int8")
                  if isinstance(o.get(k), dict) and "error" in o[k] and o[k].get("exit") is None]
    exit4 = [(o.get("name", "?"), k) for o in ours for k in ("onnx", "tflite", "int8")
             if isinstance(o.get(k), dict) and o[k].get("exit") == 4]
    print(f"internal errors: {len(tracebacks)} {tracebacks}; exit 4 (corrupt-bundle code): {exit4}")
    int8 = [o["int8"] for o in ours if isinstance(o.get("int8"), dict) and "passed" in o["int8"]]
    print(f"int8 default builds passing the gate: {sum(r['passed'] for r in int8)} of {len(int8)} built")
    big = max((o for o in ours if isinstance(o.get("onnx"), dict) and "params" in o["onnx"]),
              key=lambda o: o["onnx"]["params"], default=None)
    if big:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in big["onnx"]["timings"].items() if isinstance(v, (int, float)))
        print(f"largest ({big['name']}, {big['onnx']['params'] / 1e6:.1f}M params) pure conversion: "
              f"{big['onnx']['seconds']} s, peak {big['peak_mb']:.0f} MB of the process; stages (s): {stages}")


if __name__ == "__main__":
    main()
