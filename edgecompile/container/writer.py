"""Write ``.ecw`` containers: pick the smallest codec per tensor, lay out header, table, payloads."""
from __future__ import annotations

import logging
import os
import tempfile
import zlib
from pathlib import Path
from collections.abc import Mapping, Sequence

import numpy as np

from . import codecs as codecs_mod
from . import format as fmt
from .errors import ContainerError, UnknownCodec
from .records import QuantInfo, TensorRecord

log = logging.getLogger(__name__)
DEFAULT_CODECS = ("raw", "zstd", "rans", "lut")


def _canonical(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dt.name not in fmt.DTYPE_CODES:
        raise ContainerError(f"tensor {name!r}: dtype {arr.dtype} is not storable; use one of {sorted(fmt.DTYPE_CODES)}")
    if arr.ndim > fmt.MAX_NDIM or any(d >= 1 << 32 for d in arr.shape):
        raise ContainerError(f"tensor {name!r}: shape {arr.shape} has more than {fmt.MAX_NDIM} dims or a dim >= 2^32")
    if arr.size >= 1 << 32:
        raise ContainerError(f"tensor {name!r}: {arr.size} elements; the format holds fewer than 2^32 per tensor")
    return np.asarray(arr, dtype=fmt.DTYPES[fmt.DTYPE_CODES[dt.name]], order="C")


def _check_quant(name: str, q: QuantInfo, shape: tuple[int, ...]) -> None:
    if q.axis is None:
        return
    if not 0 <= q.axis < len(shape) or q.scale.size != shape[q.axis]:
        raise ContainerError(f"tensor {name!r}: per-channel quant on axis {q.axis} needs {shape[q.axis] if 0 <= q.axis < len(shape) else '?'} scales for shape {shape}, got {q.scale.size}")


def encode_container(
    tensors: Mapping[str, np.ndarray],
    quant: Mapping[str, QuantInfo] | None = None,
    codecs: Sequence[str] = DEFAULT_CODECS,
    codec_for: Mapping[str, str] | None = None,
    *,
    layouts: Mapping[str, str] | None = None,
    zstd_level: int = codecs_mod.ZSTD_LEVEL,
) -> tuple[bytes, list[TensorRecord]]:
    """Encode tensors into ``.ecw`` bytes, each with the smallest allowed codec that applies.

    Parameters
    ----------
    tensors : Mapping[str, np.ndarray]
        Name -> array (int8, uint8, int16, uint16, int32, uint32, float16, float32, int64, bool,
        float64), in
        file order.
    quant : Mapping[str, QuantInfo], optional
        Dequantization parameters to record for some tensors.
    codecs : Sequence[str]
        Codecs the target can decode; a tensor gets the smallest of those that apply (lut only
        with at most 64 distinct values; raw always applies if allowed).
    codec_for : Mapping[str, str], optional
        Force a codec for some tensors (raises if it does not apply).
    layouts : Mapping[str, str], optional
        Layout hints (``fmt.LAYOUT_CODES``), default ``row_major``.
    zstd_level : int
        zstd compression level.

    Returns
    -------
    (bytes, list[TensorRecord])
    """
    quant, codec_for, layouts = dict(quant or {}), dict(codec_for or {}), dict(layouts or {})
    allowed = tuple(codecs)
    for c in set(allowed) | set(codec_for.values()):
        if c not in fmt.CODEC_CODES:
            raise UnknownCodec(f"unknown codec {c!r}; known: {sorted(fmt.CODEC_CODES)}")
    for key in set(quant) | set(codec_for) | set(layouts):
        if key not in tensors:
            raise ContainerError(f"quant/codec_for/layouts name {key!r} is not among the tensors")
    arrays = {name: _canonical(name, a) for name, a in tensors.items()}
    for name, arr in arrays.items():
        raw_name = name.encode("utf-8")
        if not 1 <= len(raw_name) <= fmt.MAX_NAME_LEN:
            raise ContainerError(f"tensor name {name!r} must be 1..{fmt.MAX_NAME_LEN} UTF-8 bytes")
        if name in quant:
            _check_quant(name, quant[name], arr.shape)
        if layouts.get(name, "row_major") not in fmt.LAYOUT_CODES:
            raise ContainerError(f"tensor {name!r}: unknown layout {layouts[name]!r}; known: {sorted(fmt.LAYOUT_CODES)}")

    # Candidates per tensor; rANS work of all tensors is coded in one batch. A finished candidate
    # larger than the rANS one can be is dropped at once (a large fp32 tensor's zstd payload is
    # 30 MB held for nothing).
    cands = {}
    for name, arr in arrays.items():
        want = (codec_for[name],) if name in codec_for else allowed
        cands[name] = codecs_mod.candidates(arr.view(fmt.storage_dtype(arr.dtype)), want, zstd_level)
        if name in codec_for and codec_for[name] not in cands[name]:
            raise ContainerError(f"tensor {name!r}: codec {codec_for[name]!r} does not apply (lut needs <= 64 distinct values)")
        if not cands[name]:
            raise ContainerError(f"tensor {name!r}: none of the codecs {allowed} applies; allow 'raw'")
        if isinstance(cands[name].get("rans"), codecs_mod.Pending):
            bound = codecs_mod.rans_bound(cands[name]["rans"])
            cands[name] = {c: p for c, p in cands[name].items() if isinstance(p, codecs_mod.Pending) or len(p) <= bound}
    pending = [(n, c, p) for n, cs in cands.items() for c, p in cs.items() if isinstance(p, codecs_mod.Pending)]
    for (name, codec, _), payload in zip(pending, codecs_mod.finish([p for _, _, p in pending])):
        cands[name][codec] = payload

    chosen = {name: min(cs.items(), key=lambda kv: (len(kv[1]), fmt.CODEC_CODES[kv[0]])) for name, cs in cands.items()}
    return _layout(arrays, quant, layouts, chosen)


def _layout(arrays, quant, layouts, chosen) -> tuple[bytes, list[TensorRecord]]:
    names = list(arrays)
    meta = bytearray()
    name_at, quant_at = {}, {}
    for name in names:
        name_at[name] = len(meta)
        meta += name.encode("utf-8")
    for name in names:
        if name in quant:
            meta += b"\0" * (-len(meta) % 4)
            quant_at[name] = len(meta)
            meta += quant[name].scale.astype("<f4").tobytes() + quant[name].zero_point.astype("<i4").tobytes()
    table_end = fmt.HEADER.size + fmt.ENTRY.size * len(names) + len(meta)
    offset = fmt.align_up(table_end)
    entries, records, payloads = [], [], []
    for name in names:
        arr, (codec, payload) = arrays[name], chosen[name]
        q = quant.get(name)
        kind = fmt.QUANT_NONE if q is None else (fmt.QUANT_PER_TENSOR if q.axis is None else fmt.QUANT_PER_CHANNEL)
        crc = zlib.crc32(memoryview(arr).cast("B"))
        dims = list(arr.shape) + [0] * (fmt.MAX_NDIM - arr.ndim)
        entries.append(fmt.ENTRY.pack(
            offset, len(payload), arr.nbytes, crc, name_at[name], len(name.encode("utf-8")),
            fmt.DTYPE_CODES[arr.dtype.name], fmt.CODEC_CODES[codec], arr.ndim,
            fmt.LAYOUT_CODES[layouts.get(name, "row_major")], kind,
            fmt.NO_AXIS if q is None or q.axis is None else q.axis,
            quant_at.get(name, 0), 0 if q is None else q.scale.size, *dims, b"\0" * 8,
        ))
        records.append(TensorRecord(name, arr.dtype.name, tuple(arr.shape), layouts.get(name, "row_major"), q, codec,
                                    offset, len(payload), arr.nbytes, crc))
        payloads.append((offset, payload))
        log.debug("%s: %s %s -> %s, %d bytes", name, arr.dtype, arr.shape, codec, len(payload))
        offset = fmt.align_up(offset + len(payload))
    file_size = max(offset if not payloads else payloads[-1][0] + len(payloads[-1][1]), table_end)
    head = fmt.HEADER.pack(fmt.MAGIC, fmt.VERSION, fmt.ENTRY.size, len(names), len(meta), file_size, 0, 0)
    body = b"".join(entries) + bytes(meta)
    crc = zlib.crc32(body, zlib.crc32(head[:28]))
    parts, at = [head[:28], crc.to_bytes(4, "little"), body], table_end
    for off, payload in payloads:       # one join: the file is built once, not copied again
        parts += [bytes(off - at), payload]
        at = off + len(payload)
    parts.append(bytes(file_size - at))
    return b"".join(parts), records


def write_container(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    quant: Mapping[str, QuantInfo] | None = None,
    codecs: Sequence[str] = DEFAULT_CODECS,
    codec_for: Mapping[str, str] | None = None,
    **kwargs,
) -> list[TensorRecord]:
    """Encode (see ``encode_container``) and write atomically: a temporary file, then rename."""
    data, records = encode_container(tensors, quant, codecs, codec_for, **kwargs)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return records
