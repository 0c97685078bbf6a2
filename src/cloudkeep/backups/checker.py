"""Verifying a repository and naming exactly the backups that damage affects.

Structure check: every manifest and index decrypts, every blob a backup needs
is indexed, and every indexed pack exists and is long enough. With
``read_data``, every pack is downloaded, its hash compared with its name, its
header with the index, and every blob decrypted and hashed against its id.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cloudkeep.backups.catalog import load_manifests
from cloudkeep.backups.gc_pause import gc_paused
from cloudkeep.backups.progress import ProgressFn, Tracker
from cloudkeep.backups.usage import blob_users
from cloudkeep.repository.index import MasterIndex
from cloudkeep.repository.locks import RepositoryLock
from cloudkeep.repository.packs import PackEntry, pack_id_of
from cloudkeep.repository.repository import BlobDamaged, Repository
from cloudkeep.repository.untrusted import shown

LOCK_TIMEOUT_SECONDS = 600.0


@dataclass
class CheckReport:
    backups: int = 0
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_backups: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Checker:
    def __init__(
        self,
        repo: Repository,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.repo = repo
        self.progress = progress
        self.cancel = cancel

    def run(self, read_data: bool) -> CheckReport:
        with (
            gc_paused(),
            RepositoryLock(self.repo, exclusive=False, purpose="check").acquire(
                LOCK_TIMEOUT_SECONDS
            ),
        ):
            return self._run(read_data)

    def _run(self, read_data: bool) -> CheckReport:
        report = CheckReport()
        repo = self.repo
        repo.bypass_cache()

        def index_damaged(_name: str, exc: Exception) -> None:
            report.errors.append(str(exc))

        indexed = repo.read_index(index_damaged)
        index = MasterIndex.of(indexed)
        stored = {pack_id: info.size for pack_id, info in repo.list_packs().items()}

        manifests, broken = load_manifests(repo)
        report.backups = len(manifests) + len(broken)
        for name, reason in broken.items():
            report.errors.append(reason)
            report.damaged_backups.append(name)
        users, list_problems = blob_users(repo, manifests, index)
        damaged: set[str] = set()
        for backup_id, problems in list_problems.items():
            damaged.add(backup_id)
            report.errors += [f"backup {backup_id}: {p}" for p in problems]

        used = list(users)
        bad_blobs = {used[at]: "not in any index" for at in index.missing(used)}
        _missing_or_truncated(indexed, stored, bad_blobs, report)
        for pack_id in stored.keys() - indexed.keys():
            report.warnings.append(
                f"pack {pack_id[:16]} is not indexed (left by an interrupted backup; "
                "the next prune deletes it)"
            )
        report.warnings += [
            f"ignored {shown(name)} in the store: not the name of a cloudkeep object"
            for name in repo.ignored
        ]
        report.packs = len(indexed)
        report.blobs = len(index)

        if read_data:
            self._read_all(indexed, stored, bad_blobs, report)

        for blob_id, reason in bad_blobs.items():
            affected = users.get(blob_id)
            if affected:
                damaged |= affected
                report.errors.append(
                    f"blob {blob_id.hex()[:16]} ({reason}) is needed by {len(affected)} backup(s)"
                )
        report.damaged_backups = sorted(set(report.damaged_backups) | damaged)
        return report

    def _read_all(
        self,
        indexed: dict[str, list[PackEntry]],
        stored: dict[str, int],
        bad_blobs: dict[bytes, str],
        report: CheckReport,
    ) -> None:
        packs = [p for p in indexed if p in stored]
        tracker = Tracker("check", sum(stored[p] for p in packs), self.progress, self.cancel)
        lock = threading.Lock()

        def verify(pack_id: str) -> None:
            tracker.check_canceled()
            content = self.repo.read_pack(pack_id, stored[pack_id])
            pack_problems: list[str] = []
            if pack_id_of(content) != pack_id:
                pack_problems.append("content does not match its name")
            try:
                header = {e.blob_id: e for e in self.repo.read_pack_header(content)}
                if any(header.get(e.blob_id) != e for e in indexed[pack_id]):
                    pack_problems.append("header disagrees with the index")
            except Exception as exc:
                pack_problems.append(f"header unreadable ({exc})")
            # Blobs are judged one by one: restore reads them through the index, so
            # only the blobs that fail here make a backup unrestorable.
            bad: dict[bytes, str] = {}

            def damaged(error: BlobDamaged) -> None:
                bad[error.blob_id] = error.reason

            self.repo.verify_pack_frames(pack_id, content, indexed[pack_id], damaged)
            with lock:
                report.bytes_read += len(content)
                if pack_problems:
                    report.errors.append(f"pack {pack_id[:16]}: {'; '.join(pack_problems)}")
                for blob_id, reason in bad.items():
                    bad_blobs.setdefault(blob_id, reason)
            tracker.advance(stored[pack_id])

        with ThreadPoolExecutor(4, thread_name_prefix="check") as pool:
            for future in [pool.submit(verify, p) for p in packs]:
                future.result()


def _missing_or_truncated(
    indexed: dict[str, list[PackEntry]],
    stored: dict[str, int],
    bad_blobs: dict[bytes, str],
    report: CheckReport,
) -> None:
    """Report indexed packs the store lacks or holds shorter than indexed; their blobs
    are bad (the first reason found for a blob stays)."""
    for pack_id, entries in indexed.items():
        end = max((e.offset + e.length for e in entries), default=0)
        if pack_id not in stored:
            reason = f"pack {pack_id[:16]} is missing"
        elif stored[pack_id] < end + 4:
            reason = f"pack {pack_id[:16]} is truncated"
        else:
            continue
        report.errors.append(reason)
        for entry in entries:
            bad_blobs.setdefault(entry.blob_id, reason)
