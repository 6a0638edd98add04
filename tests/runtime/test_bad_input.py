"""Bad input: each kind rejected with its own exception (Python) and its own status (C)."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from ecw_harness import run
from edgecompile.container import (BadMagic, ChecksumMismatch, CorruptHeader, CorruptStream, Truncated, UnknownCodec,
                                   UnsupportedVersion, encode_container, read_container)
from edgecompile.container import format as fmt


def _base() -> bytes:
    rng = np.random.default_rng(0)
    t = {"w": np.clip(np.round(rng.normal(0, 20, (16, 64))), -127, 127).astype(np.int8),
         "b": rng.integers(-99, 99, 16).astype(np.int32)}
    data, _ = encode_container(t, codec_for={"w": "rans", "b": "raw"})
    return data


def _reseal(b: bytearray) -> bytes:
    n, meta = struct.unpack_from("<II", b, 8)
    end = 32 + 80 * n + meta
    struct.pack_into("<I", b, 28, zlib.crc32(b[32:end], zlib.crc32(b[:28])))
    return bytes(b)


def _entry(b: bytearray, i: int, field: str, value) -> bytearray:
    off = 32 + 80 * i
    for name, code in fmt.ENTRY_FIELDS:
        if name == field:
            struct.pack_into("<" + code, b, off, value)
            return b
        off += struct.calcsize("<" + code)
    raise KeyError(field)


def _cases() -> dict:
    base = _base()
    w = read_container(base).records[0]
    b = lambda: bytearray(base)  # noqa: E731
    flipped = b()
    flipped[w.offset + w.encoded_size - 3] ^= 0x5A  # inside the rANS block's words
    return {
        # name: (bytes, Python exception, C status, where: "open" or tensor index)
        "bad_magic": (b"PK\x03\x04" + base[4:], BadMagic, "ECW_E_MAGIC", "open"),
        "version": (bytes(struct.pack_into("<H", v := b(), 4, 2) or v), UnsupportedVersion, "ECW_E_VERSION", "open"),
        "truncated_file": (base[:-5], Truncated, "ECW_E_TRUNCATED", "open"),
        "table_crc": (bytes(_entry(b(), 0, "layout", 3)), ChecksumMismatch, "ECW_E_CHECKSUM", "open"),
        "offset_outside_file": (_reseal(_entry(b(), 1, "offset", len(base) + 16)), CorruptHeader, "ECW_E_HEADER", "open"),
        "size_overflow": (_reseal(_entry(b(), 0, "encoded_size", 2**64 - 16)), CorruptHeader, "ECW_E_HEADER", "open"),
        "decoded_size_overflow": (_reseal(_entry(b(), 0, "decoded_size", 2**64 - 1)), CorruptHeader, "ECW_E_HEADER", "open"),
        "too_many_tensors": (_reseal(bytearray(struct.pack_into("<I", v := b(), 8, 2**32 - 1) or v)), CorruptHeader, "ECW_E_HEADER", "open"),
        "unknown_codec": (_reseal(_entry(b(), 0, "codec", 9)), UnknownCodec, "ECW_E_CODEC", "open"),
        "tensor_crc": (_reseal(_entry(b(), 1, "crc32", 12345)), ChecksumMismatch, "ECW_E_CHECKSUM", 1),
        "truncated_stream": (_reseal(_entry(b(), 0, "encoded_size", w.encoded_size - 1)), CorruptStream, "ECW_E_STREAM", 0),
        "corrupt_stream": (bytes(flipped), CorruptStream, "ECW_E_STREAM", 0),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_python_reader_raises_the_specific_error(name):
    data, exc, _, _ = CASES[name]
    with pytest.raises(exc) as info:
        read_container(data).verify()
    assert type(info.value) is exc  # not merely a subclass of it


@pytest.mark.parametrize("name", sorted(CASES))
def test_c_reader_returns_the_specific_status(decoders, tmp_path, name):
    data, _, status, where = CASES[name]
    path = tmp_path / f"{name}.ecw"
    path.write_bytes(data)
    for tool in decoders.values():
        rc, lines = run([*tool, str(path)])
        assert rc != 0
        if where == "open":
            assert lines == [f"open {status}"]
        else:
            assert lines[0] == "open ECW_OK" and lines[1 + where].split()[2] == status


def test_every_kind_has_its_own_error():
    kinds = {(exc, status) for _, exc, status, _ in CASES.values()}
    assert len({e for e, _ in kinds}) == len({s for _, s in kinds}) == 7


def _knot_table(start: int, count: int, mode: int, codes: list[int], orders: list[int]) -> bytes:
    from edgecompile.container import rans_tables

    return bytes([start, count - 1, mode]) + rans_tables._eg_stream(np.array(codes), np.array(orders))


def _zz(d: int) -> int:
    return 2 * d if d >= 0 else -2 * d - 1


KNOT_CASES = {
    # knots (value, gap - 1, value delta, ...): each invalid in its own way
    "knot_past_window": (8, _knot_table(0, 10, 0x80, [_zz(5), 9, _zz(0)], [0, 0, 0])),
    "knot_zero_weight": (8, _knot_table(0, 3, 0x80, [_zz(0), 1, _zz(0)], [0, 0, 0])),
    "knot_weight_above_65535": (8, _knot_table(0, 2, 0x80, [_zz(65535), 0, _zz(1)], [0, 0, 0])),
    "knot_unknown_mode_bit": (8, _knot_table(0, 2, 0x88, [_zz(5), 0, _zz(0)], [0, 0, 0])),
    # two weights of 65535 and 254 of 1 at M = 8: the ones take 254 of 256, the largest ends below 1
    "knot_remainder_below_1": (8, _knot_table(0, 256, 0x80, [_zz(65535), 0, _zz(0), 0, _zz(-65534), 252, _zz(0)],
                                               [0] * 7)),
    "knot_truncated": (8, _knot_table(0, 200, 0x80, [_zz(5), 0, _zz(1)], [0, 0, 0])),
    "explicit_order_8": (8, bytes([0, 0, 8, 0xFF])),
}


@pytest.mark.parametrize("name", sorted(KNOT_CASES))
def test_corrupt_tables_rejected_by_both_readers(decoders, tmp_path, name):
    """A rans payload whose table is invalid: CorruptStream in Python, ECW_E_STREAM in C."""
    from edgecompile.container.writer import _layout

    m, table = KNOT_CASES[name]
    t = {"w": np.arange(256, dtype=np.uint8)}
    payload = struct.pack("<BBBBII", m, 0, 1, 1, 1, 256) + table + bytes(8)  # one block: no size field
    _rejected_as_corrupt_stream(decoders, tmp_path / f"{name}.ecw", _layout(t, {}, {}, {"w": ("rans", payload)})[0])


def _rejected_as_corrupt_stream(decoders: dict, path, data: bytes) -> None:
    """CorruptStream from the Python reader, ECW_E_STREAM from every C decoder path."""
    with pytest.raises(CorruptStream):
        read_container(data).verify()
    path.write_bytes(data)
    for tool in decoders.values():
        rc, lines = run([*tool, str(path)])
        assert rc != 0 and lines[0] == "open ECW_OK" and lines[1].split()[2] == "ECW_E_STREAM", lines


def _class_payload() -> tuple[dict, bytes]:
    """A valid rans payload with a 2-class map over 16 rows of 512 symbols (flags 2, G = 2)."""
    from edgecompile.container import rans

    rng = np.random.default_rng(2)
    a = np.concatenate([rng.integers(0, 2, (8, 512)), rng.integers(100, 102, (8, 512))]).astype(np.uint8)
    cls = np.repeat(np.arange(2, dtype=np.uint8), 8)
    (payload,) = rans.encode_batch([rans.plan(a.ravel(), 2, classes=cls)[0]])
    assert payload[1] == 2 and payload[12:18] == bytes([16, 0, 0, 0, 0x00, 0xFF])
    return {"w": a}, payload


def _patch(payload: bytes, at: int, new: bytes) -> bytes:
    return payload[:at] + new + payload[at + len(new):]


CLASS_CASES = {
    "class_empty": lambda p: _patch(p, 16, bytes([0, 0])),  # every row in class 0
    "class_past_tables": lambda p: _patch(p, 4, struct.pack("<I", 3)),  # 2-bit entries, one reads 3
    "class_rows_not_dividing": lambda p: _patch(p, 12, struct.pack("<I", 15)),
    "class_zero_rows": lambda p: _patch(p, 12, struct.pack("<I", 0)),
    "class_map_past_payload": lambda p: _patch(p, 4, struct.pack("<I", 16))[:12] + struct.pack("<I", 8192) + p[16:],
    "class_count_17": lambda p: _patch(p, 4, struct.pack("<I", 17)),
    "class_count_1": lambda p: _patch(p, 4, struct.pack("<I", 1)),
    "flags_shuffle_and_classes": lambda p: _patch(p, 1, bytes([3])),
}


@pytest.mark.parametrize("name", sorted(CLASS_CASES))
def test_corrupt_class_maps_rejected_by_both_readers(decoders, tmp_path, name):
    """A rans payload whose class map is invalid: CorruptStream in Python, ECW_E_STREAM in C."""
    from edgecompile.container.writer import _layout

    t, payload = _class_payload()
    data = _layout(t, {}, {}, {"w": ("rans", payload)})[0]
    read_container(data).verify()  # the unpatched payload is valid
    _rejected_as_corrupt_stream(decoders, tmp_path / f"{name}.ecw",
                                _layout(t, {}, {}, {"w": ("rans", CLASS_CASES[name](payload))})[0])
