"""The backups of a repository: its backup files listed, loaded and decoded, in one place."""

from __future__ import annotations

from cloudkeep.backups.manifest import Manifest
from cloudkeep.errors import FormatTooNew, RepositoryDamaged
from cloudkeep.repository.repository import Repository
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
