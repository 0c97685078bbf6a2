"""Pack files: many sealed frames of blobs in one object, so S3 sees few, large requests.

Layout of a pack (all integers little-endian)::

    sealed frame 0 | sealed frame 1 | ... | sealed header | u32 sealed-header length

A frame is several consecutive blobs compressed and sealed together: one zstd
call and one AES-GCM call per ~256 KiB instead of per 8 KiB database chunk,
which compresses better and costs far less CPU. Deduplication stays per blob.
The header lists, for every blob, its type, id, the offset and sealed length of
its frame, and where the blob lies in the frame's plaintext. It is sealed too
(associated data ``pack-header``), so a pack reveals only how many bytes it
holds. A pack's name is the BLAKE3 hash of its whole content, which lets
``check --read-data`` verify it before opening.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from itertools import starmap
from typing import NamedTuple

import blake3

from cloudkeep.direct_io import aligned_buffer, fill
from cloudkeep.repository.crypto import Sealer

HEADER_AAD = b"pack-header"
ENTRY = struct.Struct("<B32sIIII")
_TRAILER = struct.Struct("<I")
#: A header entry per blob, and every blob costs its frame at least a 36-byte member
#: entry: a 4 MiB pack has a header of at most ~6 MiB. 64 MiB bounds a hostile trailer.
MAX_HEADER_SIZE = 64 * 1024 * 1024


class BlobType(IntEnum):
    DATA = 0  # file content
    TREE = 1  # lists of chunk ids


class PackFormatError(Exception):
    """A pack's header is missing, truncated or inconsistent."""


class PackEntry(NamedTuple):
    """One blob in a pack (a tuple: hundreds of thousands are made per backup).

    ``offset`` and ``length`` locate the sealed frame holding the blob; the blob
    is ``raw_length`` bytes at ``inner_offset`` in that frame's plaintext.
    """

    type: BlobType
    blob_id: bytes
    offset: int
    length: int
    inner_offset: int
    raw_length: int


class FrameMember(NamedTuple):
    """A blob's place in a frame's plaintext."""

    blob_id: bytes
    inner_offset: int
    raw_length: int


def encode_header(entries: list[PackEntry]) -> bytes:
    return b"".join(starmap(ENTRY.pack, entries))


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


def frames_of(entries: list[PackEntry]) -> dict[tuple[int, int], list[PackEntry]]:
    """A pack's entries grouped by the frame (offset, length) that holds them."""
    frames: dict[tuple[int, int], list[PackEntry]] = {}
    for entry in entries:
        frames.setdefault((entry.offset, entry.length), []).append(entry)
    return frames


class PackBuilder:
    """Accumulates sealed frames until the pack is big enough to upload.

    Frames are kept as they are and joined once at the end: one allocation of
    the pack's size instead of a growing buffer that is copied again and again.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0
        self.entries: list[PackEntry] = []

    def add_frame(
        self, blob_type: BlobType, sealed: list[bytes], members: list[FrameMember]
    ) -> None:
        """Append a sealed frame, given as the pieces that make it up, in order."""
        offset, length = self.size, sum(map(len, sealed))
        self.entries += [
            PackEntry(blob_type, blob_id, offset, length, inner_offset, raw_length)
            for blob_id, inner_offset, raw_length in members
        ]
        self._parts += sealed
        self.size += length

    def finish(self, sealer: Sealer) -> tuple[str, memoryview]:
        """The pack's id and its bytes, header appended.

        The bytes are assembled in this thread's page-aligned buffer (valid until
        the thread's next pack): hashed there in one call, they are written to a
        local store with ``O_DIRECT`` straight from it, with no further copy (and
        one hash call, not one per piece: each call releases and retakes the GIL).
        """
        header = sealer.seal(encode_header(self.entries), HEADER_AAD)
        parts, self._parts = [*self._parts, header, _TRAILER.pack(len(header))], []
        size = sum(map(len, parts))
        content = aligned_buffer(size)[:size]
        fill(content, parts)
        return blake3.blake3(content).hexdigest(), content


def header_start(pack_size: int, header_len: int) -> int:
    """Where the sealed header of a pack of ``pack_size`` bytes starts, checked.

    ``header_len`` comes from the pack's unauthenticated trailer: it must fit in
    the pack and stay under ``MAX_HEADER_SIZE`` before anything is read or allocated.
    """
    if header_len > MAX_HEADER_SIZE:
        raise PackFormatError(f"pack header length {header_len:,} is larger than any header")
    start = pack_size - _TRAILER.size - header_len
    if start < 0:
        raise PackFormatError("pack header length points before the start of the pack")
    return start


def read_header(content: bytes, sealer: Sealer) -> list[PackEntry]:
    """Parse the header of a whole downloaded pack."""
    if len(content) < _TRAILER.size:
        raise PackFormatError("pack shorter than its trailer")
    (header_len,) = _TRAILER.unpack_from(content, len(content) - _TRAILER.size)
    start = header_start(len(content), header_len)
    entries = decode_header(sealer.open(content[start : len(content) - _TRAILER.size], HEADER_AAD))
    for entry in entries:
        if entry.offset + entry.length > start:
            raise PackFormatError("pack header entry points past the blob area")
    return entries
