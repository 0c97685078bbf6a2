"""Loading many blobs with few requests (as restic's ``LoadBlobsFromPack``).

Wanted blobs are grouped by the frame holding them, frames by pack, and nearby
frames of a pack merged into one ranged read (``plan_ranges``): gaps and range
sizes are bounded, so a read never fetches much that is not wanted. Each range
is fetched once, its frames opened in one batch, and every wanted blob re-hashed
against its keyed id before it is handed out: the member table is authenticated,
but any key holder can write a frame whose table lies about its content.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from cloudkeep.repository.frames import (
    MAX_SEALED_FRAME_SIZE,
    BlobDamaged,
    FrameCodec,
    FrameDamaged,
    OpenedFrame,
)
from cloudkeep.repository.index import FrameBlobs
from cloudkeep.repository.packs import pack_name
from cloudkeep.storage.base import ObjectNotFound, Storage, StorageError, StorageUnavailable

#: Largest ranged read that merges several frames (a single frame may be larger).
MAX_RANGE_BYTES = 2 * 1024 * 1024
#: Largest unwanted gap read between two wanted frames of one range.
MAX_RANGE_GAP = 512 * 1024
#: Ranges fetched at once; at most twice as many are held, fetched or waiting.
LOAD_THREADS = 4

#: Receives each blob that cannot be loaded; without one, the first damage raises.
DamageFn = Callable[[BlobDamaged], None]


class PackRange(NamedTuple):
    """One ranged read of a pack: ``length`` bytes from ``offset``, covering ``frames``."""

    pack_id: str
    offset: int
    length: int
    frames: list[FrameBlobs]


class LoadedFrame(NamedTuple):
    """A fetched frame: as stored, opened, and the wanted blobs of it that verified.

    ``frame.blobs`` are (blob id, offset in the opened frame, length) of the blobs
    re-hashed against their ids: ``opened.data[offset : offset + length]`` is each one.
    """

    frame: FrameBlobs
    sealed: memoryview
    opened: OpenedFrame


def plan_ranges(
    frames: Iterable[FrameBlobs],
    max_bytes: int = MAX_RANGE_BYTES,
    max_gap: int = MAX_RANGE_GAP,
) -> list[PackRange]:
    """Frames merged into ranged reads: per pack (in order of first appearance), by offset.

    A range ends where the next frame lies more than ``max_gap`` past it or would
    make it longer than ``max_bytes``.
    """
    by_pack: dict[str, list[FrameBlobs]] = {}
    for frame in frames:
        by_pack.setdefault(frame.pack_id, []).append(frame)
    ranges: list[PackRange] = []
    for pack_id, pack_frames in by_pack.items():
        pack_frames.sort(key=lambda frame: frame.offset)
        current: list[FrameBlobs] = []
        start = end = 0
        for frame in pack_frames:
            if current and (
                frame.offset - end > max_gap or frame.offset + frame.length - start > max_bytes
            ):
                ranges.append(PackRange(pack_id, start, end - start, current))
                current = []
            if not current:
                start = end = frame.offset
            current.append(frame)
            end = max(end, frame.offset + frame.length)
        ranges.append(PackRange(pack_id, start, end - start, current))
    return ranges


def _damaged(frames: list[FrameBlobs], reason: str, damage: DamageFn | None) -> None:
    for frame in frames:
        for blob_id, _, _ in frame.blobs:
            error = BlobDamaged(blob_id, reason)
            if damage is None:
                raise error
            damage(error)


def fetch_range(storage: Storage, span: PackRange) -> bytes:
    """The bytes of one range; ``BlobDamaged`` (for its first blob) if the pack is
    missing or shorter than the index says."""
    first = span.frames[0].blobs[0][0] if span.frames[0].blobs else b""
    pack = span.pack_id[:16]
    if any(frame.length > MAX_SEALED_FRAME_SIZE for frame in span.frames):
        raise BlobDamaged(first, f"its frame in pack {pack} is larger than any frame may be")
    try:
        data = storage.get(pack_name(span.pack_id), span.offset, span.length)
    except ObjectNotFound as exc:
        raise BlobDamaged(first, f"pack {pack} is missing") from exc
    except StorageUnavailable:
        raise
    except StorageError as exc:  # a range past the end: the pack was cut short
        raise BlobDamaged(first, f"pack {pack} is truncated") from exc
    if len(data) != span.length:
        raise BlobDamaged(first, f"pack {pack} is truncated")
    return data


def open_range(
    codec: FrameCodec,
    span: PackRange,
    data: bytes | memoryview,
    damage: DamageFn | None = None,
    data_offset: int | None = None,
) -> list[LoadedFrame]:
    """The frames of a fetched range (``data``), opened, their wanted blobs re-hashed.

    ``data`` starts at ``data_offset`` of the pack (``span.offset`` unless given:
    0 for a whole pack). A damaged frame or blob goes to ``damage`` (raised
    without one) and is left out.
    """
    view = memoryview(data)
    base = span.offset if data_offset is None else data_offset
    sealed = [view[f.offset - base : f.offset - base + f.length] for f in span.frames]
    opened: list[OpenedFrame | None]
    try:
        opened = list(codec.open_frames(sealed))
    except FrameDamaged:
        opened = []
        for frame, piece in zip(span.frames, sealed, strict=True):
            try:
                opened.append(codec.open_frame(piece))
            except FrameDamaged as exc:
                reason = f"frame at {frame.offset} damaged ({exc}) in pack {span.pack_id[:16]}"
                _damaged([frame], reason, damage)
                opened.append(None)
    loaded: list[LoadedFrame] = []
    for frame, piece, plain in zip(span.frames, sealed, opened, strict=True):
        if plain is None:
            continue
        if codec.frame_holds(plain, frame.blobs):
            loaded.append(LoadedFrame(frame, piece, plain))
            continue
        good: list[tuple[bytes, int, int]] = []
        for member in frame.blobs:
            try:
                codec.blob_in_frame(plain, *member, rehash=True)
            except BlobDamaged as exc:
                error = BlobDamaged(member[0], f"{exc.reason} in pack {span.pack_id[:16]}")
                if damage is None:
                    raise error from exc
                damage(error)
                continue
            good.append(member)
        if len(good) < len(frame.blobs):
            frame = frame._replace(blobs=good)
        loaded.append(LoadedFrame(frame, piece, plain))
    return loaded


def load_range(
    storage: Storage, codec: FrameCodec, span: PackRange, damage: DamageFn | None = None
) -> list[LoadedFrame]:
    """``fetch_range`` then ``open_range``: one request, every wanted blob verified."""
    try:
        data = fetch_range(storage, span)
    except BlobDamaged as exc:
        _damaged(span.frames, exc.reason, damage)
        return []
    return open_range(codec, span, data, damage)


def load_frames(
    storage: Storage,
    codec: FrameCodec,
    frames: Iterable[FrameBlobs],
    damage: DamageFn | None = None,
    threads: int = LOAD_THREADS,
) -> Iterator[LoadedFrame]:
    """Every frame fetched with few ranged reads, ``threads`` at a time, in range order.

    At most ``2 * threads`` ranges (each at most ``MAX_RANGE_BYTES``, or one frame)
    are held at once, so memory stays bounded however many frames are wanted.
    Stopping the iteration cancels the reads not started.
    """
    ranges = iter(plan_ranges(frames))
    pending: deque[Future[list[LoadedFrame]]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="load") as pool:
        try:
            for span in ranges:
                pending.append(pool.submit(load_range, storage, codec, span, damage))
                if len(pending) >= 2 * threads:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def load_blobs(
    storage: Storage,
    codec: FrameCodec,
    located: list[FrameBlobs],
    damage: DamageFn | None = None,
    threads: int = LOAD_THREADS,
) -> Iterator[tuple[bytes, memoryview]]:
    """(blob id, content) of every located blob, each re-hashed against its id."""
    for loaded in load_frames(storage, codec, located, damage, threads):
        data = loaded.opened.data
        for blob_id, inner_offset, raw_length in loaded.frame.blobs:
            yield blob_id, data[inner_offset : inner_offset + raw_length]
