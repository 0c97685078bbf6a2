"""Pack files: many sealed blobs in one object, so S3 sees few, large requests.

Layout of a pack (all integers little-endian)::

    sealed blob 0 | sealed blob 1 | ... | sealed header | u32 sealed-header length

The header lists, for every blob, its type, id, offset and sealed length and
the length of its plaintext. It is sealed too (associated data ``pack-header``),
so a pack reveals only how many bytes it holds. A pack's name is the BLAKE3 hash
of its whole content, which lets ``check --read-data`` verify it before opening.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

import blake3

from cloudkeep.repository.crypto import ID_SIZE, Sealer

HEADER_AAD = b"pack-header"
ENTRY = struct.Struct("<B32sIII")
_TRAILER = struct.Struct("<I")


class BlobType(IntEnum):
    DATA = 0  # file content
    TREE = 1  # lists of chunk ids


class PackFormatError(Exception):
    """A pack's header is missing, truncated or inconsistent."""


class PackEntry(NamedTuple):
    """One blob in a pack (a tuple: hundreds of thousands are made per backup)."""

    type: BlobType
    blob_id: bytes
    offset: int
    length: int
    raw_length: int


def encode_header(entries: list[PackEntry]) -> bytes:
    return b"".join(
        ENTRY.pack(e.type, e.blob_id, e.offset, e.length, e.raw_length) for e in entries
    )


def decode_header(raw: bytes) -> list[PackEntry]:
    if len(raw) % ENTRY.size:
        raise PackFormatError("pack header has a partial entry")
    # Index loading decodes every entry of every index at each start: no per-entry
    # enum conversion (PackEntry.type compares equal to BlobType members anyway).
    return list(map(PackEntry._make, ENTRY.iter_unpack(raw)))


def pack_id_of(content: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(content).hexdigest()


def pack_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


class PackBuilder:
    """Accumulates sealed blobs until the pack is big enough to upload.

    Blobs are kept as they are and joined once at the end: one allocation of
    the pack's size instead of a growing buffer that is copied again and again.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0
        self.entries: list[PackEntry] = []

    def add(self, blob_type: BlobType, blob_id: bytes, sealed: bytes, raw_length: int) -> None:
        assert len(blob_id) == ID_SIZE
        self.entries.append(PackEntry(blob_type, blob_id, self.size, len(sealed), raw_length))
        self._parts.append(sealed)
        self.size += len(sealed)

    def finish(self, sealer: Sealer) -> tuple[str, bytes]:
        """The pack's id and its bytes, header appended."""
        header = sealer.seal(encode_header(self.entries), HEADER_AAD)
        self._parts += [header, _TRAILER.pack(len(header))]
        content = b"".join(self._parts)
        self._parts = []
        return pack_id_of(content), content


def read_header(content: bytes, sealer: Sealer) -> list[PackEntry]:
    """Parse the header of a whole downloaded pack."""
    if len(content) < _TRAILER.size:
        raise PackFormatError("pack shorter than its trailer")
    (header_len,) = _TRAILER.unpack_from(content, len(content) - _TRAILER.size)
    start = len(content) - _TRAILER.size - header_len
    if start < 0:
        raise PackFormatError("pack header length points before the start of the pack")
    entries = decode_header(sealer.open(content[start : len(content) - _TRAILER.size], HEADER_AAD))
    for entry in entries:
        if entry.offset + entry.length > start:
            raise PackFormatError("pack header entry points past the blob area")
    return entries
