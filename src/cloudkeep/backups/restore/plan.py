"""What a restore creates, and which chunk goes to which offset of which file.

A restore plans before it writes, one slice of the data at a time so memory
stays bounded: the entries of the tree (``TreePlan``), then per batch of files
the chunks each file is made of (``SlicePlan``), split into chunks to look for
in the live copy first (``FilePlan``) and blobs to fetch (``ChunkTarget``),
whose frames are read from the packs in few ranged reads (``loader.plan_ranges``).
Files are named by their number in their batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from cloudkeep.backups.manifest import FileEntry, Manifest
from cloudkeep.errors import RepositoryDamaged

FILES_PER_BATCH = 256
CHUNKS_PER_BATCH = 16_384  # 128 MiB of 8 KiB pages per slice; two slices live at once
# Slices start small and double: fetching starts after one chunk list is read, and
# each slice is planned while the previous (half as big) one is being fetched.
FIRST_BATCH_CHUNKS = 4_096


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
