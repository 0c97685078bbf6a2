"""Writing out what a backup holds without restoring it: one file's bytes, or a folder as a
tar stream (restic's ``dump``). Only the chunks of what is written are fetched, every
blob verified (``backups.reader``), in bounded memory."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

from cloudkeep.backups.browse import list_entries, normalize_path
from cloudkeep.backups.manifest import FileEntry, Manifest
from cloudkeep.backups.reader import BackupReader
from cloudkeep.errors import UserError

__all__ = ["file_entry", "write_file", "write_tar"]

ARCHIVES = ("tar",)
_READ_BYTES = 1024 * 1024


def file_entry(manifest: Manifest, path: str, folder_hint: str = "") -> FileEntry:
    """The regular file ``path`` of the backup: ``EntryNotFound`` if it holds none,
    ``UserError`` for a folder or a symlink (they have no bytes of their own); a folder's
    message ends with ``folder_hint`` (the front end's way to get one)."""
    listing = list_entries(manifest, path)
    path = listing.path
    if len(listing.entries) == 1 and listing.entries[0].path == path:
        entry = listing.entries[0]
        if entry.type == "file":
            return entry
        raise UserError(f"{path!r} is a symlink to {entry.target!r} in backup {manifest.id}")
    raise UserError(f"{path or '/'!r} is a folder of backup {manifest.id}, not a file{folder_hint}")


def write_file(reader: BackupReader, entry: FileEntry, out: BinaryIO) -> int:
    """Write the content of ``entry`` to ``out``; the bytes written."""
    written = 0
    for piece in reader.file(entry).stream():
        out.write(piece)
        written += len(piece)
    return written


def write_tar(reader: BackupReader, manifest: Manifest, path: str, out: BinaryIO) -> int:
    """Write ``path`` (a folder, the top, or a file) with everything beneath it to ``out``
    as a POSIX tar stream, paths from the top of the backup; the entries written."""
    path = normalize_path(path)
    listing = list_entries(manifest, path, recursive=True)
    entries = listing.entries
    if path and not (len(entries) == 1 and entries[0].path == path):
        top = next((entry for entry in manifest.files if entry.path == path), None)
        entries = [top or FileEntry(path=path, type="dir"), *entries]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mode = entry.mode or 0o700
            info.mtime = entry.mtime_ns // 1_000_000_000
            if entry.type == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif entry.type == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                archive.addfile(info)
            else:
                info.size = entry.size
                content = _StreamReader(reader.file(entry).stream())
                # Buffered: tarfile takes a short read for the end of the data.
                archive.addfile(info, io.BufferedReader(content, _READ_BYTES))
    return len(entries)


class _StreamReader(io.RawIOBase):
    """A file object over a stream of pieces, for ``tarfile`` (it reads in blocks)."""

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._left:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._left = memoryview(piece)
        count = min(len(buffer), len(self._left))
        buffer[:count] = self._left[:count]
        self._left = self._left[count:]
        return count
