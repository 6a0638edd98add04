"""Byte layout of the ``.ecw`` weight container, version 4 (mirror of ``runtime/FORMAT.md``).

``runtime/FORMAT.md`` is the specification; this module restates it as data, and
``tests/container/test_format_doc.py`` parses the document's tables and checks them against the
field lists below, so the two cannot drift apart. Summary::

    offset 0    header, 32 bytes       HEADER_FIELDS
    offset 32   tensor table           n_tensors x ENTRY_FIELDS (80 bytes each)
                metadata               meta_size bytes: names, float32 scales, int32 zero points
                zero padding           to a multiple of 16
                payloads               each at a multiple of 16, codec-specific
                                         rans: RANS_HEADER_FIELDS, [rows + class map], G tables, u32 block sizes but the last, blocks
                                         lut:  LUT_HEADER_FIELDS, k codebook values, indices

All integers little-endian. ``meta_crc32`` covers header bytes 0..27, the table and the metadata;
each entry's ``crc32`` covers the decoded tensor bytes (zlib CRC-32). A rans block interleaves its
symbols over W lanes, each starting from a u32 state ``x >= 2^16``; symbol i decodes in lane i mod W
as ``slot = x % 2^M; x = f[s]*(x >> M) + slot - c[s]``, then reads one 16-bit word of the block's
stream if ``x < 2^16``; every lane ends with ``x == 2^16`` and no words left.
"""
from __future__ import annotations

import struct

import numpy as np

MAGIC = b"ECW1"
VERSION = 4
ALIGN = 16

#: (field name, struct code); ``struct`` little-endian, no padding.
HEADER_FIELDS: tuple[tuple[str, str], ...] = (
    ("magic", "4s"),
    ("version", "H"),
    ("entry_size", "H"),
    ("n_tensors", "I"),
    ("meta_size", "I"),
    ("file_size", "Q"),
    ("flags", "I"),
    ("meta_crc32", "I"),
)
ENTRY_FIELDS: tuple[tuple[str, str], ...] = (
    ("offset", "Q"),
    ("encoded_size", "Q"),
    ("decoded_size", "Q"),
    ("crc32", "I"),
    ("name_off", "I"),
    ("name_len", "H"),
    ("dtype", "B"),
    ("codec", "B"),
    ("ndim", "B"),
    ("layout", "B"),
    ("quant_kind", "B"),
    ("quant_axis", "B"),
    ("quant_off", "I"),
    ("quant_count", "I"),
    ("dims", "6I"),
    ("reserved", "8s"),
)
RANS_HEADER_FIELDS: tuple[tuple[str, str], ...] = (
    ("scale_bits", "B"),
    ("flags", "B"),
    ("itemsize", "B"),
    ("lanes", "B"),
    ("n_groups", "I"),
    ("block", "I"),
)
LUT_HEADER_FIELDS: tuple[tuple[str, str], ...] = (
    ("bits", "B"),
    ("index_codec", "B"),
    ("k", "H"),
)


def _struct(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(code for _, code in fields))


HEADER = _struct(HEADER_FIELDS)
ENTRY = _struct(ENTRY_FIELDS)
RANS_HEADER = _struct(RANS_HEADER_FIELDS)
LUT_HEADER = _struct(LUT_HEADER_FIELDS)
assert HEADER.size == 32 and ENTRY.size == 80 and RANS_HEADER.size == 12 and LUT_HEADER.size == 4

MAX_NDIM = 6
MAX_NAME_LEN = 1024
NO_AXIS = 255

#: dtype code -> numpy dtype (little-endian).
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("int8"),
    2: np.dtype("uint8"),
    3: np.dtype("<i2"),
    4: np.dtype("<u2"),
    5: np.dtype("<i4"),
    6: np.dtype("<u4"),
    7: np.dtype("<f2"),
    8: np.dtype("<f4"),
    9: np.dtype("<i8"),
    10: np.dtype("bool"),
    11: np.dtype("<f8"),
}
DTYPE_CODES: dict[str, int] = {dt.name: code for code, dt in DTYPES.items()}


def storage_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a tensor's bytes are coded as: bool as uint8 (one byte, 0 or 1), others as is."""
    return np.dtype("uint8") if np.dtype(dtype) == np.bool_ else np.dtype(dtype)

CODECS: dict[int, str] = {0: "raw", 1: "zstd", 2: "rans", 3: "lut"}
CODEC_CODES: dict[str, int] = {name: code for code, name in CODECS.items()}

LAYOUTS: dict[int, str] = {0: "row_major", 1: "oihw", 2: "ohwi", 3: "hwio", 4: "oi", 5: "io"}
LAYOUT_CODES: dict[str, int] = {name: code for code, name in LAYOUTS.items()}

QUANT_NONE, QUANT_PER_TENSOR, QUANT_PER_CHANNEL = 0, 1, 2

# rANS constants (see FORMAT.md, "rans").
RANS_L = 1 << 16
RANS_MAX_SCALE_BITS = 12
RANS_MAX_LANES = 64
RANS_MAX_LANE_SYMBOLS = 65536
RANS_SHUFFLE, RANS_CLASSES = 1, 2  # bits of the rans header's flags
RANS_MAX_CLASSES = 16
LUT_MAX_K = 64
LUT_MAX_BITS = 6

#: Largest decoded/encoded ratio a valid payload can have, per codec (FORMAT.md, "Errors").
MAX_RATIO = {"raw": 1, "zstd": 1 << 20, "rans": 1 << 14, "lut": 1 << 17}


def align_up(n: int, a: int = ALIGN) -> int:
    """Round ``n`` up to a multiple of ``a``."""
    return (n + a - 1) // a * a
