"""Reading the local database folder: what to back up, and consistent images of it.

SQLite files are recognised by their 16-byte header, not their name, and
captured as consistent images (``sqlite_capture``); their ``-wal``/``-shm``/
``-journal`` companions are not copied raw: the image already holds every
committed page. Other files are streamed and re-read when they change
underneath us. A folder that cannot be listed is kept as an empty folder, with
a warning; what cannot be read at all is the archiver's to judge.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cloudkeep import platform
from cloudkeep.errors import DataSourceError

SQLITE_MAGIC = b"SQLite format 3\x00"
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
# Names SQLite databases usually have: an unreadable file (no header to go by) with
# one of them, or with a companion beside it, is taken to be a database.
DATABASE_SUFFIXES = (".db", ".db3", ".sqlite", ".sqlite3")
RESTORE_MARKER = ".cloudkeep-"  # staging folders of our own restores, never backed up
# Kernel file timestamps tick at 1-10 ms; a file touched within this window of the
# scan could change again within the same tick unnoticed, so it gets no fingerprint.
RACY_WINDOW_NS = 100_000_000


@dataclass(frozen=True, slots=True)
class SourceItem:
    relative: str  # posix path relative to the root ("" for a single-file source's parent)
    path: Path
    type: str  # "file" | "dir" | "symlink"
    mode: int
    mtime_ns: int
    size: int
    sqlite: bool
    target: str = ""
    fingerprint: str = ""  # "" = changed too recently to vouch for; always re-read


def shown(relative: str) -> str:
    """A path as a warning shows it: undecodable bytes as ``\\xff``, control characters
    escaped (a warning is one line of valid UTF-8, whatever the file is called)."""
    text = relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def describe(error: OSError) -> str:
    """The reason of an ``OSError`` as a sentence fragment ("permission denied")."""
    return (error.strerror or type(error).__name__).lower()


def open_regular(path: Path) -> int:
    """A read-only descriptor on the regular file at ``path``.

    Never blocks and never follows a symlink: a file replaced by a FIFO since
    the scan would otherwise hang the backup in ``open``. Anything but a regular
    file raises ``OSError`` (``EISDIR``, ``ELOOP``, ``EINVAL``).
    """
    fd = platform.open_nofollow(path, os.O_RDONLY | platform.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            raise OSError(code, "not a regular file any more", str(path))
        platform.make_blocking(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_sqlite(path: Path) -> bool:
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            return handle.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def looks_like_database(path: Path) -> bool:
    """Whether a file whose header cannot be read is probably an SQLite database."""
    if path.name.lower().endswith(DATABASE_SUFFIXES):
        return True
    return any(os.path.lexists(f"{path}{suffix}") for suffix in COMPANION_SUFFIXES)


def sqlite_page_size(path: Path) -> int:
    with os.fdopen(open_regular(path), "rb") as handle:
        header = handle.read(100)
    raw = int.from_bytes(header[16:18], "big")
    return 65536 if raw == 1 else raw or 4096


def _fingerprint(path: Path, info: os.stat_result, sqlite: bool, scan_ns: int) -> str:
    """Identity of a file's content as far as metadata can tell (restic/git style).

    For SQLite the companions count too: committed pages may live only in the WAL.
    """
    stats: list[os.stat_result | None] = [info]
    if sqlite:
        for suffix in COMPANION_SUFFIXES[::2]:  # -wal and -journal (not -shm)
            try:
                stats.append(Path(f"{path}{suffix}").stat())
            except FileNotFoundError:
                stats.append(None)
    parts = []
    for entry in stats:
        if entry is None:
            parts.append("-")
            continue
        # SQLite fchown()s its companions on open when run as root, which moves their
        # ctime without any change of content: for SQLite, mtime alone speaks.
        changed = entry.st_mtime_ns if sqlite else max(entry.st_mtime_ns, entry.st_ctime_ns)
        if changed > scan_ns - RACY_WINDOW_NS:
            return ""
        ctime = "" if sqlite else f":{entry.st_ctime_ns}"
        parts.append(f"{entry.st_ino}:{entry.st_size}:{entry.st_mtime_ns}{ctime}")
    return "|".join(parts)


def _item(path: Path, relative: str) -> SourceItem | None:
    scan_ns = time.time_ns()
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return SourceItem(
            relative, path, "symlink", 0o777, info.st_mtime_ns, 0, False, os.readlink(path)
        )
    if stat.S_ISDIR(info.st_mode):
        return SourceItem(
            relative, path, "dir", stat.S_IMODE(info.st_mode), info.st_mtime_ns, 0, False
        )
    if stat.S_ISREG(info.st_mode):
        sqlite = is_sqlite(path)
        return SourceItem(
            relative,
            path,
            "file",
            stat.S_IMODE(info.st_mode),
            info.st_mtime_ns,
            info.st_size,
            sqlite,
            "",
            _fingerprint(path, info, sqlite, scan_ns),
        )
    return None  # sockets, fifos, devices: not data


def _listed_item(root: Path, path: Path, warnings: list[str]) -> SourceItem | None:
    """The item of a listed entry; None if it is gone since, is not data, or cannot be
    read (then with a line in ``warnings``)."""
    relative = path.relative_to(root).as_posix()
    try:
        return _item(path, relative)
    except FileNotFoundError:
        return None  # deleted since the folder was listed (e.g. a -journal)
    except OSError as exc:
        warnings.append(
            f"{shown(relative)}: cannot read it ({describe(exc)}); it is not in this backup"
        )
        return None


def scan(root: Path, warnings: list[str]) -> tuple[str, list[SourceItem]]:
    """The kind of source ("folder"/"file") and its items, sorted, companions dropped.

    The root must be readable; a folder or entry below it that cannot be read is
    left out with a line in ``warnings``.
    """

    items: list[SourceItem] = []

    def unlisted(error: OSError) -> None:
        if Path(error.filename) == root:
            raise error
        relative = Path(error.filename).relative_to(root).as_posix()
        if isinstance(error, FileNotFoundError):  # deleted since its parent was listed
            items[:] = [item for item in items if item.relative != relative]
            return
        warnings.append(
            f"{shown(relative)}: cannot list this folder ({describe(error)}); "
            "its contents are not in this backup"
        )

    try:
        if root.is_file():
            item = _item(root, root.name)
            assert item is not None
            return "file", [item]
        if not root.is_dir():
            raise DataSourceError(f"the data path {root} does not exist")
        for folder, dirnames, filenames in os.walk(root, onerror=unlisted):
            dirnames.sort()
            folder_path = Path(folder)
            for name in sorted(dirnames + filenames):
                if RESTORE_MARKER not in name:
                    item = _listed_item(root, folder_path / name, warnings)
                    if item is not None:
                        items.append(item)
    except PermissionError as exc:
        raise DataSourceError(f"cannot read {exc.filename}: permission denied") from exc
    except OSError as exc:
        raise DataSourceError(f"cannot read the data path {root}: {exc.strerror}") from exc
    databases = {item.relative for item in items if item.sqlite}
    kept = [
        item
        for item in items
        if not any(
            item.relative.endswith(suffix) and item.relative[: -len(suffix)] in databases
            for suffix in COMPANION_SUFFIXES
        )
    ]
    return "folder", kept


# A whole scheduled backup is skipped on the strength of this signature, so it vouches
# only for entries older than the coarsest timestamps in use (HFS+ 1 s, FAT 2 s).
SIGNATURE_RACY_NS = 2_000_000_000


def data_signature(root: Path) -> str | None:
    """A digest of the metadata of everything a backup of ``root`` reads: path, type,
    mode, size, mtime_ns and inode of every entry, SQLite's ``-wal`` and ``-journal``
    included. ``-shm`` is left out: readers write it and no backup holds it.

    None when it cannot vouch for the content: an entry changed within
    ``SIGNATURE_RACY_NS`` of the scan, or something could not be listed. Equal
    signatures mean no backup would differ (as restic and git judge files).
    """
    import hashlib

    scan_ns = time.time_ns()
    digest = hashlib.blake2b(digest_size=20)

    def add(path: Path, relative: str) -> bool:
        info = path.lstat()
        kind, mode = stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):  # its entries speak for it (not its mtime, which
            record = f"{relative}\0{kind}\0{mode}\n"  # a -journal's coming and going moves)
        else:
            if max(info.st_mtime_ns, info.st_ctime_ns) > scan_ns - SIGNATURE_RACY_NS:
                return False
            target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
            record = (
                f"{relative}\0{kind}\0{mode}\0{info.st_size}\0{info.st_mtime_ns}\0"
                f"{info.st_ino}\0{target}\n"
            )
        digest.update(record.encode("utf-8", "surrogateescape"))
        return True

    try:
        if root.is_file():
            names = [root.name] + [
                f"{root.name}{suffix}"
                for suffix in COMPANION_SUFFIXES[::2]
                if Path(f"{root}{suffix}").exists()
            ]
            return digest.hexdigest() if all(add(root.parent / n, n) for n in names) else None
        if not root.is_dir():
            return None
        failed: list[OSError] = []
        for folder, dirnames, filenames in os.walk(root, onerror=failed.append):
            dirnames.sort()
            here = Path(folder)
            present = set(filenames)
            for name in sorted(dirnames + filenames):
                if RESTORE_MARKER in name or (name.endswith("-shm") and name[:-4] in present):
                    continue
                path = here / name
                if not add(path, path.relative_to(root).as_posix()):
                    return None
        return None if failed else digest.hexdigest()
    except OSError:  # changed or unreadable while scanned: back it up, the backup judges
        return None
