"""Looking into backups without restoring them: listing a folder, finding entries, and
choosing the entries a partial restore writes. Manifests only: nothing is fetched.

Paths are a backup's own: relative, '/'-separated, "" for the top. A path a user
types is checked as a manifest's is (``manifest.check_path``) before it is used.
A manifest may leave folders implicit (an entry whose folder has no entry of its
own): such a folder is listed as a folder all the same, without mode or time.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from cloudkeep.backups.manifest import ENTRY_TYPES, FileEntry, Manifest, check_path
from cloudkeep.backups.sources import COMPANION_SUFFIXES
from cloudkeep.errors import EntryNotFound, UserError

__all__ = [
    "Found",
    "Listing",
    "find",
    "list_entries",
    "normalize_path",
    "select",
]


def normalize_path(text: str) -> str:
    """A user's path inside a backup as the manifest writes it: "" (the top) for "", "/"
    or "."; surrounding slashes dropped; anything else must pass ``check_path``."""
    path = text.strip("/")
    if path in ("", "."):
        return ""
    problem = check_path(path)
    if problem:
        raise UserError(f"{text[:200]!r} is not a path inside a backup: {problem}")
    return path


def _implicit_folder(path: str) -> FileEntry:
    return FileEntry(path=path, type="dir", mode=0, mtime_ns=0)


def _parents(path: str) -> Iterable[str]:
    """The folders leading to ``path``, nearest first (never "")."""
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        yield path


def _not_found(manifest: Manifest, path: str) -> EntryNotFound:
    """Why ``path`` is no entry of ``manifest``: beneath a symlink or a file, or absent."""
    kinds = {entry.path: entry.type for entry in manifest.files}
    for parent in _parents(path):
        kind = kinds.get(parent)
        if kind is not None and kind != "dir":
            noun = "a symlink" if kind == "symlink" else "a file"
            return EntryNotFound(
                f"{path!r} is not in backup {manifest.id}: {parent!r} is {noun} there"
            )
    return EntryNotFound(f"{path!r} is not in backup {manifest.id}")


@dataclass(frozen=True, slots=True)
class Listing:
    """What ``ls`` shows: the entries under ``path`` of one backup (``path`` itself when it
    names a file or symlink), sorted by path."""

    manifest: Manifest
    path: str
    entries: list[FileEntry]


def list_entries(manifest: Manifest, path: str = "", recursive: bool = False) -> Listing:
    """The direct children of the folder ``path`` ("" the top), or its whole subtree with
    ``recursive``; a file or symlink ``path`` lists itself. ``EntryNotFound`` otherwise."""
    path = normalize_path(path)
    prefix = f"{path}/" if path else ""
    found: dict[str, FileEntry] = {}
    is_folder = not path
    for entry in manifest.files:
        if entry.path == path:
            if entry.type != "dir":
                return Listing(manifest, path, [entry])
            is_folder = True
            continue
        if not entry.path.startswith(prefix):
            continue
        is_folder = True
        rest = entry.path[len(prefix) :]
        if recursive:
            found[entry.path] = entry
            for parent in _parents(rest):  # folders the manifest leaves implicit
                found.setdefault(prefix + parent, _implicit_folder(prefix + parent))
        elif "/" in rest:
            child = prefix + rest.split("/", 1)[0]
            found.setdefault(child, _implicit_folder(child))
        else:
            found[entry.path] = entry
    if not is_folder:
        raise _not_found(manifest, path)
    return Listing(manifest, path, [found[key] for key in sorted(found)])


@dataclass(frozen=True, slots=True)
class Found:
    """The entries of one backup matching a ``find``, in the backup's order."""

    manifest: Manifest
    entries: list[FileEntry]


def find(
    manifests: Sequence[Manifest],
    pattern: str,
    kind: str | None = None,
    limit: int | None = None,
) -> tuple[list[Found], bool]:
    """The entries matching ``pattern`` in each of ``manifests`` (in the order given),
    and whether ``limit`` (matches in all) cut the answer short.

    As restic's ``find``: a shell pattern (``*``, ``?``, ``[...]``) matched against each
    entry's name, or against its whole path (from the top of the backup, a leading '/'
    ignored) when the pattern holds a '/'; there ``*`` stays within one name and ``**``
    spans folders. Case-sensitive.
    """
    if not pattern:
        raise UserError("the pattern is empty: give a name or a shell pattern such as '*.db'")
    if kind is not None and kind not in ENTRY_TYPES:
        raise UserError(f"--type is one of {', '.join(ENTRY_TYPES)}, not {kind!r}")
    whole_path = "/" in pattern
    matcher = _path_pattern(pattern.strip("/")) if whole_path else _name_pattern(pattern)
    groups: list[Found] = []
    left = limit
    for manifest in manifests:
        matched: list[FileEntry] = []
        for entry in manifest.files:
            if kind is not None and entry.type != kind:
                continue
            subject = entry.path if whole_path else entry.path.rsplit("/", 1)[-1]
            if matcher.match(subject) is None:
                continue
            if left is not None and left <= 0:
                if matched:
                    groups.append(Found(manifest, matched))
                return groups, True
            matched.append(entry)
            if left is not None:
                left -= 1
        if matched:
            groups.append(Found(manifest, matched))
    return groups, False


