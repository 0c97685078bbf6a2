"""The frame codec: consecutive blobs compressed and sealed together.

A frame's plaintext is a member table (count, then blob id and length of each
member), a one-byte encoding (raw or zstd) and the payload. It is sealed with
associated data ``frame``; the table is authenticated with it, so only a key
holder can say which blobs a frame holds. Blobs are re-hashed against their
keyed ids wherever they are read: any key holder can write a lying table.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import zstandard

from cloudkeep.repository.crypto import NONCE_SIZE, OVERHEAD, DecryptionFailed, Sealer
from cloudkeep.repository.packs import FrameMember

#: zstd level 1 for new repositories: the negative levels store literals raw (float
#: vectors, text), level 1 entropy-codes them: a 5% smaller first backup for ~8% more
#: CPU (docs/performance.md, "Compression of the first backup").
DEFAULT_ZSTD_LEVEL = 1
#: The levels a writer steps through while the store takes data slower than it is
#: sealed (``PackWriter``), from the config's level up. On database pages at 256 KiB
#: frames each is smaller than the one below and slower; above 9 the speed falls
#: 3-10x for 1-3%, and two workers no longer feed a 100 Mbit/s link (docs/performance.md).
ADAPTIVE_LEVELS = (1, 3, 5, 7, 9)
#: ~256 KiB frames: a smaller store and far fewer zstd and AES-GCM calls than a
#: frame per chunk (docs/format.md).
FRAME_TARGET_SIZE = 256 * 1024
FRAME_AAD = b"frame"
MAX_FRAME_SIZE = 64 * 1024 * 1024  # far above the largest frame; bounds a hostile one
#: A frame stored as it is (incompressible) plus its member table: bounds a range read.
MAX_SEALED_FRAME_SIZE = 2 * MAX_FRAME_SIZE
_RAW, _ZSTD = 0, 1
#: A frame of one chunk this large (a plain file's) is first tried on samples:
#: incompressible content (media, archives, random) is stored raw without compressing it all.
TRIAL_MIN_SIZE = 64 * 1024
_TRIAL_SLICES, _TRIAL_SLICE = 4, 4096
#: Samples that zstd shrinks by less than this share mark their frame incompressible.
TRIAL_MIN_SAVING = 0.03
_COUNT = struct.Struct("<I")
_MEMBER = struct.Struct("<32sI")  # blob id, length: the frame's authenticated member table

#: A sealed frame as the pieces to write in order, and its members.
SealedFrame = tuple[list[bytes], list[FrameMember]]


class OpenedFrame(NamedTuple):
    """A decrypted, decompressed frame and its member table ((offset, id) -> length)."""

    data: memoryview
    table: dict[tuple[int, bytes], int]


class FrameDamaged(Exception):
    """A frame does not decrypt or decompress: every blob in it is lost."""


class BlobDamaged(Exception):
    """A blob failed verification: missing pack, bad ciphertext or wrong content hash."""

    def __init__(self, blob_id: bytes, reason: str) -> None:
        super().__init__(f"blob {blob_id.hex()[:16]}: {reason}")
        self.blob_id = blob_id
        self.reason = reason


class FrameCodec:
    """Seals and opens frames under one key; thread-safe (zstd contexts per thread).

    Frames are compressed at ``level``: the config's, raised by ``smaller`` while the
    store is what a backup waits on and lowered again by ``faster`` (as ``zstd
    --adapt`` does). A writer's choice only: frames of any level read alike.
    """

    def __init__(self, sealer: Sealer, zstd_level: int = DEFAULT_ZSTD_LEVEL) -> None:
        self.sealer = sealer
        self._base_level = zstd_level
        self._levels = (zstd_level, *(level for level in ADAPTIVE_LEVELS if level > zstd_level))
        self._step = 0
        self._local = threading.local()

    @property
    def level(self) -> int:
        return self._levels[self._step]

    def smaller(self) -> None:
        """Compress harder from the next frames on (up to the top of ``ADAPTIVE_LEVELS``)."""
        self._step = min(self._step + 1, len(self._levels) - 1)

    def faster(self) -> None:
        """Step back towards the config's level."""
        self._step = max(self._step - 1, 0)

    def _zstd(self, level: int) -> zstandard.ZstdCompressor:
        """This thread's compressor at ``level`` (zstd contexts are not thread-safe)."""
        compressors: dict[int, zstandard.ZstdCompressor] | None = getattr(self._local, "zstd", None)
        if compressors is None:
            compressors = self._local.zstd = {}
        compressor = compressors.get(level)
        if compressor is None:
            compressor = compressors[level] = zstandard.ZstdCompressor(level=level)
        return compressor

    def _unzstd(self) -> zstandard.ZstdDecompressor:
        decompressor = getattr(self._local, "unzstd", None)
        if decompressor is None:
            decompressor = self._local.unzstd = zstandard.ZstdDecompressor()
        return decompressor

    def seal_frames(
        self,
        blob_ids: list[bytes],
        chunks: list[bytes | memoryview],
        source: memoryview | None = None,
        offsets: list[int] | None = None,
    ) -> list[SealedFrame]:
        """Group consecutive blobs into frames, compress them all in one GIL-free call, seal.

        Returns (sealed frame as pieces to write in order, its members) pairs,
        blobs in their original order. When the chunks are slices of ``source``
        (chunk i at ``offsets[i]``, increasing, not overlapping), a frame of
        adjacent chunks is that slice of ``source`` instead of a joined copy.
        """
        groups: list[list[bytes | memoryview]] = []
        memberships: list[list[FrameMember]] = []
        spans: list[tuple[int, int]] = []  # (first chunk number, bytes) of each frame
        parts: list[bytes | memoryview] = []
        members: list[FrameMember] = []
        size = first = 0
        for number, (blob_id, chunk) in enumerate(zip(blob_ids, chunks, strict=True)):
            members.append(FrameMember(blob_id, size, len(chunk)))
            parts.append(chunk)
            size += len(chunk)
            if size >= FRAME_TARGET_SIZE:
                groups.append(parts)
                memberships.append(members)
                spans.append((first, size))
                parts, members, size, first = [], [], 0, number + 1
        if members:
            groups.append(parts)
            memberships.append(members)
            spans.append((first, size))
        raws = [
            _frame_bytes(group, span, source, offsets)
            for group, span in zip(groups, spans, strict=True)
        ]
        # zstd's batch call refuses empty inputs; frames failing the trial are not tried.
        tried = [
            bool(raw) and (len(group) > 1 or self._compressible(raw))
            for raw, group in zip(raws, groups, strict=True)
        ]
        worth: list[bytes | bytearray | memoryview] = [
            raw for raw, trying in zip(raws, tried, strict=True) if trying
        ]
        compressed = iter(
            self._zstd(self.level).multi_compress_to_buffer(worth, threads=1) if worth else ()
        )
        seal_parts = self.sealer.seal_parts
        nonces = os.urandom(NONCE_SIZE * len(raws))
        frames: list[SealedFrame] = []
        for number, (raw, frame_members, trying) in enumerate(
            zip(raws, memberships, tried, strict=True)
        ):
            packed = next(compressed) if trying else raw
            nonce = nonces[number * NONCE_SIZE : (number + 1) * NONCE_SIZE]
            table = _COUNT.pack(len(frame_members)) + b"".join(
                [_MEMBER.pack(blob_id, raw_length) for blob_id, _, raw_length in frame_members]
            )
            # zstd only when it pays: incompressible frames are stored as they are.
            body = [b"\x01", packed] if len(packed) < len(raw) else [b"\x00", raw]
            frames.append((seal_parts([table, *body], FRAME_AAD, nonce), frame_members))
        return frames

    def _compressible(self, chunk: bytes | memoryview) -> bool:
        """False when samples spread over a large chunk do not shrink: stored raw, untried.

        Only frames of one chunk are sampled: frames of several (database pages) are
        always tried whole, their float vectors incompressible but the text between not.
        """
        if len(chunk) < TRIAL_MIN_SIZE:
            return True
        view = memoryview(chunk)
        step = (len(view) - _TRIAL_SLICE) // (_TRIAL_SLICES - 1)
        sample = b"".join(
            [view[number * step : number * step + _TRIAL_SLICE] for number in range(_TRIAL_SLICES)]
        )
        compressed = self._zstd(self._base_level).compress(sample)
        return len(compressed) < len(sample) * (1 - TRIAL_MIN_SAVING)

    def open_frame(self, sealed: bytes | memoryview) -> OpenedFrame:
        """Decrypt and decompress one frame; its blobs are cut out by ``blob_in_frame``."""
        try:
            table, encoding, payload = split_frame(self.sealer.open(sealed, FRAME_AAD))
        except DecryptionFailed as exc:
            raise FrameDamaged(str(exc)) from exc
        if encoding == _RAW:
            return OpenedFrame(payload, table)
        try:
            data = self._unzstd().decompress(payload, max_output_size=MAX_FRAME_SIZE)
        except zstandard.ZstdError as exc:
            raise FrameDamaged(f"does not decompress: {exc}") from exc
        return OpenedFrame(memoryview(data), table)

    def open_frames(self, sealed_frames: Sequence[bytes | memoryview]) -> list[OpenedFrame]:
        """``open_frame`` for many: all zstd payloads decompressed in one GIL-free call.

        Thousands of per-frame GIL releases stall the other threads (convoy effect).
        On any failure the batch is redone frame by frame, to raise for the damaged one.
        """
        open_into = self.sealer.open_into
        try:
            plain = memoryview(bytearray(sum(len(s) - OVERHEAD for s in sealed_frames)))
            parts = []
            position = 0
            for sealed in sealed_frames:
                size = len(sealed) - OVERHEAD
                open_into(memoryview(sealed), FRAME_AAD, plain[position : position + size])
                parts.append(split_frame(plain[position : position + size]))
                position += size
            packed: list[bytes | bytearray | memoryview] = [
                payload for _, encoding, payload in parts if encoding == _ZSTD
            ]
            unpacked = (
                iter(self._unzstd().multi_decompress_to_buffer(packed, threads=1))
                if packed
                else iter(())
            )
            return [
                OpenedFrame(_view(next(unpacked)) if encoding == _ZSTD else payload, table)
                for table, encoding, payload in parts
            ]
        except (DecryptionFailed, FrameDamaged, zstandard.ZstdError, ValueError):
            return [self.open_frame(sealed) for sealed in sealed_frames]

    def frame_holds(self, frame: OpenedFrame, members: list[tuple[bytes, int, int]]) -> bool:
        """Whether every (blob id, offset, length) of ``members`` is in ``frame``'s member
        table there and hashes to its id: ``blob_in_frame(..., rehash=True)`` for many,
        without a call per blob; on False, that says which failed and why."""
        table = frame.table
        for blob_id, offset, length in members:
            if table.get((offset, blob_id)) != length:
                return False
        return self.sealer.blobs_match(frame.data, members)

    def blob_in_frame(
        self,
        frame: OpenedFrame,
        blob_id: bytes,
        inner_offset: int,
        raw_length: int,
        *,
        rehash: bool = False,
    ) -> memoryview:
        """A blob cut out of its opened frame.

        The frame's authenticated member table vouches for the blob: only a key
        holder can write a frame, and the writer hashed every blob it lists.
        ``rehash`` also recomputes the id, which only a writer bug could fail.
        """
        if frame.table.get((inner_offset, blob_id)) != raw_length:
            raise BlobDamaged(blob_id, "is not where the index says in its frame")
        data = frame.data[inner_offset : inner_offset + raw_length]
        if len(data) != raw_length:
            raise BlobDamaged(blob_id, "lies past the end of its frame")
        if rehash and self.sealer.blob_id(data) != blob_id:
            raise BlobDamaged(blob_id, "content does not match its id")
        return data


