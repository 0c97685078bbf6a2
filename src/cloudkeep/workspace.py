"""The data folder and the repository it is kept in: what both front ends drive.

The CLI and the HTTP server only translate between their users and these
methods; all of them block, so the server runs them in worker threads.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cloudkeep.backups.progress import Progress, ProgressFn
from cloudkeep.errors import (
    BackupNotFound,
    Busy,
    ConfigurationError,
    DataInUse,
    KeyMissing,
    KeyRefused,
    RepositoryChanged,
    RepositoryDamaged,
    RepositoryExists,
    RepositoryNotFound,
    UserError,
)
from cloudkeep.repository.trust import Joined, TrustStore
from cloudkeep.repository.untrusted import MAX_STORED_SIZE, list_names, read_bounded, shown
from cloudkeep.repository.untrusted import Listing as StoreListing
from cloudkeep.settings import Settings, warn_if_exposed
from cloudkeep.storage.base import ObjectNotFound, Storage, StorageError
from cloudkeep.storage.limits import limit_concurrency, store_connections
from cloudkeep.storage.url import open_store

# Imported where used: a CLI process runs one operation; a backup imports the
# repository and the archiver while its key is derived (see ``_open_soon``).
if TYPE_CHECKING:
    from cloudkeep.backups.browse import Found, Listing
    from cloudkeep.backups.checker import CheckReport
    from cloudkeep.backups.diff import BackupDiff
    from cloudkeep.backups.forget import ForgetReport
    from cloudkeep.backups.manifest import FileEntry, Manifest
    from cloudkeep.backups.prune import PruneReport
    from cloudkeep.backups.reader import BackupReader
    from cloudkeep.backups.sql import Database
    from cloudkeep.backups.stats import StoreStats
    from cloudkeep.config import Retention
    from cloudkeep.repository.crypto import MasterKey
    from cloudkeep.repository.index import MasterIndex
    from cloudkeep.repository.keys import KeyInfo
    from cloudkeep.repository.repository import IndexRebuild, Repository

__all__ = ["BackupInfo", "KeyChange", "NewPassphrase", "Progress", "Workspace", "save_passphrase"]
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
    # The data path the backup was made of, as its manifest says (store text: not a path
    # to use here, and printed only through ``shown``-style sanitising).
    source: str = ""
    # Set by a restore: the folder (or file) it restored into.
    restored_to: str = ""
    # How many entries (files, folders, links) the backup holds.
    files: int = 0

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
            source=manifest.source,
            files=len(manifest.files),
        )


class Workspace:
    def __init__(self, settings: Settings, notice: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._notice = notice or (lambda message: log.warning("%s", message))
        self._storage: Storage | None = None
        self._unlocked: tuple[dict, MasterKey] | None = None
        # The backups listed while the key was derived, for the next handle (``_open``).
        self._backups_listing: Future[StoreListing] | None = None
        self._open_lock = threading.Lock()
        self._trust = TrustStore(settings.config_dir)
        # Set when this workspace created the repository (it may lose a creation race).
        self._created_here = False
        self._said_found: Path | None = None
        # The index ``reader`` loaded last, and the index files it was loaded from.
        self._read_index: tuple[frozenset[str], MasterIndex] | None = None

    # ------------------------------------------------------------------ opening
    @property
    def storage(self) -> Storage:
        if self._storage is None:
            # At most CLOUDKEEP_STORE_CONNECTIONS requests in flight, whoever makes them.
            self._storage = limit_concurrency(open_store(self.settings.store), store_connections())
        return self._storage

    def _known_passphrase(self) -> str | None:
        """The passphrase given or in the default key file; None if there is neither."""
        if self.settings.passphrase_problem:
            raise ConfigurationError(self.settings.passphrase_problem)
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
            listing, self._backups_listing = self._backups_listing, None
            if listing is not None and opening is not None:
                # Only the operation that started the opening takes its listing: one
                # that failed before taking it leaves a listing a later one must not use.
                handle.listed_meanwhile("snapshots", listing)
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

    def _open(self, adopting: bool = False, list_backups: bool = False) -> Repository:
        """Open the existing repository: the config first ("no repository" comes before
        "no key"), then this device's trust record, then the key.

        ``adopting``: the repository this device created lost the creation race;
        the trust record is not checked (it names the losing key) but replaced.
        """
        if list_backups:  # for the next handle (``repository``), while the key is derived
            lister = ThreadPoolExecutor(max_workers=1, thread_name_prefix="list-backups")
            self._backups_listing = lister.submit(list_names, self.storage, "snapshots")
            lister.shutdown(wait=False)
        try:
            return self._open_checked(adopting)
        except BaseException:
            self._backups_listing = None  # a later operation lists afresh
            raise

    def _open_checked(self, adopting: bool) -> Repository:
        from cloudkeep.repository.repository import Repository

        # The key files are listed, and the one this device opened before is read, while
        # the config is: two round trips, not four. Nothing is derived before the checks.
        record = None if adopting else self._trust.joined(self._store_identity())
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="key-files") as pool:
            keys = pool.submit(_key_files, self.storage, record.key_file if record else None)
            config = Repository.read_config(self.storage)
            joined = (
                None
                if adopting
                else self._trust.check(
                    self._store_identity(), self.storage.describe(), config["id"], config["key"]
                )
            )
            listing, key_files = keys.result()
        repo = Repository.unlock(
            self.storage,
            config,
            self._passphrase(False),
            joined.key_file if joined else None,
            keys=listing,
            key_files=key_files,
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

    def _open_soon(
        self, pool: ThreadPoolExecutor, list_backups: bool = False
    ) -> Future[Repository] | None:
        """Start opening the repository in ``pool`` if a passphrase is known.

        Argon2id releases the GIL, so whatever the caller does next
        (importing the engine) runs meanwhile instead of after it. ``repository()``
        takes its outcome, errors included. ``list_backups``: the backups are listed
        meanwhile too, for the handle ``repository()`` returns next.
        """
        if self._unlocked is not None or not self._known_passphrase():
            return None
        self.storage  # noqa: B018 - opened here, not in two threads at once
        return pool.submit(self._open, list_backups=list_backups)

    # --------------------------------------------------------------- operations
    def backup(
        self,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        time: datetime | None = None,
    ) -> BackupInfo:
        """Back up the data folder; ``time`` is recorded as the backup's time (and id)
        instead of the clock's (a naive time is local time; ``UserError`` if far off)."""
        data = self._data_to_back_up()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlock") as pool:
            opening = self._open_soon(pool, list_backups=True)
            from cloudkeep.backups.archiver import Archiver, backup_time_us  # while Argon2 runs

            time_us = None if time is None else backup_time_us(time)
            repo = self.repository(create=True, opening=opening)
        scratch = self.settings.cache_dir / "scratch"
        archiver = Archiver(repo, scratch, progress, cancel, time_us)
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
        archiver = Archiver(self.repository(), scratch, progress, cancel, time_us)
        return BackupInfo.of(archiver.run(data, self.settings.device_name))

    def data_signature(self) -> str | None:
        """The data folder's metadata signature (``sources.data_signature``): equal
        signatures mean a new backup would hold nothing new; None when it cannot tell
        (no data folder either: the backup then fails saying so)."""
        from cloudkeep.backups.sources import data_signature

        data = self.data_path("backing up")
        return None if data is None else data_signature(data)

    def list(self, device: str | None = None) -> list[BackupInfo]:
        """Every readable backup (of ``device`` only, if given), newest first.

        Raises ``RepositoryNotFound`` when the store holds no repository: a mistyped
        store is not an empty one.
        """
        from cloudkeep.backups.catalog import id_time

        manifests = self._manifests(self.repository())
        infos = [
            BackupInfo.of(manifest)
            for manifest in manifests
            if device is None or manifest.device_name == device
        ]
        infos.sort(key=lambda info: id_time(info.id), reverse=True)
        return infos

    def _manifests(self, repo: Repository) -> Sequence[Manifest]:
        """Every readable manifest; what could not be read is said, not raised."""
        from cloudkeep.backups.catalog import load_manifests

        manifests, broken = load_manifests(repo)
        for name, reason in broken.items():
            self._notice(f"warning: skipped backup {name}: {reason}")
        for name in repo.ignored:
            self._notice(
                f"warning: ignored {shown(name)} in the store: not the name of a cloudkeep object"
            )
        return manifests

    def resolve(self, text: str, device: str | None = None) -> str:
        """The id of the backup ``text`` names: an id, a unique prefix of one, or
        ``latest`` (of ``device`` if given; see ``catalog.choose_latest``).

        ``AmbiguousBackupId`` when it names several, ``BackupNotFound`` when none.
        The Pieces endpoints take exact ids only and never call this.
        """
        from cloudkeep.backups.catalog import LATEST, choose_latest, match_prefix

        repo = self.repository()
        where = self.storage.describe()
        if text == LATEST:
            latest = choose_latest(self._manifests(repo), self.settings.device_name, device)
            return latest.id
        if device is not None:
            raise UserError(
                "--device chooses among the backups for 'latest'; an id names one backup"
            )
        return match_prefix(repo.list_backups(), text, where)

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

    # ----------------------------------------------------------------- browsing
    def ls(self, backup_id: str, path: str = "", recursive: bool = False) -> Listing:
        """The entries of the folder ``path`` of a backup (its subtree with ``recursive``);
        ``EntryNotFound`` if the backup holds no such path. Reads the manifest only."""
        from cloudkeep.backups.browse import list_entries

        return list_entries(self.manifest(backup_id), path, recursive)

    def find(
        self,
        pattern: str,
        device: str | None = None,
        backup_id: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> tuple[builtins.list[Found], bool]:
        """The entries matching ``pattern`` (see ``browse.find``) in every backup (of
        ``device``, or the one ``backup_id``), newest backup first; and whether ``limit``
        cut the answer short. Manifests only (kept in the metadata cache)."""
        from cloudkeep.backups.browse import find
        from cloudkeep.backups.catalog import choose_latest, id_time

        if backup_id is not None:
            manifests: Sequence[Manifest] = [self.manifest(backup_id)]
        else:
            every = self._manifests(self.repository())
            if device is not None:  # a device with no backups is an error naming the others
                choose_latest(every, self.settings.device_name, device)
            manifests = sorted(
                (
                    manifest
                    for manifest in every
                    if device is None or manifest.device_name == device
                ),
                key=lambda manifest: id_time(manifest.id),
                reverse=True,
            )
        return find(manifests, pattern, kind, limit)

    def dump(self, backup_id: str, path: str, out: BinaryIO, archive: str | None = None) -> int:
        """Write the file ``path`` of a backup to ``out`` (bytes written), or with
        ``archive="tar"`` that path and all beneath it as a tar stream (entries written).
        Only those files' chunks are fetched, each blob verified."""
        from cloudkeep.backups.dump import ARCHIVES, file_entry, write_file, write_tar

        if archive is not None and archive not in ARCHIVES:
            raise UserError(f"--archive is one of {', '.join(ARCHIVES)}, not {archive!r}")
        with self.reader() as reader:
            manifest = self.manifest(backup_id)
            if archive is not None:
                return write_tar(reader, manifest, path, out)
            folder_hint = ": give a file, or --archive tar for a folder"
            return write_file(reader, file_entry(manifest, path, folder_hint), out)

    def file_entry(self, backup_id: str, path: str) -> FileEntry:
        """The regular file ``path`` of a backup (see ``dump.file_entry``); manifest only."""
        from cloudkeep.backups.dump import file_entry

        return file_entry(self.manifest(backup_id), path)

    def file_stream(self, backup_id: str, path: str) -> Iterator[bytes | memoryview]:
        """The content of the file ``path`` of a backup, read as it is consumed (the
        shared lock held until the stream ends or is closed)."""
        from cloudkeep.backups.dump import file_entry

        with self.reader() as reader:
            entry = file_entry(self.manifest(backup_id), path)
            yield from reader.file(entry).stream()

    def diff(
        self, a: str, b: str, rows: bool = False, max_rows: int = 100, device: str | None = None
    ) -> BackupDiff:
        """What changed from backup ``a`` to backup ``b`` (ids, prefixes or ``latest``,
        of ``device`` if given): files from the manifests, SQLite rows fetching only what
        differs (see ``backups.diff``); ``rows`` lists up to ``max_rows`` rows per table."""
        from cloudkeep.backups.catalog import LATEST
        from cloudkeep.backups.diff import diff_backups

        if device is not None and LATEST not in (a, b):
            raise UserError(
                "--device chooses among the backups for 'latest'; an id names one backup"
            )
        first = self.resolve(a, device if a == LATEST else None)
        second = self.resolve(b, device if b == LATEST else None)
        with self.reader() as reader:
            return diff_backups(reader, self.manifest(first), self.manifest(second), rows, max_rows)

    @contextlib.contextmanager
    def reader(self, lock_timeout: float | None = None) -> Iterator[BackupReader]:
        """Read access to the backups' files (``backups.reader``) for the ``with``: the
        repository opened, a shared lock held as a restore holds it (no prune removes a
        pack meanwhile) and the index loaded. Load the manifests to read (``manifest``)
        inside the ``with``: a backup deleted meanwhile keeps its packs until a prune.
        ``Busy`` if a prune holds the repository past ``lock_timeout`` seconds (a
        restore's wait by default)."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlock") as pool:
            opening = self._open_soon(pool)
            from cloudkeep.backups.reader import BackupReader  # while Argon2 runs
            from cloudkeep.backups.restore.fetch import LOCK_TIMEOUT_SECONDS
            from cloudkeep.repository.locks import RepositoryLock

            repo = self.repository(opening=opening)
        timeout = LOCK_TIMEOUT_SECONDS if lock_timeout is None else lock_timeout
        with RepositoryLock(repo, exclusive=False, purpose="read").acquire(timeout):
            # A server answers many reads: the index is loaded again only when its files
            # changed (a backup added one, a prune rewrote them). Readers never change it.
            names = frozenset(repo.list_files("index"))
            known = self._read_index
            if known is not None and known[0] == names:
                repo.index = known[1]
            else:
                self._read_index = (names, repo.load_index())
            yield BackupReader(repo)

    def databases(self, backup_id: str) -> builtins.list[FileEntry]:
        """The SQLite databases backup ``backup_id`` holds, largest first."""
        from cloudkeep.backups.sql import databases

        return databases(self.manifest(backup_id))

    @contextlib.contextmanager
    def database(
        self,
        backup_id: str,
        path: str | None = None,
        largest: bool = False,
        lock_timeout: float | None = None,
    ) -> Iterator[Database]:
        """The database ``path`` of a backup open for read-only queries (``backups.sql``),
        for the ``with``; without ``path`` the only one (the largest with ``largest``)."""
        from cloudkeep.backups.sql import Database, choose_database

        with self.reader(lock_timeout) as reader:
            # Read under the lock: a backup deleted meanwhile keeps its packs until a
            # prune, and no prune runs while the lock is held.
            entry = choose_database(self.manifest(backup_id), path, largest)
            database = Database(reader, entry)
            try:
                yield database
            finally:
                database.close()

    def restore(
        self,
        backup_id: str,
        target: Path | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        reuse_local: bool = True,
        force: bool = False,
        include: Sequence[str] = (),
    ) -> BackupInfo:
        """Restore a backup; ``reuse_local`` takes the chunks the live data still holds
        from it instead of the store (each checked against the backup's id for it).

        ``include``: only these paths of the backup (files, or folders with all they
        hold; see ``browse.select``) and the folders leading to them; in place each is
        put at its place atomically, and what they replace is kept for undo in
        ``<data>.cloudkeep-undo-files`` (see ``restore.partial``).

        In place, a data folder that another program holds open is refused
        (``DataInUse``) unless ``force``; what the restore replaces is kept at
        ``BackupInfo.undo_path`` (see ``undo_restore``). A data path that is a
        symlink is restored into the folder it points to and stays a symlink.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlock") as pool:
            opening = self._open_soon(pool)
            from cloudkeep.backups.restore.restorer import Restorer  # while Argon2 runs

            repo = self.repository(opening=opening)
        manifest = whole = self.manifest(backup_id, repo)
        chosen = False
        if include:
            from cloudkeep.backups.browse import select

            manifest, roots = select(manifest, include)
            chosen = roots != [""] and manifest.kind == "folder"  # a file backup: all of it
        if target is None:
            live = self._restore_path(manifest)
        else:  # the live data only lends chunks; without any, all are fetched
            data = self.data_path()
            live = target if data is None else self._real(data)
            reuse_local = reuse_local and data is not None
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
        undo = ""
        if chosen and target is None:
            undo = str(restorer.run_chosen(manifest, live, before_swap=guard))
        else:
            restorer.run(manifest, live, target, before_swap=guard)
        if replaces and not chosen:
            from cloudkeep.backups.swap import undo_path

            undo = str(undo_path(live))
        return replace(
            BackupInfo.of(whole),  # the backup as listed, not the part restored
            reused_bytes=restorer.reused_bytes,
            fetched_bytes=restorer.fetched_bytes,
            undo_path=undo,
            warnings=tuple(restorer.warnings),  # the restore's own, not the backup's
            restored_to=str(target or self.settings.data or live),
        )

    # ---------------------------------------------------------------- data path
    def data_path(self, doing: str = "using") -> Path | None:
        """The data path: the one given, else the Pieces OS folder found (looked for
        again when none was at start: a server outlives an install of Pieces OS), said
        once as "<doing> the Pieces OS data folder ... (found at ...)"."""
        settings = self.settings
        if settings.data is not None:
            found, where = settings.data, settings.data_found_at
        else:
            from cloudkeep.settings import find_data

            candidate = find_data(settings.data_candidates)
            if candidate is None:
                return None
            found, where = candidate.path, candidate.where
        if where and self._said_found != found:
            self._said_found = found
            self._notice(f"{doing} the Pieces OS data folder {found} (found at {where})")
        return found

    def _data_to_back_up(self) -> Path:
        data = self.data_path("backing up")
        if data is None:
            raise self.settings.no_data()
        return data

    def _restore_path(self, manifest: Manifest) -> Path:
        """Where an in-place restore of ``manifest`` goes.

        A data path given is used as it is. Otherwise only a backup of a Pieces OS
        folder is restored, into this system's Pieces OS folder: the one found, or on a
        new machine the first place Pieces OS keeps it (made). The manifest's path is
        a key holder's text and never becomes a local path.
        """
        if self.settings.data_given:
            return self.live_path()
        from cloudkeep.platform import is_pieces_data_path

        if manifest.kind != "folder" or not is_pieces_data_path(manifest.source):
            raise UserError(
                f"backup {manifest.id} is of {shown(manifest.source)}, not a Pieces OS data "
                "folder, and no data path is set here: restore it with --data PATH (replaces "
                "that folder) or --target PATH (a new folder)"
            )
        data = self.data_path("restoring into")
        if data is not None:
            return self._real(data)
        if not self.settings.data_candidates:
            raise self.settings.no_data()
        first = self.settings.data_candidates[0]
        self._notice(
            f"no Pieces OS data folder on this machine: restoring into {first.path} ({first.where})"
        )
        return first.path

    def live_path(self) -> Path:
        """The data path a restore writes to: where a symlinked data path points.

        ``DataNotFound`` when no data path is set and no Pieces OS folder exists.
        """
        data = self.data_path()
        if data is None:
            raise self.settings.no_data()
        return self._real(data)

    @staticmethod
    def _real(data: Path) -> Path:
        return Path(os.path.realpath(data)) if data.is_symlink() else data

    def undo_restore(self, force: bool = False) -> Path:
        """Put back what the last in-place restore replaced (again to redo); returns where
        the state it replaced is kept now."""
        from cloudkeep.backups.restore.in_place import undo_restore

        live = self.live_path()
        if not force and live.is_dir():
            self._ensure_not_in_use(live)
        return undo_restore(live)

    def pending_undo(self) -> tuple[Path, str, str | None] | None:
        """What ``undo_restore`` would put back (see ``in_place.pending_undo``)."""
        from cloudkeep.backups.restore.in_place import pending_undo

        return pending_undo(self.live_path())

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

    def delete(self, *backup_ids: str) -> PruneReport | None:
        """Delete backups, then prune once; None if other clients held the repository
        (a later delete or prune frees the space). Every id is checked before any
        backup is deleted: one unknown id deletes none."""
        from cloudkeep.backups.prune import try_prune

        repo = self.repository()
        for backup_id in backup_ids:
            # A damaged or planted backup exists too: it is deleted like any other.
            with contextlib.suppress(RepositoryDamaged):
                self.manifest(backup_id, repo)
        for backup_id in dict.fromkeys(backup_ids):
            repo.delete_backup(backup_id)
        return try_prune(repo)

    def forget(
        self,
        policy: Retention,
        device: str | None = None,
        dry_run: bool = False,
        prune: bool = False,
        cancel: threading.Event | None = None,
    ) -> ForgetReport:
        """Delete the backups ``policy`` does not keep (only ``device``'s if given), then
        with ``prune`` prune once if any was deleted (postponed while others hold the
        repository); ``dry_run`` decides and changes nothing (with ``prune``: plans the
        prune as if the backups were deleted)."""
        from cloudkeep.backups.forget import ForgetReport, execute_forget, plan_forget
        from cloudkeep.backups.prune import prune as prune_plan
        from cloudkeep.backups.prune import try_prune

        repo = self.repository()
        plan = plan_forget(repo, policy, device)
        if dry_run:
            if not (prune and plan.doomed):
                return ForgetReport(plan, dry_run=True)
            try:  # what a prune would free once they are deleted
                would = prune_plan(repo, dry_run=True, without=frozenset(plan.doomed))
            except Busy:
                return ForgetReport(plan, dry_run=True, prune_postponed=True)
            return ForgetReport(plan, dry_run=True, prune=would)
        deleted = execute_forget(repo, plan, cancel)
        if not (prune and deleted):
            return ForgetReport(plan, deleted=deleted)
        report = try_prune(repo)
        return ForgetReport(plan, deleted=deleted, prune=report, prune_postponed=report is None)

    def stats(self) -> StoreStats:
        """Store size, bytes per device and the dedup ratio (listings and manifests only)."""
        from cloudkeep.backups.stats import store_stats

        return store_stats(self.repository())

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

    # ----------------------------------------------------------- keys and setup
    # What `cloudkeep setup` and `cloudkeep key` drive. Every key file is read and
    # written by the repository; here the trust record and the local passphrase
    # follow what changed in the store.
    def probe_store(self) -> bool:
        """Whether the store holds a repository, after listing it: a bad URL, missing
        credentials or a forbidden or missing bucket fail here, within seconds."""
        from cloudkeep.repository.repository import Repository
        from cloudkeep.storage.retrying import RetryPolicy

        policy = RetryPolicy.from_env()
        quick = RetryPolicy(
            attempts=min(policy.attempts, 3),
            deadline_seconds=min(policy.deadline_seconds, PROBE_DEADLINE),
        )
        storage = open_store(self.settings.store, retry=quick)
        next(iter(storage.list("keys/")), None)
        try:
            Repository.read_config(storage)
        except RepositoryNotFound:
            return False
        return True

    def set_up_repository(self) -> tuple[bool, str]:
        """Join the store's repository or create it (trust on first use, as every
        command); (whether it was created here, its id)."""
        repo = self.repository(create=True)
        return self._created_here, repo.config["id"]

    def _key_repository(self) -> Repository:
        """The repository opened with its key file named (trust checked and recorded)."""
        with self._open_lock:
            return self._open()

    def list_keys(self) -> tuple[builtins.list[KeyInfo], int, str | None]:
        """The key files, how many more were not read, and the one this device uses."""
        repo = self._key_repository()
        infos, unread = repo.list_keys()
        return infos, unread, repo.key_file

    def add_key(self, passphrase: str) -> str:
        """A new key file for ``passphrase`` (this device keeps its own); its name."""
        return self._key_repository().add_key(passphrase)

    def remove_key(self, key_id: str) -> str:
        """Remove the key file ``key_id`` names (a unique prefix); its name."""
        repo = self._key_repository()
        name = repo.find_key(key_id)
        repo.remove_key(name, keeping=repo.key_file)
        return name

    def change_passphrase(self, new: NewPassphrase) -> KeyChange:
        """``key passwd``: add a key file for the new passphrase, make this device use it
        (trust record, local passphrase), then remove the old key file.

        A crash or failure at any point leaves a key file that opens with the
        passphrase this device has: the new one is written and read back before
        anything local changes, and the old one goes last.
        """
        if self._own_passphrase() and not self._config_follows():
            raise KeyRefused(
                "this device reads the passphrase of "
                f"{self.storage.describe()} from {self._passphrase_source()}, which names "
                "no passphrase for this store (another store may use it): a new passphrase "
                "would not be read, and the old one would no longer open it. Nothing was "
                "changed; run 'cloudkeep setup' for this store first, or give the "
                "passphrase with --passphrase-file"
            )
        repo = self._key_repository()
        old = repo.key_file
        name = repo.add_key(new.text)
        repo.key_file = name
        self._joined(repo, created=False)
        saved = self._adopt_passphrase(new)
        left = ""
        try:
            repo.remove_key(old or "", keeping=name)
        except (KeyRefused, Busy, StorageError) as exc:
            left = f"{exc}"
        return KeyChange(name, old, saved, left)

    def recovery_text(self) -> tuple[str, builtins.list[str]]:
        """(repository id, the numbered lines of its recovery text)."""
        from cloudkeep.repository.keys import recovery_lines

        repo = self._key_repository()
        return repo.config["id"], recovery_lines(repo.key, repo.config["id"])

    def recover(self, text: str, new: NewPassphrase) -> KeyChange:
        """``key recover``: a new key file for ``new`` from a recovery text, once the text
        is verified against the store's config (its id, key fingerprint and MAC)."""
        from cloudkeep.repository.keys import RecoveryTextInvalid, parse_recovery_text
        from cloudkeep.repository.repository import Repository

        try:
            recovery = parse_recovery_text(text)
        except RecoveryTextInvalid as exc:
            raise UserError(str(exc)) from None
        config = Repository.read_config(self.storage)
        if recovery.repository_id != config["id"]:
            raise UserError(
                f"this recovery text is for repository {recovery.repository_id[:12]}…, but "
                f"the store {self.storage.describe()} holds {config['id'][:12]}…"
            )
        self._trust.check(
            self._store_identity(), self.storage.describe(), config["id"], config["key"]
        )
        repo = Repository.unlock_with_key(self.storage, config, recovery.key)
        name = repo.add_key(new.text)
        repo.key_file = name
        with self._open_lock:
            self._joined(repo, created=False)
        return KeyChange(name, None, self._adopt_passphrase(new), "")

    def _adopt_passphrase(self, new: NewPassphrase) -> Path | None:
        """Make the next runs of this device read the new passphrase, when they read it
        from cloudkeep's own settings (the default key file or the configuration's
        passphrase file) and this store is the configured one: a typed one is saved to
        a new 0600 file in the config dir, and the configuration names it.

        None when the passphrase came from an option or the environment, or the store
        is not the configured one (the configuration cannot name its passphrase): the
        user must give the new one from now on. No passphrase file is ever overwritten
        (another store may use it).
        """
        settings = self.settings
        if not (self._own_passphrase() and self._config_follows()):
            return None
        path = new.file or save_passphrase(settings.config_dir, new.text)
        from cloudkeep.config import load_config, save_config

        current = load_config(settings.config_dir)
        save_config(settings.config_dir, current.with_changes(passphrase_file=str(path)))
        return path

    def _own_passphrase(self) -> bool:
        """Whether the passphrase comes from cloudkeep's own settings (the default key
        file, or the configuration's passphrase file), not an option or the environment."""
        settings = self.settings
        configured = settings.config.passphrase_file
        return settings.passphrase is None or (
            configured is not None
            and settings.passphrase_file == Path(configured).expanduser().absolute()
        )

    def _config_follows(self) -> bool:
        """Whether the configuration file's passphrase is this store's (the configured
        store, or the default one when none is configured)."""
        from cloudkeep.settings import default_store_dir

        settings = self.settings
        return settings.store == (settings.config.store or default_store_dir().as_uri())

    def _passphrase_source(self) -> Path:
        return self.settings.passphrase_file or self.settings.default_key_file


#: Seconds ``probe_store`` tries a store before it says it cannot be reached.
PROBE_DEADLINE = 20.0


@dataclass(frozen=True, slots=True)
class NewPassphrase:
    """A new passphrase, and the file it was read from (None if it was typed)."""

    text: str
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class KeyChange:
    """What ``change_passphrase`` or ``recover`` did."""

    key_file: str  # the new key file, keys/<id>
    old_key_file: str | None  # the one it replaces (passwd)
    saved_to: Path | None  # the passphrase file this device reads from now, if it changed
    not_removed: str  # why the old key file is still in the store ("" if it is not)


def save_passphrase(config_dir: Path, passphrase: str) -> Path:
    """``passphrase`` in a 0600 file of its own in ``config_dir``: the one that holds it
    already, or a new ``passphrase[-N].key``; another file is never replaced.

    A new file is created exclusively (as the default key file is): two processes
    saving passphrases at once (setup or key passwd for two stores) each get their
    own file, where a replacing write lost one of them. The path is absolute: the
    configuration names it, and is read from any working folder.
    """
    config_dir = config_dir.absolute()
    config_dir.mkdir(parents=True, exist_ok=True)
    for number in range(1, 1000):
        path = config_dir / ("passphrase.key" if number == 1 else f"passphrase-{number}.key")
        try:
            if path.read_text(encoding="utf-8").rstrip("\r\n") == passphrase:
                return path
            continue
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError):
            continue
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process: never ours to replace
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(passphrase + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return path
    raise UserError(f"{config_dir} holds 999 passphrase files: remove the ones no store uses")


def _key_files(storage: Storage, preferred: str | None) -> tuple[StoreListing, dict[str, bytes]]:
    """The listing of ``keys/`` and the content of ``preferred`` (``keys/<id>``) if it is
    listed and small enough to be a key file (see ``Repository.unlock``)."""
    from cloudkeep.repository.keys import MAX_KEY_FILE_BYTES

    listing = list_names(storage, "keys")
    size = listing.sizes.get(preferred.removeprefix("keys/")) if preferred else None
    if preferred is None or size is None or size > MAX_KEY_FILE_BYTES:
        return listing, {}
    try:
        return listing, {preferred: read_bounded(storage, preferred, MAX_STORED_SIZE["keys"], size)}
    except (ObjectNotFound, RepositoryDamaged):
        return listing, {}
