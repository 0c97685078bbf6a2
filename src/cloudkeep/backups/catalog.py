"""The backups of a repository: its backup files listed, loaded and decoded, in one place."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from cloudkeep.backups.manifest import Manifest
from cloudkeep.errors import (
    AmbiguousBackupId,
    BackupNotFound,
    FormatTooNew,
    InvalidBackupId,
    RepositoryDamaged,
)
from cloudkeep.repository.repository import Repository
from cloudkeep.repository.untrusted import shown
from cloudkeep.storage.base import ObjectNotFound

#: What decoding a manifest that is no valid one raises.
DECODE_ERRORS = (ValueError, TypeError, KeyError, AttributeError)


def load_manifest(repo: Repository, name: str) -> Manifest:
    """The manifest of backup file ``name``: sealed for that name, and naming itself so.

    Raises ``ObjectNotFound`` if it is gone, ``RepositoryDamaged`` or ``FormatTooNew``
    if it does not read, one of ``DECODE_ERRORS`` if it does not decode.
    """
    return Manifest.decode(repo.load_backup(name), name)


def load_manifests(repo: Repository) -> tuple[list[Manifest], dict[str, str]]:
    """Every readable manifest, and why each unreadable one failed (by name).

    A backup deleted between the listing and its reading is left out.
    """
    manifests: list[Manifest] = []
    broken: dict[str, str] = {}
    for name in repo.list_backups():
        try:
            manifests.append(load_manifest(repo, name))
        except ObjectNotFound:
            continue
        except (RepositoryDamaged, FormatTooNew) as exc:
            broken[name] = str(exc)
        except DECODE_ERRORS as exc:
            broken[name] = f"snapshots/{name} does not decode: {exc}"
    return manifests, broken


#: What a user types for the newest backup (see ``choose_latest``).
LATEST = "latest"
#: What an id or a prefix of one may hold (a backup id is ``version_timestamp``).
_ID_PREFIX = re.compile(r"[0-9A-Za-z.+_-]{1,53}")
_SHOWN = 3  # candidates or devices named in an error before "and N more"


def _some(items: Sequence[str]) -> str:
    """The first few of ``items``, comma-separated, and how many more there are."""
    listed = ", ".join(items[:_SHOWN])
    more = len(items) - _SHOWN
    return f"{listed} and {more} more" if more > 0 else listed


def match_prefix(names: Iterable[str], text: str, store: str) -> str:
    """The backup named ``text``: its exact id, or the one id it is a prefix of.

    ``names`` are the store's backup names (already validated). ``InvalidBackupId``
    for text no id can start with, ``AmbiguousBackupId`` (naming a few) when it
    starts several, ``BackupNotFound`` when none.
    """
    if not _ID_PREFIX.fullmatch(text):
        raise InvalidBackupId(
            f"no backup {text[:80]!r}: backup ids look like 0.1.0_1764199800123456 "
            "(a unique beginning of one, or 'latest', will do)"
        )
    matches = sorted({name for name in names if name.startswith(text)}, reverse=True)
    if text in matches:
        return text
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise BackupNotFound(f"no backup {text} in {store} (see 'cloudkeep list')")
    raise AmbiguousBackupId(
        f"{text} begins {len(matches)} backups ({_some(matches)}): give more of the id"
    )


def choose_latest(manifests: Sequence[Manifest], this_device: str, device: str | None) -> Manifest:
    """The newest backup of ``device``, or without one, the newest one safe to call
    "latest" in a store several devices share: this device's when it has any, else
    the only device's; with several other devices, ``AmbiguousBackupId`` naming them
    (choose with ``--device``).
    """
    devices = sorted({manifest.device_name for manifest in manifests})
    wanted = device
    if wanted is None:
        if this_device in devices:
            wanted = this_device
        elif len(devices) == 1:
            wanted = devices[0]
        elif not devices:
            raise BackupNotFound("no backups yet: there is no latest one")
        else:
            raise AmbiguousBackupId(
                f"this device ({shown(this_device)}) has no backups and {len(devices)} "
                f"others have: choose one with --device NAME "
                f"({_some([shown(name) for name in devices])})"
            )
    own = [manifest for manifest in manifests if manifest.device_name == wanted]
    if not own:
        known = f" (devices: {_some([shown(name) for name in devices])})" if devices else ""
        raise BackupNotFound(f"no backup of device {shown(wanted)}{known}")
    return max(own, key=lambda manifest: id_time(manifest.id))


def id_time(backup_id: str) -> int:
    """When a backup was made (microseconds since the epoch), from its validated id: the
    manifest's own ``timestamp`` field is a key holder's text, not checked to be a number."""
    return int(backup_id.rsplit("_", 1)[1])
