"""Exceptions raised by the ``.ecw`` readers and writers; one class per kind of bad input."""
from __future__ import annotations

from ..errors import CorruptError


class ContainerError(CorruptError, ValueError):
    """Base class: the container or a request about it is invalid (exit 4 from the CLI)."""


class BadMagic(ContainerError):
    """The bytes do not start with the ``ECW1`` magic: not an .ecw file."""


class UnsupportedVersion(ContainerError):
    """The container's format version is not one this reader knows."""


class UnknownCodec(ContainerError):
    """A tensor uses a codec id (or name) this reader does not know."""


class CodecUnavailable(UnknownCodec):
    """The codec is known but its library is missing here (zstd without ``zstandard``)."""


class Truncated(ContainerError):
    """The file is shorter than its header says."""


class CorruptHeader(ContainerError):
    """A header or table field is out of range: overflowing sizes, offsets outside the file."""


class ChecksumMismatch(ContainerError):
    """A CRC-32 (of the metadata or of a decoded tensor) does not match."""


class CorruptStream(ContainerError):
    """A payload is malformed: bad tables, block sizes, stream overrun or bad final state."""
