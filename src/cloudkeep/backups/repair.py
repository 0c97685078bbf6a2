"""Rebuilding the index from the packs' own headers.

Every pack ends with a sealed header listing its blobs, so the index is redundant:
if index files are deleted or damaged, the backups are not lost.
``Repository.rebuild_index`` does the work; here it runs under the exclusive lock,
so no backup or prune changes packs meanwhile.
"""

from __future__ import annotations

from cloudkeep.repository.locks import RepositoryLock
from cloudkeep.repository.repository import IndexRebuild, Repository


def repair_index(repo: Repository, lock_timeout: float = 30.0) -> IndexRebuild:
    with RepositoryLock(repo, exclusive=True, purpose="index repair").acquire(lock_timeout):
        return repo.rebuild_index()