def _name_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def _path_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` over whole paths: ``*`` and ``?`` never match a '/', a ``**`` segment
    matches any number of folders (none included).

    No backtracking grows with the number of wildcards (a pattern of many stars took
    hours on a long name): as ``fnmatch`` does, what lies between two wildcards is
    matched at its first place in an atomic group, which is always a right place
    since the wildcard after it can take anything the first place leaves."""
    segments: list[str] = []
    for segment in pattern.split("/"):
        if not (segment == "**" and segments and segments[-1] == "**"):
            segments.append(segment)
    parts: list[str] = []
    index = 0
    while index < len(segments):
        segment = segments[index]
        last = index == len(segments) - 1
        index += 1
        if segment != "**":
            parts.append(_segment(segment) + ("" if last else "/"))
        elif last:
            parts.append(".*")
        elif "**" in segments[index:]:  # folders up to the next '**': the first that fit
            stop = segments.index("**", index)
            names = "".join(_segment(name) + "/" for name in segments[index:stop])
            parts.append(f"(?>(?:[^/]*/)*?{names})")
            index = stop
        else:
            parts.append("(?:[^/]*/)*")
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _segment(segment: str) -> str:
    """One name of a shell pattern as a regular expression that stays within the name."""
    chunks: list[list[str]] = [[]]  # what lies between the stars
    index = 0
    while index < len(segment):
        char = segment[index]
        index += 1
        if char == "*":
            if chunks[-1] or len(chunks) == 1:
                chunks.append([])
        elif char == "?":
            chunks[-1].append("[^/]")
        elif char == "[":
            close = segment.find("]", index + 1 if segment[index : index + 1] in "!]" else index)
            if close < 0:
                chunks[-1].append(re.escape(char))
                continue
            body = segment[index:close].replace("\\", "\\\\").replace("[", "\\[")
            if body.startswith("!"):
                body = "^/" + body[1:]  # a class never matches the '/' between names
            elif body.startswith("^"):
                body = "\\" + body
            chunks[-1].append(f"[{body}]")
            index = close + 1
        else:
            chunks[-1].append(re.escape(char))
    out = "".join(chunks[0])
    for number, chunk in enumerate(chunks[1:], 1):
        text = "".join(chunk)
        out += f"[^/]*{text}" if number == len(chunks) - 1 else f"(?>[^/]*?{text})"
    return out


def select(manifest: Manifest, paths: Iterable[str]) -> tuple[Manifest, list[str]]:
    """The part of ``manifest`` a restore of ``paths`` writes, and those paths normalized.

    Each path names a file, symlink or folder of the backup (a folder: its whole
    subtree); the folders leading to them come along (their entries, where the
    manifest has them), and so do the ``-wal``, ``-shm`` and ``-journal`` entries of a
    file the backup holds, and the database of such a companion (a database and its
    companions are one). ``EntryNotFound``
    for a path the backup does not hold, ``UserError`` for one that is no safe
    relative path. The top ("" or "/") selects everything.
    """
    wanted = [normalize_path(path) for path in paths]
    if not wanted:
        raise UserError("no path to restore was given")
    if "" in wanted:
        return manifest, [""]
    by_path = {entry.path: entry for entry in manifest.files}
    chosen: set[str] = set()
    roots: list[str] = []
    for path in dict.fromkeys(wanted):
        entry = by_path.get(path)
        prefix = path + "/"
        subtree = [e.path for e in manifest.files if e.path.startswith(prefix)]
        if entry is None and not subtree:
            raise _not_found(manifest, path)
        roots.append(path)
        chosen.add(path)
        chosen.update(subtree)
        if entry is not None and entry.type == "file":
            chosen.update(_database_unit(path, by_path))
    for path in list(chosen):
        chosen.update(parent for parent in _parents(path) if parent in by_path)
    files = [entry for entry in manifest.files if entry.path in chosen]
    part = replace(
        manifest,
        files=files,
        bytes=sum(entry.size for entry in files if entry.type == "file"),
    )
    return part, _outermost(roots)


def _database_unit(path: str, by_path: dict[str, FileEntry]) -> list[str]:
    """The files restored together with the file ``path``: a database and the ``-wal``,
    ``-shm`` and ``-journal`` the backup holds beside it (naming either names all: a log
    restored beside another database than its own would be replayed onto it)."""
    base = path
    for suffix in COMPANION_SUFFIXES:
        if path.endswith(suffix) and by_path.get(path[: -len(suffix)]) is not None:
            base = path[: -len(suffix)]
    unit = [base, *(base + suffix for suffix in COMPANION_SUFFIXES)]
    return [name for name in unit if name in by_path and by_path[name].type == "file"]


def _outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` less those inside another of them."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path.startswith(other + "/") for other in kept):
            kept.append(path)
    return kept
