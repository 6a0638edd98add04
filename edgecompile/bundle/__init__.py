"""What ships in every bundle's ``python/`` folder: run a bundle on a board without torch.

``python/`` holds a copy of this package with `edgecompile.container` and `edgecompile.errors`
beside it (`ship`), so on a board, from the bundle folder::

    import sys; sys.path.insert(0, "python")
    from edgecompile.bundle import load_bundle
    session = load_bundle(".")
    (y,) = session.run(x)

Modules: `manifest` (the one manifest reader, the model file's checksum, the decoded weights,
`BundleError`), `session` (what every session shares: input checks, `run`, `latency`, the
runtime-error type and the operator → layer map), `onnx_session` (onnxruntime), `tflite_model` and
`tflite_session` (LiteRT), `check` (``edgecompile inspect``), `ship` (the copy into ``python/``).
numpy and the container only at import; a session's runtime is imported when a bundle needs it, so
a board has only the runtime its bundle uses.
"""

from __future__ import annotations

from pathlib import Path

from .manifest import MANIFEST, BundleError, read_manifest
from .session import BackendRuntimeError, BundleSessionBase, NodeMap, TensorSpec

__all__ = ["BackendRuntimeError", "BundleError", "BundleSessionBase", "NodeMap", "TensorSpec", "load_bundle",
           "read_manifest"]


def load_bundle(bundle_dir: str | Path, *, threads: int | None = None, node_map=None,
                manifest: dict | None = None) -> BundleSessionBase:
    """Loads a bundle folder written by `edgecompile build`, with the runtime its manifest names.

    Parameters
    ----------
    bundle_dir : str or Path
        The bundle (``manifest.json``, the model file, ``weights.ecw``).
    threads : int or None
        The runtime's intra-op threads.
    node_map : NodeMap, list or None
        The emitter's map from operators to IR layers; None: the manifest's ``node_map``.
    manifest : dict or None
        The manifest `read_manifest` returned (None: read here).

    Returns
    -------
    BundleSessionBase
        `onnx_session.BundleSession` (``backend: onnx``) or `tflite_session.TFLiteBundleSession`.

    Raises
    ------
    BundleError
        Missing files, a bad manifest, an unknown backend, weights that do not fit the model.
    ContainerError
        The weight container is truncated or corrupt (the message starts with its path).
    BackendRuntimeError
        The runtime refuses the model; `run` raises it too when an operator fails.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root) if manifest is None else manifest
    backend = manifest["backend"]
    if backend == "onnx":
        from .onnx_session import load_onnx_bundle
        return load_onnx_bundle(root, threads=threads, node_map=node_map, manifest=manifest)
    if backend == "tflite":
        from .tflite_session import load_tflite_bundle
        return load_tflite_bundle(root, threads=threads, node_map=node_map, manifest=manifest)
    raise BundleError(f"{root / MANIFEST}: unknown backend {backend!r}; expected 'onnx' or 'tflite'")
