"""Read ``.ecw`` containers: validate every header field up front, decode tensors on demand."""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from . import codecs
from . import format as fmt
from .errors import (BadMagic, ChecksumMismatch, ContainerError, CorruptHeader, CorruptStream, Truncated, UnknownCodec,
                     UnsupportedVersion)
from .records import QuantInfo, TensorRecord

#: Largest tensor a reader decodes unless told otherwise (bytes).
DEFAULT_MAX_TENSOR_BYTES = 1 << 32


def read_container(src: str | os.PathLike | bytes | bytearray | memoryview, *,
                   max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> ContainerReader:
    """Open a container from a path or bytes and validate its header and table.

    Raises
    ------
    ContainerError
        A subclass naming the problem (``BadMagic``, ``Truncated``, ``CorruptHeader``...).
    """
    if isinstance(src, (str, os.PathLike)):
        data = memoryview(Path(src).read_bytes())
    else:
        data = memoryview(src).cast("B")
    return ContainerReader(data, max_tensor_bytes)


class ContainerReader:
    """A validated container; ``read`` decodes one tensor, ``read_all`` all of them in one batch."""

    def __init__(self, data: memoryview, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> None:
        self._data = data
        self.records: list[TensorRecord] = _parse(data, max_tensor_bytes)
        self.names: list[str] = [r.name for r in self.records]
        self._by_name = {r.name: r for r in self.records}

    def record(self, name: str) -> TensorRecord:
        """The table entry of ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in the container; it has {len(self.names)} tensors") from None

    def quant(self, name: str) -> QuantInfo | None:
        """Quantization parameters of ``name`` (None if it has none)."""
        return self.record(name).quant

    def read(self, name: str) -> np.ndarray:
        """Decode one tensor, check its CRC-32, return it with its dtype and shape."""
        return self._decode([self.record(name)])[0]

    def read_all(self) -> dict[str, np.ndarray]:
        """Decode every tensor (rANS streams of all tensors in one vectorized batch)."""
        return dict(zip(self.names, self._decode(self.records)))

    def verify(self) -> None:
        """Decode everything and check every CRC; raises the first problem found."""
        self.read_all()

    def _decode(self, records: list[TensorRecord]) -> list[np.ndarray]:
        staged = []
        for r in records:
            dtype = fmt.storage_dtype(np.dtype(r.dtype).newbyteorder("<"))
            payload = self._data[r.offset : r.offset + r.encoded_size]
            staged.append(codecs.prepare(r.codec, payload, dtype, r.decoded_size // dtype.itemsize))
        pend = [s for s in staged if isinstance(s, codecs.Pending)]
        done = iter(codecs.finish_decode(pend))
        out = []
        for r, s in zip(records, staged):
            raw = next(done) if isinstance(s, codecs.Pending) else s
            if raw.size != r.decoded_size:
                raise ContainerError(f"tensor {r.name!r} decoded to {raw.size} bytes, expected {r.decoded_size}")
            crc = zlib.crc32(raw)
            if crc != r.crc32:
                raise ChecksumMismatch(f"tensor {r.name!r}: CRC-32 {crc:#010x} of the decoded bytes, table says {r.crc32:#010x}")
            if r.dtype == "bool" and raw.size and int(raw.max()) > 1:
                raise CorruptStream(f"tensor {r.name!r}: bool tensor holds byte {int(raw.max())}; only 0 and 1 are valid")
            out.append(raw.view(fmt.DTYPES[fmt.DTYPE_CODES[r.dtype]]).reshape(r.shape).copy())
        return out


def _parse(data: memoryview, max_tensor_bytes: int) -> list[TensorRecord]:
    n_bytes = len(data)
    head = bytes(data[: fmt.HEADER.size])
    if head[:4] != fmt.MAGIC[: len(head[:4])] or (n_bytes >= 4 and head[:4] != fmt.MAGIC):
        raise BadMagic(f"not an .ecw container: magic {head[:4]!r}, expected {fmt.MAGIC!r}")
    if n_bytes < fmt.HEADER.size:
        raise Truncated(f"container of {n_bytes} bytes is shorter than its {fmt.HEADER.size}-byte header")
    h = dict(zip((f for f, _ in fmt.HEADER_FIELDS), fmt.HEADER.unpack(head)))
    if h["version"] != fmt.VERSION:
        raise UnsupportedVersion(f"container format version {h['version']}; this reader knows version {fmt.VERSION}")
    if h["file_size"] > n_bytes:
        raise Truncated(f"container is {n_bytes} bytes, its header says {h['file_size']}")
    table_end = fmt.HEADER.size + fmt.ENTRY.size * h["n_tensors"] + h["meta_size"]
    if h["entry_size"] != fmt.ENTRY.size or h["flags"] or table_end > h["file_size"]:
        raise CorruptHeader(f"header entry_size={h['entry_size']} flags={h['flags']} or table end {table_end} beyond file size {h['file_size']}")
    crc = zlib.crc32(data[fmt.HEADER.size : table_end], zlib.crc32(head[:28]))
    if crc != h["meta_crc32"]:
        raise ChecksumMismatch(f"header/table CRC-32 {crc:#010x} does not match the stored {h['meta_crc32']:#010x}")
    meta_start = table_end - h["meta_size"]
    meta = bytes(data[meta_start:table_end])
    data_start = fmt.align_up(table_end)
    records, seen = [], set()
    for i in range(h["n_tensors"]):
        e = _entry(data, i)
        rec = _record(e, i, meta, data_start, h["file_size"], max_tensor_bytes)
        if rec.name in seen:
            raise CorruptHeader(f"tensor name {rec.name!r} appears twice")
        seen.add(rec.name)
        records.append(rec)
    return records


def _entry(data: memoryview, i: int) -> dict:
    names = [f for f, _ in fmt.ENTRY_FIELDS]
    values = fmt.ENTRY.unpack_from(data, fmt.HEADER.size + fmt.ENTRY.size * i)
    e = dict(zip(names[:-2], values[: len(names) - 2]))
    e["dims"] = values[len(names) - 2 : len(names) + 4]
    e["reserved"] = values[-1]
    return e


def _record(e: dict, i: int, meta: bytes, data_start: int, file_size: int, max_tensor_bytes: int) -> TensorRecord:
    def bad(msg: str) -> CorruptHeader:
        return CorruptHeader(f"tensor entry {i}: {msg}")

    if e["dtype"] not in fmt.DTYPES:
        raise bad(f"unknown dtype code {e['dtype']}")
    if e["ndim"] > fmt.MAX_NDIM or any(e["dims"][e["ndim"]:]) or e["reserved"] != bytes(8):
        raise bad(f"ndim {e['ndim']} / unused dims {e['dims']} / reserved bytes are not valid")
    if e["layout"] not in fmt.LAYOUTS:
        raise bad(f"unknown layout code {e['layout']}")
    if not 1 <= e["name_len"] <= fmt.MAX_NAME_LEN or e["name_off"] + e["name_len"] > len(meta):
        raise bad(f"name [{e['name_off']}, +{e['name_len']}) outside the {len(meta)}-byte metadata")
    try:
        name = meta[e["name_off"] : e["name_off"] + e["name_len"]].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad("name is not UTF-8") from exc
    shape = tuple(e["dims"][: e["ndim"]])
    dtype = fmt.DTYPES[e["dtype"]]
    if int(np.prod(shape, dtype=object)) >= 1 << 32 or e["decoded_size"] != dtype.itemsize * int(np.prod(shape, dtype=object)):
        raise bad(f"decoded_size {e['decoded_size']} != {dtype.itemsize} x {shape}")
    if e["offset"] % fmt.ALIGN or e["offset"] < data_start or e["offset"] + e["encoded_size"] > file_size:
        raise bad(f"payload [{e['offset']}, +{e['encoded_size']}) is unaligned or outside [{data_start}, {file_size})")
    if e["codec"] not in fmt.CODECS:
        raise UnknownCodec(f"tensor {name!r}: unknown codec id {e['codec']}; known: {fmt.CODECS}")
    codec = fmt.CODECS[e["codec"]]
    if e["decoded_size"] > max(fmt.MAX_RATIO[codec] * e["encoded_size"], 0) or (codec == "raw" and e["encoded_size"] != e["decoded_size"]):
        raise bad(f"{codec} payload of {e['encoded_size']} bytes cannot hold {e['decoded_size']} decoded bytes")
    if e["decoded_size"] > max_tensor_bytes:
        raise bad(f"decoded size {e['decoded_size']} exceeds the reader's limit {max_tensor_bytes}; pass max_tensor_bytes")
    quant = _quant(e, shape, meta, bad)
    return TensorRecord(name, dtype.name, shape, fmt.LAYOUTS[e["layout"]], quant, codec, e["offset"],
                        e["encoded_size"], e["decoded_size"], e["crc32"])


def _quant(e: dict, shape: tuple, meta: bytes, bad) -> QuantInfo | None:
    kind, axis, count, off = e["quant_kind"], e["quant_axis"], e["quant_count"], e["quant_off"]
    if kind == fmt.QUANT_NONE:
        if count or axis != fmt.NO_AXIS:
            raise bad("quant_kind 0 with a quant count or axis")
        return None
    if kind == fmt.QUANT_PER_TENSOR and (count != 1 or axis != fmt.NO_AXIS):
        raise bad(f"per-tensor quant needs count 1 and axis 255, got {count}, {axis}")
    if kind == fmt.QUANT_PER_CHANNEL and (axis >= len(shape) or count != shape[axis] or count == 0):
        raise bad(f"per-channel quant on axis {axis} with {count} channels does not fit shape {shape}")
    if kind not in (fmt.QUANT_PER_TENSOR, fmt.QUANT_PER_CHANNEL):
        raise bad(f"unknown quant_kind {kind}")
    if off % 4 or off + 8 * count > len(meta):
        raise bad(f"quant arrays at {off} (+{8 * count}) are unaligned or outside the metadata")
    scale = np.frombuffer(meta, "<f4", count, off)
    zp = np.frombuffer(meta, "<i4", count, off + 4 * count)
    return QuantInfo(scale.copy(), zp.copy(), None if kind == fmt.QUANT_PER_TENSOR else axis)
