"""Manifests: what one backup holds, and the Backup metadata users see.

A backup exists exactly when its manifest ``snapshots/<id>`` exists. The id is
``version_timestamp`` (cloudkeep version, microseconds since the epoch), made
unique across devices sharing a store by writing the manifest create-only and
moving the timestamp on by one microsecond when the name is taken.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import struct
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from itertools import starmap
from typing import Any

from cloudkeep import __version__
from cloudkeep.errors import FormatTooNew, InvalidBackupId, RepositoryDamaged, UnsafeBackup
from cloudkeep.platform import system_label
from cloudkeep.repository.crypto import ID_SIZE
from cloudkeep.repository.untrusted import parse_json

MANIFEST_FORMAT = 1
BACKUP_ID = re.compile(r"^[0-9A-Za-z.+-]{1,32}_[0-9]{1,20}$")
CHUNK_LIST_ENTRY = struct.Struct("<32sI")
CHUNKS_PER_LIST_BLOB = 4096
ENTRY_TYPES = ("file", "dir", "symlink")
# Bounds of what a manifest may hold: far above any real data folder, low enough that a
# hostile one cannot exhaust memory or the restorer's arithmetic.
MAX_ENTRIES = 10_000_000
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_TEXT_CHARS = 4096
MAX_LISTS_PER_FILE = 1 << 20
MAX_WARNINGS = 100_000
MAX_INT = (1 << 63) - 1
PERMISSION_BITS = 0o777  # setuid, setgid and sticky bits are never restored
_CHUNK_LIST_ID = re.compile(r"^[0-9a-f]{64}$")


def validate_backup_id(backup_id: str) -> str:
    if not BACKUP_ID.fullmatch(backup_id):
        raise InvalidBackupId(
            f"no backup {backup_id[:80]!r}: backup ids look like 0.1.0_1764199800123456"
        )
    return backup_id


def current_platform() -> str:
    """This system as a backup records it (LINUX, MACOS, WINDOWS or UNKNOWN)."""
    return system_label()


def new_backup_id(timestamp_us: int) -> str:
    return f"{__version__}_{timestamp_us}"


def now_us() -> int:
    return time.time_ns() // 1000


def encode_chunk_list(chunks: list[tuple[bytes, int]]) -> bytes:
    return b"".join(starmap(CHUNK_LIST_ENTRY.pack, chunks))


def decode_chunk_list(raw: bytes | memoryview) -> list[tuple[bytes, int]]:
    if len(raw) % CHUNK_LIST_ENTRY.size:
        raise ValueError("chunk list has a partial entry")
    return list(CHUNK_LIST_ENTRY.iter_unpack(raw))


@dataclass(slots=True)
class FileEntry:
    """One node of the backed-up tree; ``content`` holds ids of chunk-list blobs."""

    path: str
    type: str  # "file" | "dir" | "symlink"
    mode: int = 0o644
    mtime_ns: int = 0
    size: int = 0
    sqlite: bool = False
    target: str = ""
    content: list[str] = field(default_factory=list)
    fingerprint: str = ""


@dataclass(slots=True)
class Manifest:
    id: str
    version: str
    timestamp: str
    bytes: int
    created: str
    device_name: str
    platform: str
    hostname: str
    source: str
    kind: str  # "folder" | "file"
    files: list[FileEntry]
    format: int = MANIFEST_FORMAT
    warnings: list[str] = field(default_factory=list)
    added_bytes: int = 0  # what this backup uploaded (new packs), for users and benchmarks
    root_mode: int | None = None  # permission bits of the backed-up folder itself

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def encode(self) -> builtins.bytes:
        # The document asdict() gave (same keys, same order), without its deep copy
        # of every entry: a third of the time of saving a manifest.
        document = {name: getattr(self, name) for name in _MANIFEST_FIELDS}
        document["files"] = [
            {name: getattr(entry, name) for name in _ENTRY_FIELDS} for entry in self.files
        ]
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: builtins.bytes, name: str | None = None) -> Manifest:
        """Parse and validate a manifest (``name``: the one it was stored under).

        A manifest is untrusted even when it decrypts: any key holder can write
        one. Every field is type-checked and bounded, every path must stay inside
        the restore target (see ``check_path``) and modes keep only permission
        bits; anything else raises ``UnsafeBackup`` naming the backup and entry.
        """
        label = name
        try:
            document = parse_json(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnsafeBackup(f"backup {label}: the manifest is not valid JSON ({exc})") from None
        if not isinstance(document, dict):
            raise UnsafeBackup(f"backup {label}: the manifest is not a JSON object")
        if label is None:
            label = str(document.get("id"))[:80]
        format_ = document.get("format", MANIFEST_FORMAT)
        if isinstance(format_, int) and not isinstance(format_, bool) and format_ > MANIFEST_FORMAT:
            raise FormatTooNew(
                f"backup {label} was written in format {format_}, "
                f"this cloudkeep reads up to {MANIFEST_FORMAT}: update cloudkeep"
            )
        if name is not None and document.get("id") != name:
            # Sealing binds the file to its name; its content must name the same backup.
            raise RepositoryDamaged(
                f"snapshots/{name} is damaged: it holds backup {str(document.get('id'))[:80]}"
            )
        return _Validator(label).manifest(document)


_MANIFEST_FIELDS = tuple(f.name for f in fields(Manifest))
_ENTRY_FIELDS = tuple(f.name for f in fields(FileEntry))


def check_path(path: str) -> str | None:
    """Why ``path`` may not name a restored entry, or None if it is a safe relative path.

    Relative, '/'-separated, no empty, '.' or '..' segment (backslashes count as
    separators for this test, so ``..\\x`` is refused too), no NUL, and within
    the lengths a filesystem accepts.
    """
    if not path:
        return "the path is empty"
    if "\0" in path:
        return "the path holds a NUL byte"
    if path.startswith(("/", "\\")):
        return "the path is absolute"
    try:
        encoded = os.fsencode(path)
    except UnicodeError:
        return "the path is not a valid file name"
    if len(encoded) > MAX_PATH_BYTES:
        return "the path is too long"
    for segment in re.split(r"[/\\]", path):
        if segment in ("", ".", ".."):
            return f"the path has a {segment!r} segment"
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in path.split("/")):
        return "a name in the path is too long"
    return None


class _Validator:
    """Checks one decoded manifest document field by field."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, reason: str, entry: int | None = None, path: object = None) -> UnsafeBackup:
        where = "" if entry is None else f" (entry #{entry}, {str(path)[:120]!r})"
        return UnsafeBackup(
            f"backup {self.label} is unsafe to restore{where}: {reason}; it was written by "
            "a damaged or hostile client (delete it, or restore another backup)"
        )

    def integer(
        self, value: object, what: str, entry: int | None = None, path: object = None, low: int = 0
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
            raise self.fail(f"{what} is not an integer in range", entry, path)
        return value

    def text(
        self,
        value: object,
        what: str,
        entry: int | None = None,
        path: object = None,
        limit: int = MAX_TEXT_CHARS,
    ) -> str:
        if not isinstance(value, str) or len(value) > limit or "\0" in value:
            raise self.fail(f"{what} is not a short text", entry, path)
        return value

    def manifest(self, document: dict[str, Any]) -> Manifest:
        get = document.get
        backup_id = self.text(get("id"), "its id")
        if not BACKUP_ID.fullmatch(backup_id):
            raise self.fail("its id is malformed")
        created = self.text(get("created"), "its date", limit=64)
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise self.fail("its date is malformed") from None
        kind = get("kind")
        if kind not in ("folder", "file"):
            raise self.fail(f"its kind {str(kind)[:20]!r} is unknown")
        files = get("files")
        if not isinstance(files, list) or len(files) > MAX_ENTRIES:
            raise self.fail("its file list is malformed")
        warnings = get("warnings", [])
        if not isinstance(warnings, list) or len(warnings) > MAX_WARNINGS:
            raise self.fail("its warnings are malformed")
        root_mode = get("root_mode")
        manifest = Manifest(
            id=backup_id,
            version=self.text(get("version"), "its version", limit=64),
            timestamp=self.text(get("timestamp"), "its timestamp", limit=32),
            bytes=self.integer(get("bytes"), "its size"),
            created=created,
            device_name=self.text(get("device_name"), "its device name"),
            platform=self.text(get("platform"), "its platform", limit=64),
            hostname=self.text(get("hostname"), "its host name"),
            source=self.text(get("source"), "its source path"),
            kind=kind,
            files=[self.entry(number, raw) for number, raw in enumerate(files)],
            format=self.integer(get("format", MANIFEST_FORMAT), "its format"),
            warnings=[self.text(w, "a warning", limit=4 * MAX_TEXT_CHARS) for w in warnings],
            added_bytes=self.integer(get("added_bytes", 0), "its added bytes"),
            root_mode=None
            if root_mode is None
            else self.integer(root_mode, "its folder mode") & PERMISSION_BITS,
        )
        self.tree(manifest)
        return manifest

    def entry(self, number: int, raw: object) -> FileEntry:
        if not isinstance(raw, dict) or not set(raw) <= set(_ENTRY_FIELDS):
            raise self.fail("is not a file entry", number)
        path = raw.get("path")
        if not isinstance(path, str):
            raise self.fail("has no path", number, path)
        problem = check_path(path)
        if problem:
            raise self.fail(problem, number, path)
        kind = raw.get("type")
        if kind not in ENTRY_TYPES:
            raise self.fail(
                f"has type {str(kind)[:20]!r}: only files, folders and symlinks are restored",
                number,
                path,
            )
        sqlite = raw.get("sqlite", False)
        content = raw.get("content", [])
        if not isinstance(sqlite, bool):
            raise self.fail("has a malformed SQLite flag", number, path)
        if not isinstance(content, list) or len(content) > MAX_LISTS_PER_FILE:
            raise self.fail("has a malformed content list", number, path)
        for list_id in content:
            if not isinstance(list_id, str) or not _CHUNK_LIST_ID.fullmatch(list_id):
                raise self.fail("has a malformed chunk-list id", number, path)
        entry = FileEntry(
            path=path,
            type=kind,
            mode=self.integer(raw.get("mode", 0o644), "its mode", number, path) & PERMISSION_BITS,
            mtime_ns=self.integer(raw.get("mtime_ns", 0), "its time", number, path, -MAX_INT),
            size=self.integer(raw.get("size", 0), "its size", number, path),
            sqlite=sqlite,
            target=self.text(raw.get("target", ""), "its link target", number, path),
            content=content,
            fingerprint=self.text(raw.get("fingerprint", ""), "its fingerprint", number, path),
        )
        if kind == "symlink" and not entry.target:
            raise self.fail("is a symlink without a target", number, path)
        if kind != "file" and (entry.content or entry.size):
            raise self.fail(f"is a {kind} with content", number, path)
        if kind != "symlink" and entry.target:
            raise self.fail(f"is a {kind} with a link target", number, path)
        return entry

    def tree(self, manifest: Manifest) -> None:
        """No duplicates, nothing beneath a symlink or a file; a file source is one file."""
        types: dict[str, str] = {}
        for number, entry in enumerate(manifest.files):
            if entry.path in types:
                raise self.fail("appears twice", number, entry.path)
            types[entry.path] = entry.type
        for number, entry in enumerate(manifest.files):
            parent = entry.path
            while "/" in parent:
                parent = parent.rsplit("/", 1)[0]
                if types.get(parent, "dir") != "dir":
                    raise self.fail(
                        f"lies beneath the {types[parent]} {parent!r}", number, entry.path
                    )
        if manifest.kind == "file" and (
            len(manifest.files) != 1
            or manifest.files[0].type != "file"
            or "/" in manifest.files[0].path
        ):
            raise self.fail("a single-file backup must hold exactly one file")


def created_from_us(timestamp_us: int) -> str:
    return datetime.fromtimestamp(timestamp_us / 1_000_000, tz=UTC).isoformat()


assert CHUNK_LIST_ENTRY.size == ID_SIZE + 4
