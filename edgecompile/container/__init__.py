"""The ``.ecw`` weight container: format, codecs (raw, zstd, rans, lut), reader and writer.

Ships to boards: imports numpy and the standard library only (``zstandard`` lazily, for the zstd
codec). Layout: ``runtime/FORMAT.md`` and ``format.py``.
"""
from .cluster import kmeans_cluster
from .errors import (BadMagic, ChecksumMismatch, CodecUnavailable, ContainerError, CorruptHeader, CorruptStream,
                     Truncated, UnknownCodec, UnsupportedVersion)
from .reader import ContainerReader, read_container
from .records import QuantInfo, TensorRecord
from .writer import DEFAULT_CODECS, encode_container, write_container

__all__ = [
    "BadMagic", "ChecksumMismatch", "CodecUnavailable", "ContainerError", "ContainerReader", "CorruptHeader",
    "CorruptStream", "DEFAULT_CODECS", "QuantInfo", "TensorRecord", "Truncated", "UnknownCodec",
    "UnsupportedVersion", "encode_container", "kmeans_cluster", "read_container", "write_container",
]
