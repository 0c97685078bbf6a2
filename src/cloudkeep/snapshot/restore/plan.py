"""What a restore creates, and which chunk goes to which offset of which file.

A restore plans before it writes, one slice of the data at a time so memory
stays bounded: the entries of the tree (``TreePlan``), then per batch of files
the chunks each file is made of (``SlicePlan``), split into chunks to look for
in the live copy first (``FilePlan``) and blobs to fetch (``ChunkTarget``),
whose frames are read from the packs in few ranged reads (``FetchPlan``).
Files are named by their number in their batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeAlias

from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.index import FrameBlobs
from cloudkeep.snapshot.manifest import FileEntry, Manifest

FILES_PER_BATCH = 256
CHUNKS_PER_BATCH = 16_384  # 128 MiB of 8 KiB pages per slice; two slices live at once
# Slices start small and double: fetching starts after one chunk list is read, and
# each slice is planned while the previous (half as big) one is being fetched.
FIRST_BATCH_CHUNKS = 4_096
MAX_RANGE_BYTES = 2 * 1024 * 1024  # longer ranges raise a restore's peak memory
MAX_RANGE_GAP = 512 * 1024


# The two records made once per chunk are plain tuples: a NamedTuple's constructor
# would cost more than the rest of the planning loop.

#: Where a fetched blob's bytes go: (file of the batch, offset in it).
ChunkTarget: TypeAlias = tuple[int, int]
#: A chunk to look for at its place in a live file, used if it hashes to the id:
#: (offset, length, blob id).
LocalChunk: TypeAlias = tuple[int, int, bytes]


@dataclass(slots=True)
class FilePlan:
    """The chunks of one file looked for in its live copy ``source`` before any is fetched."""

    file: int
    source: Path
    chunks: list[LocalChunk] = field(default_factory=list)


@dataclass(slots=True)
class SlicePlan:
    """One slice of a batch: blobs to fetch (each to one or more places) and, per file,
    chunks to look for locally first; ``chunks`` counts both."""

    fetch: defaultdict[bytes, list[ChunkTarget]] = field(default_factory=lambda: defaultdict(list))
    reuse: dict[int, FilePlan] = field(default_factory=dict)
    chunks: int = 0

    def add_chunks(
        self, file: int, offset: int, chunks: list[tuple[bytes, int]], source: Path | None
    ) -> int:
        """Place ``chunks`` ((blob id, length) each) one after another from ``offset`` of
        ``file``: looked for in ``source`` first if there is one. Returns where they end."""
        if source is None:
            fetch = self.fetch
            for blob_id, size in chunks:
                fetch[blob_id].append((file, offset))
                offset += size
        else:
            plan = self.reuse.get(file)
            if plan is None:
                plan = self.reuse[file] = FilePlan(file, source)
            local = plan.chunks
            for blob_id, size in chunks:
                local.append((offset, size, blob_id))
                offset += size
        self.chunks += len(chunks)
        return offset

    def add_missing(self, file: int, missing: list[LocalChunk]) -> None:
        """Fetch the chunks of ``file`` its live copy did not hold."""
        fetch = self.fetch
        for offset, _, blob_id in missing:
            fetch[blob_id].append((file, offset))

    def empty(self) -> bool:
        return not self.fetch and not self.reuse


def next_slice_limit(limit: int) -> int:
    """The chunks the next slice may hold: twice the last, up to ``CHUNKS_PER_BATCH``."""
    return min(2 * limit, CHUNKS_PER_BATCH)


def check_file_size(entry: FileEntry, end: int) -> None:
    """A file's chunk lists must cover it exactly: no hole and nothing past its end."""
    if end != entry.size:
        raise RepositoryDamaged(f"the chunk list of {entry.path} does not add up")


class PackRange(NamedTuple):
    """One ranged read of a pack: ``length`` bytes from ``start``, holding ``frames``."""

    pack_id: str
    start: int
    length: int
    frames: list[FrameBlobs]


class FetchPlan(NamedTuple):
    """The ranged reads that fetch one slice's blobs, and where each blob goes."""

    ranges: list[PackRange]
    targets: dict[bytes, list[ChunkTarget]]


def fetch_plan(targets: dict[bytes, list[ChunkTarget]], frames: list[FrameBlobs]) -> FetchPlan:
    """Group the frames holding ``targets``' blobs into ranged reads, packs in the order the
    data first needs them.

    Frames of a pack close to each other (gaps up to ``MAX_RANGE_GAP``) are read
    in one range of at most ``MAX_RANGE_BYTES`` (a single larger frame is one range).
    """
    by_pack: dict[str, list[FrameBlobs]] = {}
    for frame in frames:
        by_pack.setdefault(frame.pack_id, []).append(frame)
    ranges: list[PackRange] = []
    for pack_id, in_pack in by_pack.items():
        in_pack.sort(key=lambda frame: frame.offset)
        current: list[FrameBlobs] = []
        start = end = 0
        for frame in in_pack:
            offset, length = frame.offset, frame.length
            if current and (
                offset - end > MAX_RANGE_GAP or offset + length - start > MAX_RANGE_BYTES
            ):
                ranges.append(PackRange(pack_id, start, end - start, current))
                current = []
            if not current:
                start = offset
            current.append(frame)
            end = offset + length
        ranges.append(PackRange(pack_id, start, end - start, current))
    return FetchPlan(ranges, targets)


@dataclass(slots=True)
class TreePlan:
    """The entries of a backup in the order a restore handles them."""

    #: Folders and symlinks, created first, in the backup's order.
    links_and_folders: list[FileEntry]
    #: Regular files, in batches of at most ``FILES_PER_BATCH``.
    batches: list[list[FileEntry]]
    #: Files and folders whose mode and time are set last, deepest first.
    finishing: list[FileEntry]


def plan_tree(manifest: Manifest) -> TreePlan:
    links_and_folders: list[FileEntry] = []
    files: list[FileEntry] = []
    for entry in manifest.files:
        if entry.type == "file":
            files.append(entry)
        elif entry.type in ("dir", "symlink"):
            links_and_folders.append(entry)
    batches = [
        files[start : start + FILES_PER_BATCH] for start in range(0, len(files), FILES_PER_BATCH)
    ]
    finishing = [entry for entry in manifest.files if entry.type in ("file", "dir")]
    finishing.sort(key=lambda entry: entry.path.count("/"), reverse=True)
    return TreePlan(links_and_folders, batches, finishing)
