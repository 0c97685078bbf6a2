"""Consistent point-in-time images of live SQLite databases.

The image is the database as of one committed transaction, WAL included, while
the owning app keeps writing. Two ways, same result:

* **In place** (the fast path). Hold a read transaction, then read the database
  file, overlaying the WAL frames that belong to our read transaction. This is sound
  because of SQLite's WAL locking: while our read mark is held, a checkpoint
  never copies frames newer than our read mark into the database file, the WAL
  is never restarted (so frames we read are never overwritten), and
  pages our image takes from the database file have no frame ≤ our mark, so
  no checkpoint touches them. Which frames are ours is read from the wal-index
  header in ``-shm``, sampled before and after the read transaction began: if
  both samples agree, no commit slipped in between and our image ends at
  that header's ``mxFrame``. In rollback-journal mode, our SHARED lock keeps
  every writer from changing the file, so the file itself is the image.
* **Through SQLite's backup API** into a scratch file (the fallback): used when
  the in-place conditions cannot be established (no ``-shm``, the header keeps
  changing under a busy writer, unexpected WAL contents, a hot journal).
  ``pages=-1`` copies everything in one step under one read transaction.

The in-place path saves writing and re-reading a full copy of the database.
It is a strategy the platform may switch off (``platform.SQLITE_IN_PLACE``:
off on Windows, whose SQLite keeps ``-shm`` differently, and under
``CLOUDKEEP_PORTABLE=1``). ``CLOUDKEEP_SQLITE_CAPTURE=backup-api`` or
``in-place`` forces either one.
``tests/engine/test_sqlite_capture.py`` checks both paths give the same
database under concurrent writers, checkpoints and WAL restarts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sqlite3
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cloudkeep import platform
from cloudkeep.backups.sources import RACY_WINDOW_NS, describe, open_regular
from cloudkeep.errors import ConfigurationError, DataSourceError
from cloudkeep.platform import process_alive, read_into

BUSY_TIMEOUT_SECONDS = 60.0
_SHM_HEADER = struct.Struct("=IIIBBHII8s8s8s")  # WalIndexHdr, native byte order
_SHM_HEADER_BYTES = 48
_NBACKFILL = struct.Struct("=I")  # WalCkptInfo.nBackfill at offset 96
_WAL_HEADER = 32
_FRAME_HEADER = struct.Struct(">II8s8s")  # pgno, commit size, salts, checksums
_HEADER_SAMPLES = 20
_SCRATCH_PREFIX = "capture-"
_SCRATCH_RUN = re.compile(r"^capture-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_LEGACY_IMAGE = re.compile(r"^capture-[A-Za-z0-9_]{8}\.db(-journal|-wal|-shm)?$")


@dataclass
class Capture:
    page_size: int
    blocks: Iterator[bytes | bytearray]
    method: str  # "in-place" | "backup-api"


def _page_size_of(header: bytes) -> int:
    raw = int.from_bytes(header[16:18], "big")
    return 65536 if raw == 1 else raw


def sqlite_uri(path: Path, mode: str) -> str:
    """An SQLite URI naming exactly ``path``, whatever its characters.

    Unescaped, ``?`` and ``#`` in a name end the path (``what?.db`` opened, and
    created, ``what``) and ``%`` starts an escape: every byte but ``/`` and
    the unreserved ones is percent-encoded (SQLite decodes ``%HH``).
    """
    return f"file:{quote(os.fsencode(path), safe='/')}?mode={mode}"


def _open_reader(path: Path, read_only: bool = True) -> sqlite3.Connection:
    """A connection holding a read transaction (a consistent view) on ``path``.

    Read-only, so that closing it never checkpoints or deletes the app's WAL
    (a read-write connection that is the last one to close does both). Neither
    kind creates the database: one that vanished is an error, not a new file.
    """
    connection = sqlite3.connect(
        sqlite_uri(path, "ro" if read_only else "rw"),
        uri=True,
        timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None,
    )
    try:
        connection.execute("PRAGMA query_only=1")
        connection.execute("BEGIN")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        connection.close()
        raise
    return connection


def _shm_header(shm_fd: int) -> bytes | None:
    """Both copies of the wal-index header (+ nBackfill), if they agree and are initialised."""
    raw = platform.pread(shm_fd, 2 * _SHM_HEADER_BYTES + _NBACKFILL.size, 0)
    if len(raw) < 2 * _SHM_HEADER_BYTES + _NBACKFILL.size:
        return None
    first, second = raw[:_SHM_HEADER_BYTES], raw[_SHM_HEADER_BYTES : 2 * _SHM_HEADER_BYTES]
    if first != second or not _SHM_HEADER.unpack(first)[3]:  # isInit
        return None
    return raw


def _wal_overlay(wal_fd: int, shm_raw: bytes, page_size: int) -> tuple[int, dict[int, int]] | None:
    """(pages in the image, page number → offset of its page in the WAL), or None."""
    (_, _, _, _, _, sz_page, mx_frame, n_page, _, salt, _) = _SHM_HEADER.unpack(
        shm_raw[:_SHM_HEADER_BYTES]
    )
    if (sz_page & 0xFF00) | ((sz_page & 1) << 16) != page_size:  # 65536 is stored as 1
        return None
    (n_backfill,) = _NBACKFILL.unpack_from(shm_raw, 2 * _SHM_HEADER_BYTES)
    if n_backfill >= mx_frame:
        return n_page, {}  # every frame of our image is already in the database file
    header = platform.pread(wal_fd, _WAL_HEADER, 0)
    if len(header) < _WAL_HEADER or header[16:24] != salt:
        return None
    frame_size = _FRAME_HEADER.size + page_size
    overlay: dict[int, int] = {}
    for frame in range(mx_frame):
        offset = _WAL_HEADER + frame * frame_size
        raw = platform.pread(wal_fd, _FRAME_HEADER.size, offset)
        if len(raw) < _FRAME_HEADER.size:
            return None
        page_number, _commit, frame_salt, _ = _FRAME_HEADER.unpack(raw)
        if frame_salt != salt or page_number == 0:
            return None
        overlay[page_number] = offset + _FRAME_HEADER.size
    return n_page, overlay


def _blocks(
    db_fd: int,
    wal_fd: int | None,
    page_size: int,
    page_count: int,
    overlay: dict[int, int],
    block_pages: int,
) -> Iterator[bytes | bytearray]:
    """Blocks of consecutive pages, each read straight into a fresh buffer.

    A new buffer per block: consumers keep views of earlier blocks while they
    work. Blocks without WAL pages are read as ``bytes`` (no zero-filling of a
    buffer that the read overwrites anyway); blocks that take pages from the WAL
    are read into a ``bytearray`` and patched in place.
    """
    for first in range(1, page_count + 1, block_pages):
        count = min(block_pages, page_count - first + 1)
        offset = (first - 1) * page_size
        patched = (
            bool(overlay) and wal_fd is not None and any(first + i in overlay for i in range(count))
        )
        wanted = count * page_size
        block: bytes | bytearray = b"" if patched else platform.pread(db_fd, wanted, offset)
        got = len(block)
        if got < wanted:  # WAL pages to patch in, or a short read to finish
            buffer = bytearray(wanted)
            buffer[:got] = block
            got += read_into(db_fd, memoryview(buffer)[got:], offset + got)
            block = buffer
        if got < wanted and not all(first + i in overlay for i in range(got // page_size, count)):
            raise DataSourceError("the database file is shorter than its committed size")
        if patched:
            assert wal_fd is not None and isinstance(block, bytearray)
            view = memoryview(block)
            for i in range(count):
                wal_offset = overlay.get(first + i)
                if wal_offset is not None:
                    platform.preadv(wal_fd, [view[i * page_size : (i + 1) * page_size]], wal_offset)
        yield block


class CaptureTorn(Exception):
    """An optimistic read saw the file change; the caller reads it again another way."""


def _closed_wal_database(
    path: Path, db_fd: int, page_size: int, block_pages: int
) -> tuple[None, Capture] | None:
    """A WAL database nobody has open: no -wal, no -shm, the file alone is the state.

    Opening any connection would create both files (and change the fingerprint
    that lets the next backup skip this file), so read optimistically instead:
    only a checkpoint can change the file, and a checkpoint moves its mtime. If
    identity, size or mtime changed during the read, ``CaptureTorn`` is raised
    after the last block and the caller falls back to the backup API.
    """
    before = os.fstat(db_fd)
    if before.st_mtime_ns > time.time_ns() - RACY_WINDOW_NS:
        return None  # too fresh to vouch for with timestamps

    def blocks() -> Iterator[bytes | bytearray]:
        yield from _blocks(db_fd, None, page_size, before.st_size // page_size, {}, block_pages)
        after = os.stat(path)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        ) or Path(f"{path}-wal").exists():
            raise CaptureTorn(f"{path} changed while it was read")

    return None, Capture(page_size, blocks(), "in-place")


def _try_reader(path: Path) -> sqlite3.Connection | None:
    """A read-only reader, or None where read-only cannot work (hot journal, no -shm)."""
    try:
        return _open_reader(path)
    except sqlite3.OperationalError:
        return None


class _Descriptors:
    """Our own descriptors on the database files, opened before SQLite's and closed after.

    POSIX record locks belong to the process: closing *any* descriptor of a file
    drops every lock this process holds on it, SQLite's read lock included. So
    nothing here may open and close these files while our reader is open.
    """

    def __init__(self, path: Path) -> None:
        self.fds: dict[str, int] = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                self.fds[suffix] = os.open(f"{path}{suffix}", os.O_RDONLY | platform.O_BINARY)
            except FileNotFoundError:
                continue

    def get(self, suffix: str) -> int | None:
        return self.fds.get(suffix)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def _in_place(
    path: Path, block_pages: int, files: _Descriptors
) -> tuple[sqlite3.Connection | None, Capture] | None:
    db_fd = files.get("")
    if db_fd is None:
        return None
    header = platform.pread(db_fd, 100, 0)
    page_size = _page_size_of(header)
    if header[18] == 1:  # rollback journal: our SHARED lock freezes the file
        reader = _try_reader(path)
        if reader is None:
            return None
        page_count = os.fstat(db_fd).st_size // page_size
        blocks = _blocks(db_fd, None, page_size, page_count, {}, block_pages)
        return reader, Capture(page_size, blocks, "in-place")
    if header[18] != 2:
        return None
    return _in_place_wal(path, db_fd, files, page_size, block_pages)


def _in_place_wal(
    path: Path, db_fd: int, files: _Descriptors, page_size: int, block_pages: int
) -> tuple[sqlite3.Connection | None, Capture] | None:
    """A WAL database read in place: the shm header sampled around opening our read
    transaction must not change, else a commit slipped in between (sample again)."""
    shm_fd, wal_fd = files.get("-shm"), files.get("-wal")
    if wal_fd is None and shm_fd is None:
        return _closed_wal_database(path, db_fd, page_size, block_pages)
    if shm_fd is None or wal_fd is None:
        return None
    for _ in range(_HEADER_SAMPLES):
        before = _shm_header(shm_fd)
        if before is None:
            return None
        reader = _try_reader(path)
        if reader is None:
            return None
        after = _shm_header(shm_fd)
        if after is not None and after[: 2 * _SHM_HEADER_BYTES] == before[: 2 * _SHM_HEADER_BYTES]:
            if _SHM_HEADER.unpack(after[:_SHM_HEADER_BYTES])[6] == 0:  # mxFrame: WAL empty
                # Our read mark (slot 0) keeps any checkpoint off the database file.
                found: tuple[int, dict[int, int]] | None = (
                    os.fstat(db_fd).st_size // page_size,
                    {},
                )
            else:
                found = _wal_overlay(wal_fd, after, page_size)
            if found is None:
                reader.close()
                return None
            page_count, overlay = found
            blocks = _blocks(db_fd, wal_fd, page_size, page_count, overlay, block_pages)
            return reader, Capture(page_size, blocks, "in-place")
        reader.close()  # a commit slipped in between: sample again
    return None


def _in_place_wanted() -> bool:
    """The in-place strategy where the platform allows it, unless the environment says."""
    forced = os.environ.get("CLOUDKEEP_SQLITE_CAPTURE")
    if forced in ("backup-api", "in-place"):
        return forced == "in-place"
    return platform.SQLITE_IN_PLACE


@contextlib.contextmanager
def consistent_pages(
    path: Path, scratch: Path, block_bytes: int, *, in_place: bool = True
) -> Iterator[Capture]:
    """Page-aligned blocks of a consistent image of the live database at ``path``.

    The blocks of an in-place capture may end in ``CaptureTorn``: then read the
    file again with ``in_place=False``.
    """
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            page_size = _page_size_of(handle.read(100))
        block_pages = max(1, block_bytes // page_size)
        if in_place and _in_place_wanted():
            files = _Descriptors(path)
            try:
                fast = _in_place(path, block_pages, files)
                if fast is not None:
                    reader, capture = fast
                    try:
                        yield capture
                    finally:
                        if reader is not None:
                            reader.close()
                    return
            finally:
                files.close()  # only after the reader: see _Descriptors
        with _backup_image(path, scratch) as image:
            image_fd = os.open(image, os.O_RDONLY | platform.O_BINARY)
            try:
                page_count = os.fstat(image_fd).st_size // page_size
                blocks = _blocks(image_fd, None, page_size, page_count, {}, block_pages)
                yield Capture(page_size, blocks, "backup-api")
            finally:
                os.close(image_fd)
    except sqlite3.Error as exc:
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, "the database vanished", str(path)) from exc
        raise DataSourceError(f"cannot read the SQLite database {path}: {exc}") from exc


def private_scratch(scratch: Path) -> None:
    """Make ``scratch`` a folder only we can enter (0700), whatever it was before.

    Images in it are plaintext copies of the user's databases.
    """
    try:
        scratch.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(scratch, 0o700)
        info = os.lstat(scratch)
        if not stat.S_ISDIR(info.st_mode) or not platform.owned_by_me(info):
            raise ConfigurationError(
                f"the scratch folder {scratch} is not a folder of this user; remove it"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(scratch, 0o700)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot use the scratch folder {scratch}: {describe(exc)}"
        ) from exc


def clean_scratch(scratch: Path) -> None:
    """Make an existing scratch folder private again and remove what dead captures left.

    Each capture works in a folder named after its process (``capture-<pid>-…``),
    so the leftovers of a killed backup are told apart from those of a backup
    running beside this one. Loose ``capture-*.db`` files are from versions that
    kept no pid: their owner cannot be known, and they are removed too. A
    missing scratch folder is made on first use only.
    """
    if not os.path.lexists(scratch):
        return
    private_scratch(scratch)
    for path in scratch.iterdir():
        match = _SCRATCH_RUN.match(path.name)
        if match and not process_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
        elif _LEGACY_IMAGE.match(path.name):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _backup_image(path: Path, scratch: Path) -> Iterator[Path]:
    private_scratch(scratch)
    folder = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=scratch))
    image = folder / "image.db"
    try:
        try:
            source = _open_reader(path)
        except sqlite3.OperationalError:
            # A hot journal needs rolling back, a WAL database without -shm needs
            # one created: a normal connection does that (as any app reader would).
            source = _open_reader(path, read_only=False)
        try:
            source.execute("COMMIT")  # backup() takes its own read transaction
            target = sqlite3.connect(image)
            # The image is scratch: no journal and no fsync, which would double its cost.
            target.execute("PRAGMA journal_mode=OFF")
            target.execute("PRAGMA synchronous=OFF")
            try:
                source.backup(target, pages=-1)
            finally:
                target.close()
        finally:
            source.close()
        yield image
    finally:
        shutil.rmtree(folder, ignore_errors=True)
