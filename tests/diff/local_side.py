"""A database file on disk as one side of a diff, chunked as a backup chunks it.

Only for testing the page plan against real SQLite files before any backup: the
chunk ids are content hashes of page-aligned 8 KiB chunks (as the archiver cuts a
database), reads come from the file, and SQLite opens it read-only and immutable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import apsw

from cloudkeep.backups.btree import parse_header
from cloudkeep.backups.diff import DatabaseSide

CHUNK_BYTES = 8192


class Reads:
    """Counts the bytes read, as a reader counts bytes fetched."""

    def __init__(self) -> None:
        self.bytes = 0


def local_side(path: Path, reads: Reads | None = None) -> DatabaseSide:
    data = path.read_bytes()
    page_size = parse_header(data[:100]).page_size
    step = max(page_size, CHUNK_BYTES // page_size * page_size)
    chunks = [
        (
            offset,
            len(data[offset : offset + step]),
            hashlib.sha256(data[offset : offset + step]).digest(),
        )
        for offset in range(0, len(data), step)
    ]

    def read(offset: int, size: int) -> bytes:
        if reads is not None:
            reads.bytes += size
        return data[offset : offset + size]

    def connect() -> apsw.Connection:
        return apsw.Connection(
            f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
        )

    return DatabaseSide(len(data), lambda: chunks, read, connect)
