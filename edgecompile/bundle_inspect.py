"""`inspect_bundle`: reads a bundle's manifest and report and checks its container's integrity."""

from __future__ import annotations

import json
from pathlib import Path


class BundleError(ValueError):
    """The folder is not a readable bundle (`corrupt` when its files are damaged)."""

    def __init__(self, msg: str, corrupt: bool = False):
        super().__init__(msg)
        self.corrupt = corrupt


def inspect_bundle(bundle: Path) -> dict:
    """Returns {manifest, report, tensors, container_bytes}; raises `BundleError` on any damage."""
    from .container import ContainerError, read_container

    bundle = Path(bundle)
    man_path = bundle / "manifest.json"
    if not man_path.is_file():
        raise BundleError(f"{bundle} is not an edgecompile bundle (no manifest.json)")
    try:
        manifest = json.loads(man_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{man_path} is not valid JSON: {e}", corrupt=True) from e
    if manifest.get("format") != "edgecompile-bundle":
        raise BundleError(f"{man_path} is not an edgecompile bundle manifest", corrupt=True)
    for key in ("model", "weights"):
        if not (bundle / manifest.get(key, "")).is_file():
            raise BundleError(f"{bundle}: the {key} file {manifest.get(key)!r} is missing", corrupt=True)
    weights = bundle / manifest["weights"]
    try:
        reader = read_container(weights.read_bytes())
        reader.verify()
    except ContainerError as e:
        raise BundleError(f"{weights}: {e}", corrupt=True) from e
    report = None
    if (bundle / "report.json").is_file():
        try:
            report = json.loads((bundle / "report.json").read_text())
        except json.JSONDecodeError as e:
            raise BundleError(f"{bundle / 'report.json'} is not valid JSON: {e}", corrupt=True) from e
    return {"manifest": manifest, "report": report, "tensors": len(reader.names),
            "container_bytes": weights.stat().st_size}
