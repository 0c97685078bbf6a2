"""Index files: which pack holds each blob, so restores fetch byte ranges only.

An index file lists packs and the entries of their headers. Every backup writes
index files for the packs it uploaded (before its manifest, so a manifest
never refers to an unindexed blob); prune replaces them with fresh ones.
Encoded as a compact binary table, zstd-compressed and sealed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, KeysView, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import zstandard

from cloudkeep.repository.packs import ENTRY, PackEntry, decode_header, encode_header
from cloudkeep.repository.untrusted import MAX_PLAIN_SIZE, DecompressionFailed, decompress_bounded

_MAGIC = b"CKIX\x02"
_COUNT = struct.Struct("<I")
_U32 = 0xFFFFFFFF


class IndexFormatError(Exception):
    """An index file does not decode."""


@dataclass(slots=True)
class IndexFile:
    packs: dict[str, list[PackEntry]] = field(default_factory=dict)

    def encode(self) -> bytes:
        parts = [_MAGIC, _COUNT.pack(len(self.packs))]
        for pack_id, entries in self.packs.items():
            parts += [bytes.fromhex(pack_id), _COUNT.pack(len(entries)), encode_header(entries)]
        return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))

    @classmethod
    def decode(cls, compressed: bytes) -> IndexFile:
        return cls({pack_id: decode_header(raw) for pack_id, raw in cls.scan(compressed)})

    @staticmethod
    def scan(compressed: bytes) -> list[tuple[str, bytes]]:
        """(pack id, encoded header entries) pairs, validated but not decoded into objects."""
        try:
            raw = decompress_bounded(compressed, MAX_PLAIN_SIZE["index"])
        except DecompressionFailed as exc:
            raise IndexFormatError(f"index: {exc}") from exc
        if not raw.startswith(_MAGIC):
            raise IndexFormatError("index has an unknown format marker")
        pos = len(_MAGIC)
        packs: list[tuple[str, bytes]] = []
        try:
            (pack_count,) = _COUNT.unpack_from(raw, pos)
            pos += _COUNT.size
            if pack_count * (32 + _COUNT.size) > len(raw) - pos:
                raise IndexFormatError("index counts more packs than it holds")
            for _ in range(pack_count):
                pack_id = raw[pos : pos + 32].hex()
                (entry_count,) = _COUNT.unpack_from(raw, pos + 32)
                pos += 32 + _COUNT.size
                end = pos + entry_count * ENTRY.size
                if end > len(raw):
                    raise IndexFormatError("index is truncated")
                packs.append((pack_id, raw[pos:end]))
                pos = end
        except struct.error as exc:
            raise IndexFormatError("index is truncated") from exc
        if pos != len(raw):
            raise IndexFormatError("index has trailing bytes")
        return packs


class BlobLocation(NamedTuple):
    """Where a blob is (a tuple: a restore looks up one per chunk).

    ``offset``/``length`` locate its sealed frame in the pack; the blob is
    ``raw_length`` bytes at ``inner_offset`` of the frame's plaintext.
    """

    pack_id: str
    offset: int
    length: int
    inner_offset: int
    raw_length: int


class FrameBlobs(NamedTuple):
    """One frame and the wanted blobs in it: (blob id, offset in frame, length) each."""

    pack_id: str
    offset: int
    length: int
    blobs: list[tuple[bytes, int, int]]


class MasterIndex:
    """Every known blob → its pack, in a compact form (one int per blob).

    Backups hold hundreds of thousands of blobs: an int per blob is far smaller
    than a tuple or an object per blob.
    """

    def __init__(self) -> None:
        self._pack_ids: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self._blobs: dict[bytes, int] = {}

    @classmethod
    def of(cls, packs: Mapping[str, Iterable[PackEntry]]) -> MasterIndex:
        """An index naming exactly these packs."""
        index = cls()
        for pack_id, entries in packs.items():
            index.add_pack(pack_id, entries)
        return index

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def ids(self) -> KeysView[bytes]:
        """The known blob ids: tests of many ids against it make no method call each."""
        return self._blobs.keys()

    def pack_ids(self) -> list[str]:
        """The packs the index names."""
        return list(self._pack_ids)

    def add_pack(self, pack_id: str, entries: Iterable[PackEntry | tuple]) -> None:
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = len(self._pack_ids)
            self._pack_ids.append(pack_id)
            self._pack_numbers[pack_id] = number
        blobs, base = self._blobs, number << 128
        for _type, blob_id, offset, length, inner_offset, raw_length in entries:
            if blob_id not in blobs:
                blobs[blob_id] = (
                    base | (offset << 96) | (length << 64) | (inner_offset << 32) | raw_length
                )

    def add_pack_encoded(self, pack_id: str, encoded_entries: bytes) -> None:
        """``add_pack`` straight from encoded header entries (no per-entry objects)."""
        self.add_pack(pack_id, ENTRY.iter_unpack(encoded_entries))

    def frames_of(self, blob_ids: Iterable[bytes]) -> list[FrameBlobs]:
        """The blobs grouped by the frame holding them, frames in order of first appearance.

        A restore locates every blob of a slice of its data at once: grouping on
        the packed ints makes no object per blob (half the planning CPU of
        ``lookup`` per blob). ``KeyError`` names the first blob not in the index.
        """
        blobs = self._blobs
        frames: dict[int, list[tuple[bytes, int, int]]] = {}
        for blob_id in blob_ids:
            packed = blobs[blob_id]
            frame = packed >> 64  # pack number, frame offset, frame length
            members = frames.get(frame)
            if members is None:
                frames[frame] = members = []
            members.append((blob_id, (packed >> 32) & _U32, packed & _U32))
        pack_ids = self._pack_ids
        return [
            FrameBlobs(pack_ids[frame >> 64], (frame >> 32) & _U32, frame & _U32, members)
            for frame, members in frames.items()
        ]

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        packed = self._blobs.get(blob_id)
        if packed is None:
            return None
        return BlobLocation(
            self._pack_ids[packed >> 128],
            (packed >> 96) & _U32,
            (packed >> 64) & _U32,
            (packed >> 32) & _U32,
            packed & _U32,
        )
