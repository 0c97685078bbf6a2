"""Index files: which pack holds each blob, so restores fetch byte ranges only.

An index file lists packs and the entries of their headers. Every backup writes
index files for the packs it uploaded (before its manifest, so a manifest
never refers to an unindexed blob); prune replaces them with fresh ones.
Encoded as a compact binary table, zstd-compressed and sealed.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import zstandard

from cloudkeep import platform
from cloudkeep.repository.crypto import ID_SIZE
from cloudkeep.repository.packs import ENTRY, PackEntry, decode_header, encode_header
from cloudkeep.repository.untrusted import MAX_PLAIN_SIZE, DecompressionFailed, decompress_bounded

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

_MAGIC = b"CKIX\x02"
_COUNT = struct.Struct("<I")
_PLACE = struct.Struct("<III")  # frame number, inner offset, size: a blob's row of ``_locs``
#: Blobs added pack by pack wait in a dict (~3 MiB) before a merge into the arrays.
RECENT_MAX = 16384
#: Entries the arrays are reserved for beyond their need (address space, not memory).
_RESERVE = 1 << 22
#: Entries a merge moves per step (the only copy it makes).
_MERGE_BLOCK = 1 << 16


class IndexFormatError(Exception):
    """An index file does not decode."""


@dataclass(slots=True)
class IndexFile:
    """Packs and their header entries; ``encoded`` holds packs whose entries stay
    encoded (a backup's writer: 49 bytes a blob rather than a tuple)."""

    packs: dict[str, list[PackEntry]] = field(default_factory=dict)
    encoded: dict[str, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        tables = [(p, encode_header(e)) for p, e in self.packs.items()]
        tables += self.encoded.items()
        parts = [_MAGIC, _COUNT.pack(len(tables))]
        for pack_id, raw in tables:
            parts += [bytes.fromhex(pack_id), _COUNT.pack(len(raw) // ENTRY.size), raw]
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


def numpy_module() -> ModuleType:
    """numpy, imported on first use (a command that builds no index never pays it),
    with one BLAS thread: nothing here uses BLAS, and OpenBLAS's idle workers spin
    after the import."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy

    return numpy


def prepare() -> None:
    """Import numpy in a thread of its own, partly while other threads wait on I/O,
    when an index will be built soon."""
    if "numpy" not in sys.modules:
        threading.Thread(target=numpy_module, daemon=True).start()


class MasterIndex:
    """Every known blob → its pack and place, in sorted arrays (44 bytes a blob, 12 a frame).

    The ids sit in one sorted array (their first 8 bytes as a big-endian key, the
    other 24 beside it) and the places in another (frame number, offset in the
    frame, size), the frames (pack number, offset, length) in a third, once each
    however many blobs they hold: no Python object per blob,
    and a batch of ids is found with one vectorized binary search. A hit compares
    the whole 32-byte id: two ids sharing a prefix (a key holder can make them)
    never stand for each other, and as the arrays are in order of the whole id,
    any number of them costs a lookup a binary search among them. Blobs added
    pack by pack (a backup's uploads) wait in a small dict and are merged in
    batches, in place. The arrays are anonymous memory maps reserved larger than
    needed: pages not written yet cost no memory, so growing copies nothing and
    no merge holds a second index. The first location added for an id is the one
    kept.

    Without ``locations`` it holds the ids only (32 bytes a blob): enough for a
    backup, which only asks whether blobs are stored (``missing``, ``in``);
    ``frames_of`` and ``lookup`` then raise ``LookupError``. With a ``spill`` folder
    too, the blobs added pack by pack (the backup's own) cost 12 bytes each in
    memory, their whole ids kept in a file there (see ``_SpilledIds``).
    """

    def __init__(self, *, locations: bool = True, spill: Path | None = None) -> None:
        self._width = _PLACE.size // 4 if locations else 0  # uint32 columns of ``_locs``
        self._pack_ids: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self._n = 0  # entries in the sorted arrays
        self._keys: NDArray[np.uint64] | None = None  # first 8 id bytes, big-endian
        self._rest: NDArray[np.void] | None = None  # the other 24 bytes
        self._locs: NDArray[np.uint32] | None = None  # (n, width): see ``_PLACE``
        self._frames: NDArray[np.uint32] | None = None  # (frames, 3): pack, offset, length
        self._frame_count = 0
        self._recent: dict[bytes, bytes] = {}  # id → ``_PLACE`` packed
        self._spilled: _SpilledIds | None = None
        self._spill_stopped = False  # the file could not be written: new ids stay in memory
        if spill is not None and not locations:
            with contextlib.suppress(OSError):  # a folder it cannot write: ids stay in memory
                self._spilled = _SpilledIds(spill)

    @classmethod
    def of(cls, packs: Mapping[str, Iterable[PackEntry]]) -> MasterIndex:
        """An index naming exactly these packs."""
        index = cls()
        index.add_packs_encoded(
            (pack_id, b"".join(ENTRY.pack(*entry) for entry in entries))
            for pack_id, entries in packs.items()
        )
        return index

    def __len__(self) -> int:
        self._merge_recent()
        return self._n + (len(self._spilled) if self._spilled is not None else 0)

    def __contains__(self, blob_id: object) -> bool:
        return isinstance(blob_id, bytes) and not self.missing([blob_id])

    def missing(self, blob_ids: Sequence[bytes]) -> list[int]:
        """Positions in ``blob_ids`` of the ids the index does not name (one search)."""
        recent = self._recent
        absent = (self._positions(blob_ids) < 0).nonzero()[0].tolist() if self._n else None
        unknown = [
            at
            for at in (range(len(blob_ids)) if absent is None else absent)
            if blob_ids[at] not in recent
        ]
        if self._spilled is None or not unknown:
            return unknown
        return self._spilled.missing(blob_ids, unknown)

    def pack_ids(self) -> list[str]:
        """The packs the index names."""
        return list(self._pack_ids)

    def _number(self, pack_id: str) -> int:
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = len(self._pack_ids)
            self._pack_ids.append(pack_id)
            self._pack_numbers[pack_id] = number
        return number

    def add_pack(self, pack_id: str, entries: Iterable[PackEntry | tuple]) -> None:
        number, recent = self._number(pack_id), self._recent
        if not self._width:
            recent.update((entry[1], b"") for entry in entries if entry[1] not in recent)
        else:
            pack = _PLACE.pack
            frames: dict[tuple[int, int], int] = {}
            first = self._frame_count
            for _type, blob_id, offset, length, inner_offset, raw_length in entries:
                frame = frames.setdefault((offset, length), first + len(frames))
                if blob_id not in recent:
                    recent[blob_id] = pack(frame, inner_offset, raw_length)
            self._add_frames([(number, offset, length) for offset, length in frames])
        if len(recent) >= RECENT_MAX:
            self._merge_recent()

    def add_pack_encoded(self, pack_id: str, encoded_entries: bytes) -> None:
        """``add_pack`` straight from encoded header entries (no per-entry objects)."""
        self.add_packs_encoded([(pack_id, encoded_entries)])

    def add_packs_encoded(self, packs: Iterable[tuple[str, bytes]]) -> None:
        """``add_pack_encoded`` for many packs: decoded into the arrays as they come,
        then sorted and merged once (loading an index holds no per-entry object)."""
        self._merge_recent()
        start = end = self._n
        for pack_id, encoded in packs:
            if len(encoded) % ENTRY.size:
                raise IndexFormatError("pack header has a partial entry")
            number = self._number(pack_id)
            if not encoded:
                continue
            np = numpy_module()  # here: an empty store's index needs no numpy

            entries = np.frombuffer(encoded, _entry_dtype())
            count = len(entries)
            self._reserve(end, end + count)
            keys, rest, locs = self._arrays()
            keys[end : end + count] = entries["key"]
            rest[end : end + count] = entries["rest"]
            if self._width:
                loc = entries["loc"]  # frame offset, frame length, inner offset, size
                # A pack's header lists the blobs of a frame one after another.
                starts = np.ones(count, bool)
                starts[1:] = (loc[1:, :2] != loc[:-1, :2]).any(axis=1)
                locs[end : end + count, 0] = np.cumsum(starts) + (self._frame_count - 1)
                locs[end : end + count, 1:] = loc[:, 2:]
                frame_rows = np.empty((int(starts.sum()), 3), np.uint32)
                frame_rows[:, 0] = number
                frame_rows[:, 1:] = loc[starts, :2]
                self._add_frames(frame_rows)
            end += count
        self._settle(start, end)

    def _merge_recent(self) -> None:
        recent = self._recent
        if not recent:
            return
        if self._spilled is not None and not self._spill_stopped:
            added, self._recent = list(recent), {}
            absent = (
                (self._positions(added) < 0).nonzero()[0].tolist()
                if self._n
                else list(range(len(added)))
            )
            unknown = [added[at] for at in self._spilled.missing(added, absent)]
            try:
                self._spilled.add(b"".join(unknown))
                return
            except OSError:
                # A full disk must not fail the backup: what the file holds stays
                # valid, and these ids and every later one are held in memory.
                self._spill_stopped = True
                recent = self._recent = dict.fromkeys(unknown, b"")
        np = numpy_module()

        start = end = self._n
        self._reserve(end, end + len(recent))
        keys, rest, locs = self._arrays()
        ids = np.frombuffer(b"".join(recent), _id_dtype())
        end += len(ids)
        keys[start:end] = ids["key"]
        rest[start:end] = ids["rest"]
        if self._width:
            locs[start:end] = np.frombuffer(b"".join(recent.values()), np.uint32).reshape(-1, 3)
        self._recent = {}
        self._settle(start, end)

    def _settle(self, start: int, end: int) -> None:
        """Sort the unsorted entries at [start, end), drop the ids already known
        (the first location wins) and merge them into the sorted [0, start)."""
        if end == start:
            return
        np = numpy_module()

        keys, rest, locs = self._arrays()
        new_keys, new_rest = keys[start:end], rest[start:end]
        order = np.argsort(new_keys, kind="stable")
        sorted_keys = new_keys[order]
        same_key = sorted_keys[1:] == sorted_keys[:-1]
        if same_key.any() and not (new_rest[order[1:]] == new_rest[order[:-1]])[same_key].all():
            # Ids sharing their first 8 bytes only: order by the whole id, so equal
            # ids are neighbours (the sort is stable: the first added comes first).
            words = new_rest.view(">u8").reshape(-1, 3)
            order = np.lexsort((words[:, 2], words[:, 1], words[:, 0], new_keys))
            sorted_keys = new_keys[order]
        del same_key
        # Column by column: the only copy is one column of the new entries.
        for column in (new_rest.view(np.uint64).reshape(-1, 3), locs[start:end]):
            for part in range(column.shape[1]):
                column[:, part] = column[order, part]
        new_keys[:] = sorted_keys
        del order, sorted_keys
        keep = np.ones(end - start, bool)
        keep[1:] = ~((new_keys[1:] == new_keys[:-1]) & (new_rest[1:] == new_rest[:-1]))
        if start:
            keep &= self._find(new_keys, new_rest) < 0
        if self._spilled is not None and len(self._spilled):
            ids = np.empty(end - start, _id_dtype())
            ids["key"], ids["rest"] = new_keys, new_rest
            raw = ids.tobytes()
            listed = [raw[at : at + ID_SIZE] for at in range(0, len(raw), ID_SIZE)]
            # Loaded after this index spilled ids (never in a backup): those stay there.
            spilled = np.ones(len(listed), bool)
            spilled[self._spilled.missing(listed, list(range(len(listed))))] = False
            keep &= ~spilled
        if not keep.all():
            kept = int(keep.sum())
            for kept_column in (new_keys, new_rest, locs[start:end]):
                kept_column[:kept] = kept_column[keep]
            end = start + kept
        if 0 < start < end:
            self._merge(start, end)
        self._n = end

    def _merge(self, start: int, end: int) -> None:
        """Merge the sorted entries at [start, end) into the sorted [0, start), in place.

        Filled from the back a block at a time: the old entries a block takes are
        copied out first, and no entry still to be placed lies under a block.
        """
        np = numpy_module()

        keys, rest, locs = self._arrays()
        # Rows as single values: masked moves of 24- and 20-byte items, not of 2-D rows.
        columns = (keys, rest, locs.view(f"V{_PLACE.size}")[:, 0]) if self._width else (keys, rest)
        added = [column[start:end].copy() for column in columns]
        count = end - start
        inserted = np.searchsorted(keys[:start], added[0])
        after = np.searchsorted(keys[:start], added[0], side="right")
        for at in (after > inserted).nonzero()[0].tolist():
            # Old ids share its first 8 bytes: its place among them by the whole id.
            low = int(inserted[at])
            inserted[at] = low + np.searchsorted(rest[low : after[at]], added[1][at : at + 1])[0]
        _merge_blocks(columns, added, inserted + np.arange(count), end)

    def _reserve(self, used: int, total: int) -> None:
        """Room for ``total`` entries; the first ``used`` are kept."""
        np = numpy_module()

        if self._keys is not None and total <= len(self._keys):
            return
        capacity = max(2 * total, total + _RESERVE)
        keys = _mapped(np.uint64, (capacity,))
        rest = _mapped(np.dtype("V24"), (capacity,))
        locs = _mapped(np.uint32, (capacity, self._width))
        if self._keys is not None and used:
            old_keys, old_rest, old_locs = self._arrays()
            keys[:used], rest[:used], locs[:used] = (
                old_keys[:used],
                old_rest[:used],
                old_locs[:used],
            )
        self._keys, self._rest, self._locs = keys, rest, locs

    def _add_frames(self, rows: Sequence[tuple[int, int, int]] | NDArray[np.uint32]) -> None:
        """Append frames (pack number, offset, length), numbered in order from ``_frame_count``."""
        count, used = len(rows), self._frame_count
        if not count:
            return
        np = numpy_module()

        if self._frames is None or used + count > len(self._frames):
            capacity = max(2 * (used + count), used + count + _RESERVE // 16)
            frames = _mapped(np.uint32, (capacity, 3))
            if self._frames is not None:
                frames[:used] = self._frames[:used]
            self._frames = frames
        self._frames[used : used + count] = rows
        self._frame_count = used + count

    def _arrays(self) -> tuple[NDArray[np.uint64], NDArray[np.void], NDArray[np.uint32]]:
        assert self._keys is not None and self._rest is not None and self._locs is not None
        return self._keys, self._rest, self._locs

    def _find(self, keys: NDArray[np.uint64], rest: NDArray[np.void]) -> NDArray[np.intp]:
        """Where each id is in the sorted arrays, -1 where it is not."""
        np = numpy_module()

        n = self._n
        if not n:
            return np.full(len(keys), -1, np.intp)
        known_keys, known_rest, _ = self._arrays()
        known_keys, known_rest = known_keys[:n], known_rest[:n]
        at = np.minimum(np.searchsorted(known_keys, keys), n - 1)
        same_key = known_keys[at] == keys
        hit = same_key & (known_rest[at] == rest)
        found = np.where(hit, at, -1)
        for position in (same_key & ~hit).nonzero()[0].tolist():
            # Another id with the same first 8 bytes (a key holder can plant any number):
            # the run is in order of the whole id, so it is binary-searched.
            low, row = int(at[position]), rest[position : position + 1]
            end = int(np.searchsorted(known_keys, keys[position], side="right"))
            candidate = low + int(np.searchsorted(known_rest[low:end], row)[0])
            if candidate < end and known_rest[candidate] == row[0]:
                found[position] = candidate
        return found

    def _positions(self, blob_ids: Sequence[bytes]) -> NDArray[np.intp]:
        """``_find`` for ids as bytes; an id that is not 32 bytes long is nowhere."""
        np = numpy_module()

        joined = b"".join(blob_ids)
        # All ID_SIZE long: none is longer, and together they are as long as that.
        if len(joined) == ID_SIZE * len(blob_ids) and max(map(len, blob_ids), default=0) <= ID_SIZE:
            ids = np.frombuffer(joined, _id_dtype())
            return self._find(ids["key"], ids["rest"])
        found = np.full(len(blob_ids), -1, np.intp)
        sized = [at for at, blob_id in enumerate(blob_ids) if len(blob_id) == ID_SIZE]
        if sized:
            found[sized] = self._positions([blob_ids[at] for at in sized])
        return found

    def places(self, ids: NDArray[np.void]) -> NDArray[np.uint32]:
        """Where each id of ``ids`` (32-byte items) is: a row each (frame number, offset in
        the frame, size), frames as ``frames`` names them; ``KeyError`` names the first
        id not in the index."""
        split = ids.view(_id_dtype())
        return self._places_at(
            self._find(split["key"], split["rest"]), lambda at: ids[at].tobytes()
        )

    def frames(self, numbers: Sequence[int] | NDArray[np.uint32]) -> list[tuple[str, int, int]]:
        """(pack id, offset, length) of the frames numbered ``numbers`` (see ``places``)."""
        if not len(numbers):
            return []
        assert self._frames is not None
        pack_ids = self._pack_ids
        rows = self._frames[numbers].tolist()
        return [(pack_ids[pack], offset, length) for pack, offset, length in rows]

    def _places_at(
        self, found: NDArray[np.intp], id_at: Callable[[int], bytes]
    ) -> NDArray[np.uint32]:
        """The place rows of the ids ``_find`` found at ``found``; those not found (-1)
        are looked for among the recent ones."""
        np = numpy_module()

        if not self._width:
            raise LookupError("this index holds blob ids only, not where they are")
        if self._n:
            rows = self._arrays()[2][: self._n][found]
        else:
            rows = np.zeros((len(found), self._width), np.uint32)
        recent = self._recent
        for at in (found < 0).nonzero()[0].tolist():
            packed = recent.get(id_at(at))
            if packed is None:
                raise KeyError(id_at(at))
            rows[at] = _PLACE.unpack(packed)
        if len(rows):
            rows[:, 0] = self._one_number_a_frame(rows[:, 0])
        return rows

    def _one_number_a_frame(self, numbers: NDArray[np.uint32]) -> NDArray[np.uint32]:
        """``numbers`` with each frame named by its lowest number among them.

        A frame has several numbers when a pack's header lists its blobs in separate
        runs, or two index files list the same pack: grouped on the numbers alone, a
        key holder's index could have one 64 MiB frame read once per blob.
        """
        np = numpy_module()

        assert self._frames is not None
        distinct, inverse = np.unique(numbers, return_inverse=True)
        frames = np.ascontiguousarray(self._frames[distinct]).view("V12").reshape(-1)
        _, first, same = np.unique(frames, return_index=True, return_inverse=True)
        return distinct[first[same.reshape(-1)]][inverse.reshape(-1)]

    def _places_of(self, blob_ids: Sequence[bytes]) -> NDArray[np.uint32]:
        """``places`` for ids as bytes."""
        return self._places_at(self._positions(blob_ids), blob_ids.__getitem__)

    def frames_of(self, blob_ids: Iterable[bytes]) -> list[FrameBlobs]:
        """The blobs grouped by the frame holding them, frames in order of first appearance.

        A restore locates every blob of a slice of its data at once: one search
        for them all, the grouping done on the frame numbers, and no object per blob
        but its member tuple. ``KeyError`` names the first blob not in the index.
        """
        np = numpy_module()

        wanted = blob_ids if isinstance(blob_ids, list) else list(blob_ids)
        if not wanted:
            return []
        places = self._places_of(wanted)
        numbers, order, ends = frame_groups(places[:, 0], np.arange(len(wanted)))
        ordered = places[order]
        ids = [wanted[at] for at in order.tolist()]
        members = list(zip(ids, ordered[:, 1].tolist(), ordered[:, 2].tolist(), strict=True))
        heads = self.frames(numbers)
        bounds = ends.tolist()
        return [
            FrameBlobs(pack_id, offset, length, members[start:end])
            for (pack_id, offset, length), start, end in zip(
                heads, [0, *bounds], bounds, strict=False
            )
        ]

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        try:
            ((frame, inner_offset, raw_length),) = self._places_of([blob_id]).tolist()
        except KeyError:
            return None
        ((pack_id, offset, length),) = self.frames([frame])
        return BlobLocation(pack_id, offset, length, inner_offset, raw_length)


def frame_groups(
    numbers: NDArray[np.uint32],
    need: NDArray[np.integer],
    within: NDArray[np.uint32] | None = None,
) -> tuple[NDArray[np.uint32], NDArray[np.intp], NDArray[np.intp]]:
    """Blobs grouped by frame, given each blob's frame number (``places``) and when the
    data needs it (``need``, lower first).

    Returns the frame numbers in order of first need (the least ``need`` of their blobs),
    the blobs' order (by group, then by ``within`` or as given) and where each group
    ends in that order.
    """
    np = numpy_module()

    distinct, frame_of = np.unique(numbers, return_inverse=True)
    frame_of = frame_of.reshape(-1)
    first_need = np.full(len(distinct), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first_need, frame_of, need)
    by_need = np.argsort(first_need, kind="stable")
    rank = np.empty_like(by_need)
    rank[by_need] = np.arange(len(by_need))
    group = rank[frame_of]
    order = np.argsort(group, kind="stable") if within is None else np.lexsort((within, group))
    ends = np.cumsum(np.bincount(group, minlength=len(distinct)))
    return distinct[by_need], order, ends


def _merge_blocks(
    columns: Sequence[NDArray], added: Sequence[NDArray], inserted: NDArray[np.intp], end: int
) -> None:
    """Put the rows ``added`` (in order) at the places ``inserted`` of ``columns``, whose
    old rows fill the rest of [0, end), in place.

    Filled from the back a block at a time: the old rows a block takes are copied
    out first, and no row still to be placed lies under a block.
    """
    np = numpy_module()

    low = int(inserted[0])
    high = end
    while high > low:
        low_block = max(low, high - _MERGE_BLOCK)
        first, last = np.searchsorted(inserted, [low_block, high]).tolist()
        is_new = np.zeros(high - low_block, bool)
        is_new[inserted[first:last] - low_block] = True
        old_from, old_to = low_block - first, high - last
        for column, new in zip(columns, added, strict=True):
            old = column[old_from:old_to].copy()
            block = column[low_block:high]
            block[~is_new] = old
            block[is_new] = new[first:last]
        high = low_block


class _SpilledIds:
    """Ids added while a backup writes, 12 bytes each in memory: the first 8 bytes of
    each (a sorted key) and its row in a file of whole ids, in a private folder.

    A key that matches is confirmed by reading the whole id back, so an id is never
    taken for another sharing its first 8 bytes. These ids are the backup's own,
    hashed under the key from its own data: two of them sharing a key are as unlikely
    as a hash collision, so a run of equal keys is read one by one. ``missing``
    reads the file only for ids whose key matches (a blob stored twice in a backup).
    """

    def __init__(self, folder: Path) -> None:
        # Open as long as the index lives: closed (and gone) with it.
        self._file = tempfile.TemporaryFile(dir=folder, buffering=0)  # noqa: SIM115
        self._closed = weakref.finalize(self, self._file.close)
        self._n = 0  # rows in the file and the arrays
        self._keys: NDArray[np.uint64] | None = None  # sorted
        self._rows: NDArray[np.uint32] | None = None  # each key's row in the file

    def __len__(self) -> int:
        return self._n

    def add(self, joined: bytes) -> None:
        """Add ids the index holds nowhere else (``ID_SIZE`` bytes each, concatenated)."""
        np = numpy_module()

        count = len(joined) // ID_SIZE
        if not count:
            return
        fd, view, offset = self._file.fileno(), memoryview(joined), self._n * ID_SIZE
        while view:
            written = platform.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        keys = np.frombuffer(joined, _id_dtype())["key"].astype(np.uint64)
        order = np.argsort(keys, kind="stable")
        new_keys = keys[order]
        new_rows = (order + self._n).astype(np.uint32)
        n, end = self._n, self._n + count
        if self._keys is None or end > len(self._keys):
            capacity = max(2 * end, end + _RESERVE)
            grown_keys, grown_rows = (
                _mapped(np.uint64, (capacity,)),
                _mapped(np.uint32, (capacity,)),
            )
            if self._keys is not None and self._rows is not None:
                grown_keys[:n], grown_rows[:n] = self._keys[:n], self._rows[:n]
            self._keys, self._rows = grown_keys, grown_rows
        assert self._rows is not None
        inserted = np.searchsorted(self._keys[:n], new_keys) + np.arange(count)
        _merge_blocks((self._keys, self._rows), (new_keys, new_rows), inserted, end)
        self._n = end

    def missing(self, blob_ids: Sequence[bytes], positions: list[int]) -> list[int]:
        """Those of ``positions`` (in ``blob_ids``) whose id is not here."""
        np = numpy_module()

        n, keys, rows = self._n, self._keys, self._rows
        if not n or keys is None or rows is None:
            return positions
        sized = [at for at in positions if len(blob_ids[at]) == ID_SIZE]
        if not sized:
            return positions
        wanted = np.frombuffer(b"".join(blob_ids[at] for at in sized), _id_dtype())["key"]
        wanted = wanted.astype(np.uint64)
        places = np.searchsorted(keys[:n], wanted)
        hits = (keys[np.minimum(places, n - 1)] == wanted).nonzero()[0].tolist()
        if not hits:
            return positions
        fd, found = self._file.fileno(), set()
        for hit in hits:
            at, key, blob_id = int(places[hit]), wanted[hit], blob_ids[sized[hit]]
            while at < n and keys[at] == key:
                row = int(rows[at])
                if platform.pread(fd, ID_SIZE, row * ID_SIZE) == blob_id:
                    found.add(sized[hit])
                    break
                at += 1
        return [at for at in positions if at not in found]


def _mapped(dtype: type | np.dtype, shape: tuple[int, ...]) -> NDArray:
    """A zeroed array in an anonymous memory map: its pages cost memory once written."""
    np = numpy_module()

    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype, int(np.prod(shape))).reshape(shape)


@cache
def _id_dtype() -> np.dtype:
    np = numpy_module()

    return np.dtype({"names": ["key", "rest"], "formats": [">u8", "V24"], "offsets": [0, 8]})


@cache
def _entry_dtype() -> np.dtype:
    """``packs.ENTRY`` (type, id, frame offset, frame length, inner offset, size)."""
    np = numpy_module()

    return np.dtype(
        {
            "names": ["key", "rest", "loc"],
            "formats": [">u8", "V24", ("<u4", 4)],
            "offsets": [1, 9, 33],
            "itemsize": ENTRY.size,
        }
    )