def _view(segment: Any) -> memoryview:
    """A view of one segment of zstd's batch output (a buffer its stubs do not declare)."""
    return memoryview(segment)


def _frame_bytes(
    group: list[bytes | memoryview],
    span: tuple[int, int],
    source: memoryview | None,
    offsets: list[int] | None,
) -> bytes | memoryview:
    if len(group) == 1:
        return group[0]
    if source is not None and offsets is not None:
        first, size = span
        start, end = offsets[first], offsets[first + len(group) - 1] + len(group[-1])
        if end - start == size:  # adjacent: the frame is already there
            return source[start:end]
    return b"".join(group)


def split_frame(
    plaintext: bytes | memoryview,
) -> tuple[dict[tuple[int, bytes], int], int, memoryview]:
    """(member table by offset, encoding, payload) of a decrypted frame."""
    view = memoryview(plaintext)
    try:
        (count,) = _COUNT.unpack_from(view)
        end = _COUNT.size + count * _MEMBER.size
        table: dict[tuple[int, bytes], int] = {}  # keyed by id too: empty blobs share offsets
        offset = 0
        for blob_id, raw_length in _MEMBER.iter_unpack(view[_COUNT.size : end]):
            table[offset, blob_id] = raw_length
            offset += raw_length
        encoding = view[end]
    except (struct.error, IndexError) as exc:
        raise FrameDamaged("member table is malformed") from exc
    if encoding not in (_RAW, _ZSTD):
        raise FrameDamaged("unknown payload encoding")
    payload = view[end + 1 :]
    if encoding == _ZSTD:
        # zstd allocates the size a frame header declares: bound it before.
        try:
            declared = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as exc:
            raise FrameDamaged(f"does not decompress: {exc}") from exc
        if declared > MAX_FRAME_SIZE:
            raise FrameDamaged(f"declares {declared:,} bytes, more than a frame may hold")
    return table, encoding, payload
