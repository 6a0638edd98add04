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
        "version": (bytes(struct.pack_into("<H", v := b(), 4, 3) or v), UnsupportedVersion, "ECW_E_VERSION", "open"),
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
