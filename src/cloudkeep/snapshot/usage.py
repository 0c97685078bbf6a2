"""Which blobs each backup needs: shared by check and space reclaim."""

from __future__ import annotations

from collections import defaultdict

from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.repository import BlobDamaged, Repository
from cloudkeep.snapshot.manifest import Manifest, decode_chunk_list


def load_manifests(repo: Repository) -> tuple[list[Manifest], dict[str, str]]:
    """Every readable manifest, and the reasons the unreadable ones failed."""
    manifests, broken = [], {}
    for name in repo.list_files("snapshots"):
        try:
            manifests.append(Manifest.decode(repo.load_file("snapshots", name), name))
        except RepositoryDamaged as exc:
            broken[name] = str(exc)
        except (ValueError, TypeError, KeyError) as exc:
            broken[name] = f"snapshots/{name} does not decode: {exc}"
    return manifests, broken


def blob_users(
    repo: Repository, manifests: list[Manifest]
) -> tuple[dict[bytes, set[str]], dict[str, list[str]]]:
    """blob id → ids of the backups that need it; and per backup, unreadable lists.

    Chunk-list blobs shared by many backups are read once.
    """
    users: dict[bytes, set[str]] = defaultdict(set)
    problems: dict[str, list[str]] = defaultdict(list)
    listed: dict[bytes, list[bytes] | str] = {}
    for manifest in manifests:
        for entry in manifest.files:
            for list_hex in entry.content:
                list_id = bytes.fromhex(list_hex)
                users[list_id].add(manifest.id)
                if list_id not in listed:
                    try:
                        listed[list_id] = [
                            bid for bid, _ in decode_chunk_list(repo.read_blob(list_id))
                        ]
                    except (BlobDamaged, ValueError) as exc:
                        listed[list_id] = str(exc)
                content = listed[list_id]
                if isinstance(content, str):
                    problems[manifest.id].append(f"{entry.path}: {content}")
                    continue
                for blob_id in content:
                    users[blob_id].add(manifest.id)
    return users, problems
