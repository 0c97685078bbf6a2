"""Which blobs each backup needs: shared by check and prune."""

from __future__ import annotations

from collections import defaultdict

from cloudkeep.backups.manifest import Manifest, decode_chunk_list
from cloudkeep.repository.index import MasterIndex
from cloudkeep.repository.repository import BlobDamaged, Repository

__all__ = ["blob_users"]


def blob_users(
    repo: Repository, manifests: list[Manifest], index: MasterIndex | None = None
) -> tuple[dict[bytes, set[str]], dict[str, list[str]]]:
    """blob id → ids of the backups that need it; and per backup, unreadable lists.

    Chunk lists are found through ``index`` (default: the repository's loaded one).
    Every chunk-list blob is read once, many per ranged read (``Repository.load_blobs``).
    """
    users: dict[bytes, set[str]] = defaultdict(set)
    problems: dict[str, list[str]] = defaultdict(list)
    wanted: dict[bytes, None] = {}
    for manifest in manifests:
        for entry in manifest.files:
            for list_hex in entry.content:
                wanted[bytes.fromhex(list_hex)] = None
    listed: dict[bytes, list[bytes] | str] = {}

    def damaged(error: BlobDamaged) -> None:
        listed[error.blob_id] = str(error)

    for list_id, content in repo.load_blobs(wanted, damaged, index=index):
        try:
            listed[list_id] = [bid for bid, _ in decode_chunk_list(bytes(content))]
        except ValueError as exc:
            listed[list_id] = str(exc)
    for manifest in manifests:
        for entry in manifest.files:
            for list_hex in entry.content:
                list_id = bytes.fromhex(list_hex)
                users[list_id].add(manifest.id)
                chunks = listed.get(list_id, "was not read")
                if isinstance(chunks, str):
                    problems[manifest.id].append(f"{entry.path}: {chunks}")
                    continue
                for blob_id in chunks:
                    users[blob_id].add(manifest.id)
    return users, problems
