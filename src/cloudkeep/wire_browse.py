"""The JSON of browsing a backup (``ls``, ``find``), shared by the CLI's ``--json`` and the
API's ``/cloudkeep/backups/{id}/files`` and ``/cloudkeep/find`` (docs/api.md).

An entry: ``{"name", "path", "type": "file|dir|symlink", "size", "mode" (as ``ls -l``
shows it, e.g. ``-rw-r--r--``), "mtime" (ISO 8601, UTC; null for a folder the backup
lists only through its content), "sqlite", "target" (a symlink's; else null)}``.
Names and paths are the backup's text as stored: shown, never used as local paths.
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudkeep.backups.browse import Found, Listing
    from cloudkeep.backups.manifest import FileEntry

__all__ = ["entry_mode", "entry_time", "entry_to_json", "found_to_json", "listing_to_json"]

_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def entry_mode(entry: FileEntry) -> str:
    """The entry's type and permissions as ``ls -l`` shows them; ``d?????????`` for a folder
    the backup holds only implicitly (no mode recorded)."""
    if entry.type == "dir" and entry.mode == 0 and entry.mtime_ns == 0:
        return "d?????????"
    return stat.filemode(_TYPE_BITS[entry.type] | entry.mode)


def entry_time(entry: FileEntry) -> datetime | None:
    """The entry's modification time (UTC); None where the backup has none."""
    if entry.mtime_ns == 0:
        return None
    return datetime.fromtimestamp(entry.mtime_ns / 1e9, tz=UTC)


def entry_to_json(entry: FileEntry) -> dict[str, Any]:
    moment = entry_time(entry)
    return {
        "name": entry.path.rsplit("/", 1)[-1],
        "path": entry.path,
        "type": entry.type,
        "size": entry.size,
        "mode": entry_mode(entry),
        "mtime": None if moment is None else moment.isoformat(),
        "sqlite": entry.sqlite,
        "target": entry.target or None,
    }


def listing_to_json(listing: Listing) -> dict[str, Any]:
    manifest = listing.manifest
    return {
        "backup": manifest.id,
        "created": manifest.created,
        "device_name": manifest.device_name,
        "path": listing.path,
        "entries": [entry_to_json(entry) for entry in listing.entries],
    }


def found_to_json(groups: list[Found], truncated: bool) -> dict[str, Any]:
    """Every match flat, newest backup first (as the groups are)."""
    matches = []
    for group in groups:
        manifest = group.manifest
        for entry in group.entries:
            moment = entry_time(entry)
            matches.append(
                {
                    "backup": manifest.id,
                    "device_name": manifest.device_name,
                    "created": manifest.created,
                    "path": entry.path,
                    "type": entry.type,
                    "size": entry.size,
                    "mtime": None if moment is None else moment.isoformat(),
                }
            )
    return {"matches": matches, "truncated": truncated}
