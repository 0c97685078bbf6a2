"""The data folder and the repository it is kept in: what both front ends drive.

The CLI and the HTTP server only translate between their users and these
methods; all of them block, so the server runs them in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cloudkeep.backups.progress import Progress, ProgressFn
from cloudkeep.errors import (
    BackupNotFound,
    DataInUse,
    KeyMissing,
    RepositoryChanged,
    RepositoryDamaged,
    RepositoryExists,
    RepositoryNotFound,
    UserError,
)
from cloudkeep.repository.trust import Joined, TrustStore
from cloudkeep.repository.untrusted import shown
from cloudkeep.settings import Settings, warn_if_exposed
from cloudkeep.storage.base import ObjectNotFound, Storage
from cloudkeep.storage.limits import limit_concurrency, store_connections
from cloudkeep.storage.url import open_store

# Imported where used: a CLI process runs one operation; a backup imports the
# repository and the archiver while its key is derived (see ``_open_soon``).
if TYPE_CHECKING:
    from cloudkeep.backups.checker import CheckReport
    from cloudkeep.backups.manifest import Manifest
    from cloudkeep.backups.prune import PruneReport
    from cloudkeep.repository.crypto import MasterKey
    from cloudkeep.repository.repository import IndexRebuild, Repository

__all__ = ["BackupInfo", "Progress", "Workspace"]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackupInfo:
    id: str
    version: str
    timestamp: str
    bytes: int
    created: datetime
    device_name: str
    platform: str
    warnings: tuple[str, ...] = ()
    added_bytes: int = 0
    # Set by a restore: how many bytes the local data supplied and how many were fetched.
    reused_bytes: int = 0
    fetched_bytes: int = 0
    # Set by an in-place restore: where the data it replaced is kept ("" if nothing was).
    undo_path: str = ""

    @classmethod
    def of(cls, manifest: Manifest) -> BackupInfo:
        return cls(
            id=manifest.id,
            version=manifest.version,
            timestamp=manifest.timestamp,
            bytes=manifest.bytes,
            created=manifest.created_at,
            device_name=manifest.device_name,
            platform=manifest.platform,
            warnings=tuple(manifest.warnings),
            added_bytes=manifest.added_bytes,
        )


class Workspace:
    def __init__(self, settings: Settings, notice: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._notice = notice or (lambda message: log.warning("%s", message))
        self._storage: Storage | None = None
        self._unlocked: tuple[dict, MasterKey] | None = None
        self._open_lock = threading.Lock()
        self._trust = TrustStore(settings.config_dir)
        # Set when this workspace created the repository (it may lose a creation race).
        self._created_here = False

    # ------------------------------------------------------------------ opening
    @property
    def storage(self) -> Storage:
        if self._storage is None:
            # At most CLOUDKEEP_STORE_CONNECTIONS requests in flight, whoever makes them.
            self._storage = limit_concurrency(open_store(self.settings.store), store_connections())
        return self._storage

    def _known_passphrase(self) -> str | None:
        """The passphrase given or in the default key file; None if there is neither."""
        if self.settings.passphrase:
            if self.settings.passphrase_file is not None:
                warn_if_exposed(self.settings.passphrase_file, self._notice)
            return self.settings.passphrase
        key_file = self.settings.default_key_file
        if key_file.exists():
            warn_if_exposed(key_file, self._notice)
            return key_file.read_text(encoding="utf-8").strip()
        return None

    def _passphrase(self, creating: bool) -> str:
        known = self._known_passphrase()
        if known is not None:
            return known
        key_file = self.settings.default_key_file
        if not creating:
            raise KeyMissing(
                "no passphrase given and no key file at "
                f"{key_file}: set CLOUDKEEP_PASSPHRASE or use --passphrase-file"
            )
        import secrets  # imports hmac and OpenSSL's hashlib: only to make a key

        key_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        self._notice(
            f"generated a new repository key at {key_file} (mode 0600). Keep a copy of it "
            "somewhere safe: without it your backups cannot be read."
        )
        return key_file.read_text(encoding="utf-8").strip()

    def init(self) -> None:
        from cloudkeep.repository.repository import Repository

        if Repository.exists(self.storage):
            raise RepositoryExists(f"a repository already exists at {self.storage.describe()}")
        repo = Repository.init(self.storage, self._passphrase(creating=True))
        self._joined(repo, created=True)

    def repository(
        self, create: bool = False, opening: Future[Repository] | None = None
    ) -> Repository:
        """A fresh handle on the unlocked repository (one per operation: own index).

        ``opening`` is an opening started by ``_open_soon``; its outcome is used.
        """
        from cloudkeep.repository.repository import Repository, with_cache

        with self._open_lock:
            if self._unlocked is None:
                try:
                    repo = opening.result() if opening else self._open()
                except RepositoryNotFound:
                    if not create:
                        raise
                    self._refuse_vanished()
                    try:
                        repo = Repository.init(self.storage, self._passphrase(True))
                        self._joined(repo, created=True)
                    except RepositoryExists:  # another device created it meanwhile
                        repo = self._open()
            assert self._unlocked is not None  # set by _joined
            config, key = self._unlocked
            storage = with_cache(self.storage, self._cache(), config)
            handle = Repository(storage, config, key)
            # Only the creator's first backup may lose the creation race; any other
            # handle leaves what it wrote (others may already use it) to prune.
            handle.discard_if_replaced = self._created_here
        return handle

    def _refuse_vanished(self) -> None:
        """A store this device joined has no repository: refuse to create a new one.

        Someone deleted the config (by mistake, or a keyless writer): starting a new
        repository silently would hide every earlier backup and replace the trust record.
        """
        record = self._trust.joined(self._store_identity())
        if record is not None:
            raise RepositoryNotFound(
                f"the repository this device joined at {self.storage.describe()} is gone "
                f"(no config): if it was deleted on purpose, delete "
                f"{self._trust.path(self._store_identity())} to start a new one there"
            )

    def _open(self, adopting: bool = False) -> Repository:
        """Open the existing repository: the config first ("no repository" comes before
        "no key"), then this device's trust record, then the key.

        ``adopting``: the repository this device created lost the creation race;
        the trust record is not checked (it names the losing key) but replaced.
        """
        from cloudkeep.repository.repository import Repository

        config = Repository.read_config(self.storage)
        joined = (
            None
            if adopting
            else self._trust.check(
                self._store_identity(), self.storage.describe(), config["id"], config["key"]
            )
        )
        repo = Repository.unlock(
            self.storage,
            config,
            self._passphrase(False),
            joined.key_file if joined else None,
        )
        self._joined(repo, created=False)
        return repo

    def _joined(self, repo: Repository, created: bool) -> None:
        """Remember the repository this device now uses (trust on first use)."""
        self._trust.remember(
            self._store_identity(), Joined(repo.config["id"], repo.config["key"], repo.key_file)
        )
        self._created_here = created
        self._unlocked = (repo.config, repo.key)

    def _store_identity(self) -> str:
        """What the trust record is keyed by: the store as opened (an absolute folder,
        bucket and prefix, endpoint), not as spelled. Two spellings of one store share
        a record; one relative path in two working folders does not."""
        return self.storage.describe()

    def _cache(self) -> Path:
        return self.settings.cache_dir / "repositories"

    def _open_soon(self, pool: ThreadPoolExecutor) -> Future[Repository] | None:
        """Start opening the repository in ``pool`` if a passphrase is known.

        Argon2id releases the GIL, so whatever the caller does next
        (importing the engine) runs meanwhile instead of after it. ``repository()``
        takes its outcome, errors included.
        """
        if self._unlocked is not None or not self._known_passphrase():
            return None
        self.storage  # noqa: B018 - opened here, not in two threads at once
        return pool.submit(self._open)

    # --------------------------------------------------------------- operations
    def backup(
        self, progress: ProgressFn | None = None, cancel: threading.Event | None = None
    ) -> BackupInfo:
        data = self.settings.data
        if self.settings.data_is_default:
            data.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlock") as pool:
            opening = self._open_soon(pool)
            from cloudkeep.backups.archiver import Archiver  # while Argon2 runs

            repo = self.repository(create=True, opening=opening)
        archiver = Archiver(repo, self.settings.cache_dir / "scratch", progress, cancel)
        try:
            info = BackupInfo.of(archiver.run(data, self.settings.device_name))
        except RepositoryChanged:
            if not self._created_here:
                raise
        else:
            # Published under our key: the creation race is over. A config replaced
            # later is a tampered store, never a winner to join (a server lives long).
            self._created_here = False
            return info
        # We created the repository, but a store without atomic create let another
        # device replace its config: nothing was published; join the winner, once.
        # The trust record is replaced only once the winner's key opens: a failure
        # leaves this device refusing the replaced config, not trusting the next one.
        with self._open_lock:
            self._unlocked = None
            self._created_here = False
            self._open(adopting=True)
        scratch = self.settings.cache_dir / "scratch"
        archiver = Archiver(self.repository(), scratch, progress, cancel)
        return BackupInfo.of(archiver.run(data, self.settings.device_name))

    def data_signature(self) -> str | None:
        """The data folder's metadata signature (``sources.data_signature``): equal
        signatures mean a new backup would hold nothing new; None when it cannot tell."""
        from cloudkeep.backups.sources import data_signature

        return data_signature(self.settings.data)

    def list(self) -> list[BackupInfo]:
        try:
            repo = self.repository()
        except RepositoryNotFound:
            return []
        from cloudkeep.backups.catalog import load_manifests

        manifests, broken = load_manifests(repo)
        infos = [BackupInfo.of(manifest) for manifest in manifests]
        for name, reason in broken.items():
            self._notice(f"warning: skipped backup {name}: {reason}")
        for name in repo.ignored:
            self._notice(
                f"warning: ignored {shown(name)} in the store: not the name of a cloudkeep object"
            )
        infos.sort(key=lambda info: int(info.timestamp), reverse=True)
        return infos

    def manifest(self, backup_id: str, repo: Repository | None = None) -> Manifest:
        from cloudkeep.backups.catalog import load_manifest
        from cloudkeep.backups.manifest import validate_backup_id

        validate_backup_id(backup_id)
        repo = repo or self.repository()
        try:
            return load_manifest(repo, backup_id)
        except ObjectNotFound:
            raise BackupNotFound(f"no backup {backup_id} in {self.storage.describe()}") from None

    def get(self, backup_id: str) -> BackupInfo:
        return BackupInfo.of(self.manifest(backup_id))

    def restore(
        self,
        backup_id: str,
        target: Path | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        reuse_local: bool = True,
        force: bool = False,
    ) -> BackupInfo:
        """Restore a backup; ``reuse_local`` takes the chunks the live data still holds
        from it instead of the store (each checked against the backup's id for it).

        In place, a data folder that another program holds open is refused
        (``DataInUse``) unless ``force``; what the restore replaces is kept at
        ``BackupInfo.undo_path`` (see ``undo_restore``). A data path that is a
        symlink is restored into the folder it points to and stays a symlink.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlock") as pool:
            opening = self._open_soon(pool)
            from cloudkeep.backups.restore.restorer import Restorer  # while Argon2 runs

            repo = self.repository(opening=opening)
        manifest = self.manifest(backup_id, repo)
        live = self.live_path()
        if target is None and manifest.kind == "folder" and live.is_file():
            raise UserError(
                f"backup {backup_id} holds a folder but the data path {live} is a file; "
                "restore it with --target"
            )
        if target is None and manifest.kind == "file" and live.is_dir():
            raise UserError(
                f"backup {backup_id} holds one file but the data path {live} is a folder; "
                "restore it with --target"
            )
        guard = None
        if target is None and manifest.kind == "folder" and not force:

            def guard() -> None:
                self._ensure_not_in_use(live)

            guard()  # before anything is fetched; again just before the swap
        replaces = target is None and (live.exists() or live.is_symlink())
        restorer = Restorer(repo, progress, cancel, reuse_local=reuse_local)
        restorer.run(manifest, live, target, before_swap=guard)
        undo = ""
        if replaces:
            from cloudkeep.backups.swap import undo_path

            undo = str(undo_path(live))
        return replace(
            BackupInfo.of(manifest),
            reused_bytes=restorer.reused_bytes,
            fetched_bytes=restorer.fetched_bytes,
            undo_path=undo,
            warnings=tuple(restorer.warnings),  # the restore's own, not the backup's
        )

    def live_path(self) -> Path:
        """The data path a restore writes to: where a symlinked data path points."""
        data = self.settings.data
        return Path(os.path.realpath(data)) if data.is_symlink() else data

    def undo_restore(self, force: bool = False) -> Path:
        """Put back what the last in-place restore replaced (again to redo); returns where
        the state it replaced is kept now."""
        from cloudkeep.backups.restore.in_place import undo_restore

        live = self.live_path()
        if not force and live.is_dir():
            self._ensure_not_in_use(live)
        return undo_restore(live)

    @staticmethod
    def _ensure_not_in_use(live: Path) -> None:
        from cloudkeep.backups.in_use import describe_users, users_of

        if not live.is_dir():
            return
        users = users_of(live)
        if users:
            raise DataInUse(
                f"the data in {live} is in use: {describe_users(live, users)} is open in "
                "another program, whose writes a restore would lose. Quit it and retry, "
                "restore into a new folder with --target, or pass --force"
            )

    def delete(self, backup_id: str) -> PruneReport | None:
        """Delete a backup, then prune; None if other clients held the repository
        (a later delete or prune frees the space)."""
        from cloudkeep.backups.prune import try_prune

        repo = self.repository()
        # A damaged or planted backup exists too: it is deleted like any other.
        with contextlib.suppress(RepositoryDamaged):
            self.manifest(backup_id, repo)
        repo.delete_backup(backup_id)
        return try_prune(repo)

    def prune(
        self,
        dry_run: bool = False,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> PruneReport:
        """Free the space no backup uses (finishes a delete that was interrupted);
        ``dry_run`` only plans (``PruneReport.plan``) and changes nothing.

        Raises ``Busy`` if other clients hold the repository past the lock timeout.
        """
        from cloudkeep.backups.prune import prune

        return prune(self.repository(), dry_run=dry_run, progress=progress, cancel=cancel)

    def repair_index(self) -> IndexRebuild:
        """Rebuild the index from the packs' headers (after index files were lost)."""
        from cloudkeep.backups.repair import repair_index

        return repair_index(self.repository())

    def check(
        self,
        read_data: bool = False,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> CheckReport:
        from cloudkeep.backups.checker import Checker

        return Checker(self.repository(), progress, cancel).run(read_data)
