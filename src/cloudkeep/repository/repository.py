"""The repository: config, keys, packs, index and sealed files in one store.

Store layout (see docs/format.md)::

    config                 JSON: format version, repository id, chunker parameters, the
                           master key's fingerprint, a MAC under the master key
    keys/<id>              master key wrapped by a passphrase-derived key (Argon2id)
    data/<xx>/<pack id>    packs of sealed, compressed blobs
    index/<id>             which pack holds each blob
    snapshots/<backup id>  one sealed manifest per backup, written last, create-only
    locks/<id>             shared/exclusive locks with expiry (prune vs. backups)

``Repository`` owns every read and write of these: code above it lists, loads and
deletes through its methods and never touches the store or replaces the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import struct
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from cloudkeep.errors import (
    FormatTooNew,
    KeyMissing,
    KeyRefused,
    RepositoryChanged,
    RepositoryDamaged,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassphrase,
)
from cloudkeep.repository import loader
from cloudkeep.repository.crypto import DecryptionFailed, MasterKey, Sealer
from cloudkeep.repository.frames import (
    DEFAULT_ZSTD_LEVEL,
    BlobDamaged,
    FrameCodec,
    OpenedFrame,
    SealedFrame,
)
from cloudkeep.repository.index import FrameBlobs, IndexFile, IndexFormatError, MasterIndex
from cloudkeep.repository.keys import (
    MAX_KEY_FILE_BYTES,
    MAX_KEY_FILES_LISTED,
    MAX_KEY_FILES_TRIED,
    KeyInfo,
    key_info,
    new_key_name,
    unwrap_key,
    wrap_key,
)
from cloudkeep.repository.loader import DamageFn, LoadedFrame, PackRange
from cloudkeep.repository.pack_writer import PackWriter
from cloudkeep.repository.packs import (
    HEADER_AAD,
    PackEntry,
    PackFormatError,
    decode_header,
    frames_of,
    header_start,
    pack_id_of,
    pack_name,
    read_header,
)
from cloudkeep.repository.untrusted import (
    MAX_PACK_SIZE,
    MAX_PLAIN_SIZE,
    MAX_STORED_SIZE,
    DecompressionFailed,
    Listing,
    decompress_bounded,
    list_names,
    parse_json,
    read_bounded,
    too_large,
    valid_name,
)
from cloudkeep.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageUnavailable,
    is_local,
)
from cloudkeep.storage.cache import CachedStorage

__all__ = [
    "BlobDamaged",
    "Repository",
    "canonical_config",
    "file_aad",
    "with_cache",
]

log = logging.getLogger(__name__)
# 3: files sealed with their kind and name as associated data, an authenticated config
# naming the master key's fingerprint (2: files bound to their kind only; 1: one sealed
# blob per chunk).
FORMAT_VERSION = 3
#: 4 MiB packs: flat memory and little CPU, still few large requests (docs/performance.md).
PACK_TARGET_SIZE = 4 * 1024 * 1024
#: ~1 GiB of packs per index file written by prune and repair-index: at most ~60 MiB
#: even for data compressing 10:1, far under what a reader accepts (MAX_STORED_SIZE).
PACKS_PER_INDEX_FILE = 256
#: A pack header lists 49 bytes per blob: 16 MiB is ~340,000 blobs, far more than a
#: pack holds; a hostile object claiming more is not read.
MAX_HEADER_BYTES = 16 * 1024 * 1024
_TRAILER = struct.Struct("<I")
#: The kinds whose objects the local cache keeps: written once, read at every start.
CACHED_KINDS = ("index", "snapshots")
# SQLite pages are chunked at this granularity: measured in docs/format.md.
DEFAULT_CHUNKER = {
    "sqlite_chunk_bytes": 8192,
    "cdc_min": 256 * 1024,
    "cdc_avg": 1024 * 1024,
    "cdc_max": 4 * 1024 * 1024,
}
# What a config may hold: bounds keep a tampered (or foreign) config from costing
# memory or crashing before its MAC is checked. FastCDC accepts min <= 1 MiB,
# avg <= 4 MiB, max <= 16 MiB; a chunk must fit a frame.
PACK_SIZE_RANGE = (64 * 1024, 64 * 1024 * 1024)
ZSTD_LEVEL_RANGE = (-7, 19)
CHUNKER_RANGES = {
    "sqlite_chunk_bytes": (512, 64 * 1024),
    "cdc_min": (64 * 1024, 1024 * 1024),
    "cdc_avg": (64 * 1024, 4 * 1024 * 1024),
    "cdc_max": (64 * 1024, 16 * 1024 * 1024),
}
_HEX = re.compile(r"[0-9a-f]+")


def file_aad(kind: str, name: str) -> bytes:
    """Associated data of a sealed repository file: its kind and name.

    A file copied over another name (an old manifest over a new one) fails to open.
    """
    return f"{kind}/{name}".encode()


def canonical_config(config: dict) -> bytes:
    """The bytes the config's MAC covers: every field but ``mac``, canonical JSON."""
    fields = {k: v for k, v in config.items() if k != "mac"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _range_problem(field: str, value: object, bounds: tuple[int, int]) -> str | None:
    if type(value) is int and bounds[0] <= value <= bounds[1]:
        return None
    return f"{field} must be an integer from {bounds[0]} to {bounds[1]}, not {value!r:.40}"


def config_problem(config: dict) -> str | None:
    """Why a (version-checked) config cannot be used, or None: shapes and bounds only."""
    for field, size in (("id", 32), ("key", 64), ("mac", 64)):
        value = config.get(field)
        if not isinstance(value, str) or len(value) != size or not _HEX.fullmatch(value):
            return f"'{field}' is not {size} hex digits"
    if not isinstance(config.get("created"), str) or len(config["created"]) > 64:
        return "'created' is not a date"
    problem = _range_problem("pack_size", config.get("pack_size"), PACK_SIZE_RANGE)
    problem = problem or _range_problem("zstd_level", config.get("zstd_level"), ZSTD_LEVEL_RANGE)
    if problem:
        return problem
    chunker = config.get("chunker")
    if not isinstance(chunker, dict) or set(chunker) != set(CHUNKER_RANGES):
        return "the chunker parameters are missing or unknown"
    for field, bounds in CHUNKER_RANGES.items():
        problem = _range_problem(f"chunker {field}", chunker[field], bounds)
        if problem:
            return problem
    if chunker["sqlite_chunk_bytes"] & (chunker["sqlite_chunk_bytes"] - 1):
        return "chunker sqlite_chunk_bytes is not a power of two"
    if not chunker["cdc_min"] <= chunker["cdc_avg"] <= chunker["cdc_max"]:
        return "chunker sizes are not ordered cdc_min <= cdc_avg <= cdc_max"
    return None


@dataclass
class IndexRebuild:
    """What ``Repository.rebuild_index`` did."""

    packs_indexed: int = 0
    blobs_indexed: int = 0
    index_files_written: int = 0
    index_files_removed: int = 0
    unreadable_packs: list[str] = dataclass_field(default_factory=list)


class Repository:
    """An unlocked repository. Thread-safe for concurrent blob reads and writes.

    ``storage`` may keep a local copy of index and backup files (``with_cache``).
    """

    def __init__(
        self,
        storage: Storage,
        config: dict,
        key: MasterKey,
        key_file: str | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.key = key
        # The key file this key came from (devices remember it and try it first).
        self.key_file = key_file
        self.sealer = Sealer(key)
        #: The keyed id of a blob's content.
        self.blob_id: Callable[[bytes | memoryview], bytes] = self.sealer.blob_id
        self._codec = FrameCodec(self.sealer, config.get("zstd_level", DEFAULT_ZSTD_LEVEL))
        #: Which pack holds each blob: read it freely; ``load_index`` is the only way
        #: to change it wholesale (code above reads other indexes via ``index=``).
        self.index = MasterIndex()
        # Sizes the last listing gave, so a listed object is read without a stat first.
        self._listed_sizes: dict[str, int] = {}
        self._listings: dict[str, Future[Listing]] = {}
        #: Listed names that are no cloudkeep object's (never used): shown by list and check.
        self.ignored: dict[str, None] = {}
        # Packs and index files written through this handle: removed again if the
        # repository turns out to have been created with another key meanwhile.
        self._written: list[str] = []
        self._written_lock = threading.Lock()
        self.discard_if_replaced = False

    # ----------------------------------------------------------------- opening
    @staticmethod
    def read_config(storage: Storage) -> dict:
        """The config, its version and values checked; NOT authenticated (see ``unlock``)."""
        try:
            raw = read_bounded(storage, "config", MAX_STORED_SIZE["config"])
        except ObjectNotFound as exc:
            raise RepositoryNotFound(
                f"no cloudkeep repository at {storage.describe()}: check the store URL "
                "(and its prefix), or run 'cloudkeep backup' or 'cloudkeep init' to create one"
            ) from exc
        try:
            config = parse_json(raw)
            version = int(config["version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryDamaged(
                f"the repository config at {storage.describe()} is unreadable"
            ) from exc
        if version > FORMAT_VERSION:
            raise FormatTooNew(
                f"the repository uses format {version}, this cloudkeep reads up to "
                f"{FORMAT_VERSION}: update cloudkeep"
            )
        if version < FORMAT_VERSION:
            raise RepositoryDamaged(
                f"the repository at {storage.describe()} uses format {version} of a "
                "pre-release cloudkeep, which this version does not read: back up into a "
                "new store"
            )
        problem = config_problem(config)
        if problem is not None:
            raise RepositoryDamaged(
                f"the repository config at {storage.describe()} is invalid: {problem}"
            )
        return config

    @classmethod
    def exists(cls, storage: Storage) -> bool:
        try:
            storage.stat("config")
            return True
        except ObjectNotFound:
            return False

    @classmethod
    def init(cls, storage: Storage, passphrase: str) -> Repository:
        """Create the repository; ``RepositoryExists`` if another device's config won.

        The key file goes first (a config without its key would be an unopenable
        repository), then the config, create-only; then the config is read back,
        since not every store can create an object atomically (see docs/format.md).
        A device that lost removes its key file and opens the winner's key instead.
        """
        if cls.exists(storage):
            raise RepositoryExists(f"a repository already exists at {storage.describe()}")
        key = MasterKey.generate()
        config: dict = {
            "version": FORMAT_VERSION,
            "id": uuid.uuid4().hex,
            "created": datetime.now(UTC).isoformat(),
            "chunker": dict(DEFAULT_CHUNKER),
            "pack_size": PACK_TARGET_SIZE,
            "zstd_level": DEFAULT_ZSTD_LEVEL,
            "key": key.fingerprint(),
        }
        config["mac"] = key.config_mac(canonical_config(config))
        key_file = new_key_name()
        storage.put(key_file, wrap_key(key, passphrase))
        # ObjectExists: another device's config, or our own earlier attempt; the read-back tells.
        with contextlib.suppress(ObjectExists):
            storage.put("config", json.dumps(config, indent=1).encode(), create_only=True)
        try:
            stored = cls.read_config(storage)
        except RepositoryDamaged:
            stored = {}
        if (stored.get("id"), stored.get("key")) != (config["id"], config["key"]):
            storage.delete(key_file)  # nothing was sealed under this key
            raise RepositoryExists(f"a repository already exists at {storage.describe()}")
        return cls(storage, config, key, key_file)

    @classmethod
    def open(
        cls,
        storage: Storage,
        passphrase: str | None,
        preferred_key_file: str | None = None,
    ) -> Repository:
        return cls.unlock(storage, cls.read_config(storage), passphrase, preferred_key_file)

    @classmethod
    def unlock(
        cls,
        storage: Storage,
        config: dict,
        passphrase: str | None,
        preferred_key_file: str | None = None,
        keys: Listing | None = None,
        key_files: Mapping[str, bytes] | None = None,
    ) -> Repository:
        """Open ``config`` (from ``read_config``) with the key file holding the key it names.

        ``keys``: a listing of ``keys/`` the caller made (while it read the config), and
        ``key_files`` the content of some of them it read (bounded) with that listing.

        At most ``MAX_KEY_FILES_TRIED`` well-formed key files are tried, the
        preferred one (the one this device opened before) first. A key file that
        opens with the passphrase but holds another master key (a planted one, or
        one left by a device that lost the race to create the repository) is
        skipped exactly like one that does not open: the work done, and what is
        read from the store, do not depend on it, so it is no guessing oracle.
        Then the config's MAC must verify under the key before its values count.

        A ``keys`` listing made while the config was read may predate the key file of
        that config (a concurrent ``init`` writes its key file, then the config): when
        it opens nothing, ``keys/`` is listed once more and, if that shows other
        names, tried again.
        """
        if not passphrase:
            raise KeyMissing("no passphrase or key file given to open the repository")
        if keys is None:
            return cls._unlock_listed(
                storage, config, passphrase, preferred_key_file, list_names(storage, "keys"), None
            )
        try:
            return cls._unlock_listed(
                storage, config, passphrase, preferred_key_file, keys, key_files
            )
        except (KeyMissing, WrongPassphrase):
            fresh = list_names(storage, "keys")
            if fresh.sizes == keys.sizes:
                raise
        return cls._unlock_listed(storage, config, passphrase, preferred_key_file, fresh, None)

    @classmethod
    def _unlock_listed(
        cls,
        storage: Storage,
        config: dict,
        passphrase: str,
        preferred_key_file: str | None,
        listing: Listing,
        key_files: Mapping[str, bytes] | None,
    ) -> Repository:
        """``unlock`` with one listing of ``keys/``."""
        sizes = {
            f"keys/{name}": size
            for name, size in listing.sizes.items()
            if size <= MAX_KEY_FILE_BYTES
        }
        if not sizes:
            raise KeyMissing(
                f"the repository at {storage.describe()} has no key files: with its "
                "recovery text, 'cloudkeep key recover' writes a new one"
            )
        names = sorted(sizes)
        if preferred_key_file in names:
            names.remove(preferred_key_file)
            names.insert(0, preferred_key_file)
        for name in names[:MAX_KEY_FILES_TRIED]:
            try:
                raw = (key_files or {}).get(name)
                if raw is None:
                    raw = read_bounded(storage, name, MAX_STORED_SIZE["keys"], sizes[name])
                key = unwrap_key(raw, passphrase)
            except (ObjectNotFound, RepositoryDamaged):
                continue
            if key is None or key.fingerprint() != config["key"]:
                continue
            if not hmac.compare_digest(key.config_mac(canonical_config(config)), config["mac"]):
                raise RepositoryDamaged(
                    f"the repository config at {storage.describe()} fails authentication "
                    "(it was modified): restore it from a copy, or back up into a new store"
                )
            return cls(storage, config, key, name)
        raise WrongPassphrase("wrong passphrase: no key of this repository opens with it")

    @classmethod
    def unlock_with_key(cls, storage: Storage, config: dict, key: MasterKey) -> Repository:
        """Open ``config`` with a master key given whole (from a recovery text).

        The key must be the one whose fingerprint the config names, and the config's
        MAC must verify under it; ``WrongPassphrase`` or ``RepositoryDamaged``
        otherwise. No key file is read: it opens a repository whose key files are gone.
        """
        if not hmac.compare_digest(key.fingerprint(), config["key"]):
            raise WrongPassphrase(
                f"this recovery text does not hold the key of the repository at "
                f"{storage.describe()} (its key fingerprint is {config['key'][:12]}…)"
            )
        if not hmac.compare_digest(key.config_mac(canonical_config(config)), config["mac"]):
            raise RepositoryDamaged(
                f"the repository config at {storage.describe()} fails authentication "
                "(it was modified): restore it from a copy, or back up into a new store"
            )
        return cls(storage, config, key, None)

    # --------------------------------------------------------------------- keys
    def list_keys(self) -> tuple[list[KeyInfo], int]:
        """The key files (at most ``MAX_KEY_FILES_LISTED`` read, by name) and how many
        more were listed but not read. Their fields are store input, shown only."""
        sizes = {f"keys/{n}": size for n, size in list_names(self.storage, "keys").sizes.items()}
        names = sorted(sizes)
        if self.key_file in names:  # this device's key is always listed
            names.remove(self.key_file)
            names.insert(0, self.key_file)
        infos = []
        for name in names[:MAX_KEY_FILES_LISTED]:
            document = None
            if sizes[name] <= MAX_KEY_FILE_BYTES:
                with contextlib.suppress(ObjectNotFound, RepositoryDamaged):
                    document = read_bounded(
                        self.storage, name, MAX_STORED_SIZE["keys"], sizes[name]
                    )
            infos.append(key_info(name, document))
        infos.sort(key=lambda info: (info.created, info.name))
        return infos, max(0, len(names) - MAX_KEY_FILES_LISTED)

    def find_key(self, key_id: str) -> str:
        """The key file whose id is or starts with ``key_id`` (at least 4 hex digits)."""
        wanted = key_id.strip().lower()
        if not 4 <= len(wanted) <= 32 or not _HEX.fullmatch(wanted):
            raise KeyRefused(
                f"{key_id[:40]!r} is not a key id: give 4 to 32 hex digits "
                "(see 'cloudkeep key list')"
            )
        found = [n for n in list_names(self.storage, "keys").sizes if n.startswith(wanted)]
        if not found:
            raise KeyRefused(f"no key {wanted} in the repository (see 'cloudkeep key list')")
        if len(found) > 1:
            raise KeyRefused(f"{len(found)} keys start with {wanted}: give more of the id")
        return f"keys/{found[0]}"

    def add_key(self, passphrase: str) -> str:
        """A new key file wrapping this repository's master key under ``passphrase``,
        read back and opened before it counts; returns its name (``keys/<id>``).

        Refused when the repository already has ``MAX_KEY_FILES_TRIED`` usable key
        files: a device opening it tries no more, so a further one might never open.
        """
        infos, unread = self.list_keys()
        usable = sum(info.usable for info in infos) + unread
        if usable >= MAX_KEY_FILES_TRIED:
            raise KeyRefused(
                f"the repository has {usable} key files, the most a device tries when "
                "opening it: remove one first (see 'cloudkeep key list')"
            )
        name = new_key_name()
        self.storage.put(name, wrap_key(self.key, passphrase), create_only=True)
        stored = read_bounded(self.storage, name, MAX_STORED_SIZE["keys"])
        opened = unwrap_key(stored, passphrase)
        if opened is None or opened.fingerprint() != self.config["key"]:
            with contextlib.suppress(StorageError):
                self.storage.delete(name)
            raise RepositoryDamaged(
                f"the new key file {name} did not read back as written: nothing was changed"
            )
        return name

    def remove_key(self, name: str, keeping: str | None) -> None:
        """Delete key file ``name`` under the exclusive lock, keeping ``keeping``: the key
        file the caller holds and opened (or just wrote and verified).

        Refused (``KeyRefused``) for ``keeping`` itself, the last key file, and when
        ``keeping`` is gone from the store: two devices removing each other's key at
        once would otherwise leave none. The lock makes removals one at a time.
        """
        from cloudkeep.repository.locks import LockTiming, RepositoryLock

        timing = LockTiming.from_env()
        lock = RepositoryLock(self, exclusive=True, purpose="key change", timing=timing)
        with lock.acquire(timing.prune_wait):
            names = {f"keys/{n}" for n in list_names(self.storage, "keys").sizes}
            short = name.removeprefix("keys/")[:8]
            if name not in names:
                raise KeyRefused(f"no key {short} in the repository (see 'cloudkeep key list')")
            if names == {name}:
                raise KeyRefused(f"key {short} is the repository's last key: it stays")
            if name == keeping:
                raise KeyRefused(
                    f"key {short} is the one this device opened the repository with: "
                    "use 'cloudkeep key passwd' to change its passphrase"
                )
            if keeping is None or keeping not in names:
                raise KeyRefused(
                    "the key this device opened the repository with is no longer in the "
                    "store (another device removed it): nothing was removed"
                )
            if not lock.held():
                raise KeyRefused("the repository lock lapsed: nothing was removed, run again")
            self.storage.delete(name)

    def ensure_key_current(self) -> None:
        """Refuse to publish unless the store's config still names this handle's key.

        A store that cannot create the config atomically may let a second
        device replace it during our first backup; ``RepositoryChanged`` is raised,
        so no backup is published under a key no other device uses. Only the
        creator's first backup (``discard_if_replaced``) removes what it wrote
        (sealed under the losing key); any other handle leaves it to prune, as
        another device may already use it.

        One round trip when the config is as ``init`` writes it: its first bytes
        read as exactly our config's serialization (no other valid config starts so,
        JSON allowing only whitespace after a value); else the size, then the config.
        """
        if self._config_unchanged():
            return
        stored = self.read_config(self.storage)
        if (stored["id"], stored["key"]) == (self.config["id"], self.config["key"]):
            return
        with self._written_lock:
            written, self._written = self._written, []
        if self.discard_if_replaced:
            for name in written:  # what a failed delete leaves is unreferenced: prune's
                with contextlib.suppress(StorageError):
                    self.storage.delete(name)
        raise RepositoryChanged(
            f"the repository at {self.storage.describe()} was created with another key "
            "while this backup ran (another device created it at the same time); "
            "nothing was published: run the backup again"
        )

    def _config_unchanged(self) -> bool:
        expected = json.dumps(self.config, indent=1).encode()  # as ``init`` writes it
        try:
            return self.storage.get("config", 0, len(expected)) == expected
        except StorageUnavailable:
            raise
        except StorageError:  # absent, or shorter: ``read_config`` says what it is
            return False

    def _note_written(self, name: str) -> None:
        with self._written_lock:
            self._written.append(name)

    @property
    def store_is_local(self) -> bool:
        """Whether the store is a folder of this machine (reads cost no round trip)."""
        return is_local(self.storage)

    @property
    def chunker(self) -> dict[str, int]:
        return self.config.get("chunker", DEFAULT_CHUNKER)

    def bypass_cache(self) -> None:
        """Read from the store from now on, not from local copies: check and repair judge
        what the store holds. What is read still refreshes the copies."""
        if isinstance(self.storage, CachedStorage):
            self.storage.serve_copies = False

    # -------------------------------------------------------------- sealed files
    def save_file(
        self, kind: str, name: str, plaintext: bytes, *, create_only: bool = False
    ) -> None:
        sealed = self.sealer.seal(
            zstandard.ZstdCompressor(level=3).compress(plaintext), file_aad(kind, name)
        )
        self.storage.put(object_path(kind, name), sealed, create_only=create_only)

    def load_file(self, kind: str, name: str, *, retry: bool = True) -> bytes:
        """Decrypted content of a sealed file (from the local copy when there is one).

        Raises ``RepositoryDamaged`` (naming the object) if it is larger than its
        kind allows (refused unread), does not decrypt or decompresses too large;
        ``ObjectNotFound`` if it is gone. A local copy that fails is dropped (the
        store is read once more), so no damaged object stays in the cache.
        """
        try:
            return decompress_bounded(self._open_file(kind, name, retry), MAX_PLAIN_SIZE[kind])
        except DecompressionFailed as exc:
            if self._evict(kind, name) and retry:
                return self.load_file(kind, name, retry=False)
            raise RepositoryDamaged(f"{kind}/{name} is damaged: {exc}") from exc

    def _open_file(self, kind: str, name: str, retry: bool = True) -> bytes:
        """A sealed file's bytes decrypted; a local copy that fails is read again (once)."""
        path = object_path(kind, name)
        sealed = read_bounded(
            self.storage, path, MAX_STORED_SIZE[kind], self._listed_sizes.get(path)
        )
        try:
            return self.sealer.open(sealed, file_aad(kind, name))
        except DecryptionFailed as exc:
            if self._evict(kind, name) and retry:
                return self._open_file(kind, name, retry=False)
            raise RepositoryDamaged(f"{kind}/{name} is damaged: {exc}") from exc

    def _evict(self, kind: str, name: str) -> bool:
        """Drop the local copy of a file that failed to open; whether there was one."""
        return isinstance(self.storage, CachedStorage) and self.storage.evict(
            object_path(kind, name)
        )

    def list_files(self, kind: str) -> list[str]:
        """Names of the ``kind`` files; listed names that are not valid ones are ignored."""
        return list(self.file_sizes(kind))

    def listed_meanwhile(self, kind: str, listing: Future[Listing]) -> None:
        """A listing of ``kind`` started before this handle existed (while the key was
        derived): the next ``file_sizes`` of that kind takes it instead of listing."""
        self._listings[kind] = listing

    def file_sizes(self, kind: str) -> dict[str, int]:
        """Name -> stored size of the ``kind`` files, as listed (``list_files`` with sizes)."""
        started = self._listings.pop(kind, None)
        listing = list_names(self.storage, kind) if started is None else started.result()
        for name, size in listing.sizes.items():
            self._listed_sizes[f"{kind}/{name}"] = size
        self.ignored.update(dict.fromkeys(listing.ignored))
        return dict(listing.sizes)

    def delete_file(self, kind: str, name: str) -> None:
        self.storage.delete(object_path(kind, name))

    # ------------------------------------------------------------------ backups
    # A backup file is a sealed manifest; ``backups.manifest`` decodes it.
    def list_backups(self) -> list[str]:
        """The names (backup ids) of the stored backup files."""
        return self.list_files("snapshots")

    def load_backup(self, name: str) -> bytes:
        """The content of backup file ``name`` (see ``load_file`` for its errors)."""
        return self.load_file("snapshots", name)

    def save_backup(self, name: str, content: bytes) -> None:
        """Publish a backup file; ``ObjectExists`` if the name is taken."""
        self.save_file("snapshots", name, content, create_only=True)

    def delete_backup(self, name: str) -> None:
        self.delete_file("snapshots", name)

    def backup_exists(self, name: str) -> bool:
        """Whether the store holds backup file ``name`` now (asked of the store itself)."""
        try:
            self.storage.stat(object_path("snapshots", name))
            return True
        except ObjectNotFound:
            return False

    # -------------------------------------------------------------------- packs
    def list_packs(self) -> dict[str, ObjectInfo]:
        """Pack id -> listing (size, store time) of every stored pack; listed names that
        are not packs' are ignored (never read or deleted)."""
        listing = list_names(self.storage, "data")
        self.ignored.update(dict.fromkeys(listing.ignored))
        return listing.infos

    def read_pack(self, pack_id: str, size: int) -> bytes:
        """A whole pack of listed ``size``, refused unread if larger than any pack may be."""
        name = pack_name(pack_id)
        if size > MAX_PACK_SIZE:
            raise too_large(name, size, MAX_PACK_SIZE)
        return self.storage.get(name, 0, size)

    def read_pack_header(self, content: bytes) -> list[PackEntry]:
        """The authenticated header of a whole downloaded pack (``PackFormatError``,
        ``DecryptionFailed`` if it does not read)."""
        return read_header(content, self.sealer)

    def load_pack_header(self, pack_id: str, size: int) -> list[PackEntry]:
        """The header of a stored pack of listed ``size``, with two ranged reads.

        The trailer is unauthenticated: the header length it gives is bounded
        before anything is read; the header itself is authenticated. Raises
        ``PackFormatError``, ``DecryptionFailed`` or ``StorageError``.
        """
        name = pack_name(pack_id)
        if size < _TRAILER.size:
            raise PackFormatError("pack shorter than its trailer")
        (header_len,) = _TRAILER.unpack(self.storage.get(name, size - _TRAILER.size, _TRAILER.size))
        if header_len > MAX_HEADER_BYTES:
            raise PackFormatError(f"pack header claims {header_len:,} bytes")
        start = header_start(size, header_len)
        entries = decode_header(
            self.sealer.open(self.storage.get(name, start, header_len), HEADER_AAD)
        )
        for entry in entries:
            if entry.offset + entry.length > start:
                raise PackFormatError("pack header entry points past the blob area")
        return entries

    def load_unindexed_pack(self, pack_id: str, size: int, max_size: int) -> list[PackEntry]:
        """The header of a pack no index names, read whole: it must hash to its name.

        A keyless writer could otherwise plant a copy of a real pack's header over
        garbage under a new name. Raises ``PackFormatError`` (also for an object
        larger than ``max_size``, not read), ``DecryptionFailed``, ``StorageError``.
        """
        if size > max_size:
            raise PackFormatError(f"{size:,} bytes is larger than any pack")
        content = self.read_pack(pack_id, size)
        if pack_id_of(content) != pack_id:
            raise PackFormatError("content does not match its name")
        return read_header(content, self.sealer)

    def put_pack(self, pack_id: str, content: bytes | memoryview) -> None:
        self._note_written(pack_name(pack_id))
        self.storage.put(pack_name(pack_id), content)

    def delete_pack(self, pack_id: str) -> bool:
        """Delete a pack; False if it was gone already."""
        try:
            self.storage.delete(pack_name(pack_id))
        except ObjectNotFound:
            return False
        return True

    # -------------------------------------------------------------------- index
    def read_index(
        self, damaged: Callable[[str, Exception], None] | None = None
    ) -> dict[str, list[PackEntry]]:
        """Pack id -> header entries, from every index file (the first naming a pack wins).

        An index file that does not read (``RepositoryDamaged``) goes to ``damaged``,
        which may raise; without it such a file is skipped with a warning. One that
        went after the listing is skipped: it is not damage, a newer index covers its
        packs (a backup or prune rewriting the index).
        """
        return {
            pack_id: decode_header(encoded)
            for pack_id, encoded in self._scan_index(damaged).items()
        }

    def _scan_index(
        self,
        damaged: Callable[[str, Exception], None] | None,
        index_files: Collection[str] | None = None,
    ) -> dict[str, bytes]:
        return dict(self._iter_index(damaged, index_files))

    def _iter_index(
        self,
        damaged: Callable[[str, Exception], None] | None,
        index_files: Collection[str] | None = None,
    ) -> Iterator[tuple[str, bytes]]:
        """(pack id, encoded entries) of every readable index file, a file at a time
        (the first naming a pack wins); ``index_files``: a listing of ``index/`` made
        by the caller."""
        seen: set[str] = set()
        for name in self.list_files("index") if index_files is None else index_files:
            try:
                scanned = self._scan_index_file(name)
            except ObjectNotFound:
                continue
            except RepositoryDamaged as exc:
                if damaged is not None:
                    damaged(name, exc)
                else:
                    log.warning("skipped %s; run 'cloudkeep check'", exc)
                continue
            for pack_id, encoded in scanned:
                if pack_id not in seen:
                    seen.add(pack_id)
                    yield pack_id, encoded

    def _scan_index_file(self, name: str) -> list[tuple[str, bytes]]:
        try:
            return IndexFile.scan(self._open_file("index", name))
        except IndexFormatError as exc:
            raise RepositoryDamaged(f"index/{name} is damaged: {exc}") from exc

    def load_index(
        self,
        stored: Collection[str] | None = None,
        index_files: Collection[str] | None = None,
        *,
        locations: bool = True,
        spill: Path | None = None,
    ) -> MasterIndex:
        """The index of every readable index file (a damaged one is skipped with a
        warning), limited to the ``stored`` packs if given; it becomes ``index``.
        ``index_files``: the names of a listing of ``index/`` made by the caller.
        Without ``locations`` it only tells which blobs are stored (see ``MasterIndex``),
        and the ids added later are kept in a file in the private folder ``spill``.

        One planted or damaged index file must not stop every backup and restore:
        without it a backup stores those blobs again, a restore that needs them
        fails naming them, and ``check`` reports the file.
        """
        index = MasterIndex(locations=locations, spill=spill)
        index.add_packs_encoded(
            (pack_id, encoded)
            for pack_id, encoded in self._iter_index(None, index_files)
            if stored is None or pack_id in stored
        )
        self.index = index
        return index

    def has_blob(self, blob_id: bytes) -> bool:
        """Whether the loaded index names ``blob_id``."""
        return blob_id in self.index

    def read_index_file(self, name: str) -> IndexFile:
        try:
            return IndexFile.decode(self._open_file("index", name))
        except IndexFormatError as exc:
            raise RepositoryDamaged(f"index/{name} is damaged: {exc}") from exc

    def write_index_file(self, index_file: IndexFile) -> str:
        name = uuid.uuid4().hex
        sealed = self.sealer.seal(index_file.encode(), file_aad("index", name))
        self._note_written(f"index/{name}")
        self.storage.put(f"index/{name}", sealed)
        return name

    def write_index(self, packs: Mapping[str, list[PackEntry]]) -> set[str]:
        """Index files naming these packs, ``PACKS_PER_INDEX_FILE`` per file; their names."""
        names = set()
        pack_ids = list(packs)
        for start in range(0, len(pack_ids), PACKS_PER_INDEX_FILE):
            chunk = pack_ids[start : start + PACKS_PER_INDEX_FILE]
            names.add(self.write_index_file(IndexFile({p: packs[p] for p in chunk})))
        return names

    def remove_index_file(self, name: str) -> None:
        self.delete_file("index", name)

    def rebuild_index(self) -> IndexRebuild:
        """A complete new index from the packs' own headers (two ranged reads each).

        The new index files are written first; then the old ones that do not read
        go (a crash in between leaves a usable index). Old ones that still read
        stay: they may name blobs of a pack whose header is damaged. Run under the
        exclusive lock.
        """
        report = IndexRebuild()
        self.bypass_cache()
        packs: dict[str, list[PackEntry]] = {}
        for pack_id, info in self.list_packs().items():
            try:
                packs[pack_id] = self.load_pack_header(pack_id, info.size)
            except StorageUnavailable:
                raise
            except (StorageError, DecryptionFailed, PackFormatError, ValueError):
                report.unreadable_packs.append(pack_id)
        old_names = self.list_files("index")
        new_names = self.write_index({p: packs[p] for p in sorted(packs)})
        report.index_files_written = len(new_names)
        report.packs_indexed = len(packs)
        report.blobs_indexed = sum(len(entries) for entries in packs.values())
        for name in old_names:
            if name in new_names:
                continue
            try:
                self.read_index_file(name)
            except (RepositoryDamaged, ObjectNotFound):
                self.remove_index_file(name)
                report.index_files_removed += 1
        report.unreadable_packs.sort()
        return report

    # -------------------------------------------------------------------- blobs
    @property
    def codec(self) -> FrameCodec:
        """The frame codec: a pack writer paces its compression level through it."""
        return self._codec

    def seal_frames(
        self,
        blob_ids: list[bytes],
        chunks: list[bytes | memoryview],
        source: memoryview | None = None,
        offsets: list[int] | None = None,
    ) -> list[SealedFrame]:
        """See ``FrameCodec.seal_frames``."""
        return self._codec.seal_frames(blob_ids, chunks, source, offsets)

    def open_frame(self, sealed: bytes | memoryview) -> OpenedFrame:
        return self._codec.open_frame(sealed)

    def open_frames(self, sealed_frames: Sequence[bytes | memoryview]) -> list[OpenedFrame]:
        return self._codec.open_frames(sealed_frames)

    def blob_in_frame(
        self,
        frame: OpenedFrame,
        blob_id: bytes,
        inner_offset: int,
        raw_length: int,
        *,
        rehash: bool = False,
    ) -> memoryview:
        return self._codec.blob_in_frame(frame, blob_id, inner_offset, raw_length, rehash=rehash)

    def locate(
        self,
        blob_ids: Iterable[bytes],
        damage: DamageFn | None = None,
        index: MasterIndex | None = None,
    ) -> list[FrameBlobs]:
        """The blobs grouped by the frame holding them, as ``index`` (default: the
        loaded one) names them; a blob it does not name goes to ``damage``
        (``BlobDamaged`` raised without one)."""
        index = self.index if index is None else index
        wanted = list(dict.fromkeys(blob_ids))
        missing = index.missing(wanted)
        for position in missing:
            error = BlobDamaged(wanted[position], "not in the index")
            if damage is None:
                raise error
            damage(error)
        if missing:
            gone = set(missing)
            wanted = [blob_id for at, blob_id in enumerate(wanted) if at not in gone]
        return index.frames_of(wanted)

    def load_blobs(
        self,
        blob_ids: Iterable[bytes],
        damage: DamageFn | None = None,
        threads: int = loader.LOAD_THREADS,
        index: MasterIndex | None = None,
    ) -> Iterator[tuple[bytes, memoryview]]:
        """(blob id, content) of each blob, in pack order, many per ranged read, found
        through ``index`` (default: the loaded one).

        Every blob is re-hashed against its id. A blob that cannot be loaded
        (not indexed, pack missing, frame or blob damaged) goes to ``damage``;
        without it the first such blob raises ``BlobDamaged``. See ``loader``.
        """
        located = self.locate(blob_ids, damage, index)
        return loader.load_blobs(self.storage, self._codec, located, damage, threads)

    def load_frames(
        self,
        frames: Iterable[FrameBlobs],
        damage: DamageFn | None = None,
        threads: int = loader.LOAD_THREADS,
    ) -> Iterator[LoadedFrame]:
        """Frames as stored and opened, their wanted blobs verified; see ``loader``."""
        return loader.load_frames(self.storage, self._codec, frames, damage, threads)

    def load_range(self, span: PackRange, damage: DamageFn | None = None) -> list[LoadedFrame]:
        """One ranged read (from ``loader.plan_ranges``), its frames opened and verified;
        for callers that fetch in threads of their own."""
        return loader.load_range(self.storage, self._codec, span, damage)

    def verify_pack_frames(
        self,
        pack_id: str,
        content: bytes | memoryview,
        entries: list[PackEntry],
        damage: DamageFn,
    ) -> None:
        """Open every frame of a whole downloaded pack and re-hash each listed blob;
        what fails goes to ``damage``."""
        frames = [
            FrameBlobs(
                pack_id,
                offset,
                length,
                [(e.blob_id, e.inner_offset, e.raw_length) for e in members],
            )
            for (offset, length), members in frames_of(entries).items()
        ]
        for span in loader.plan_ranges(frames, max_bytes=MAX_PACK_SIZE, max_gap=MAX_PACK_SIZE):
            loader.open_range(self._codec, span, content, damage, data_offset=0)

    def read_blob(self, blob_id: bytes) -> memoryview:
        """One blob, re-hashed against its id (``BlobDamaged`` if it cannot be loaded)."""
        (span,) = loader.plan_ranges(self.locate([blob_id]))
        (loaded,) = self.load_range(span)
        (_, inner_offset, raw_length) = loaded.frame.blobs[0]
        return loaded.opened.data[inner_offset : inner_offset + raw_length]

    def pack_writer(self, known: Mapping[str, Iterable[PackEntry]] | None = None) -> PackWriter:
        """A writer deduplicating against the loaded index (which learns its packs), or
        only against the ``known`` packs (a prune's repack: the packs it keeps)."""
        index = None if known is None else MasterIndex.of(known)
        return PackWriter(self, self.config.get("pack_size", PACK_TARGET_SIZE), index)


def object_path(kind: str, name: str) -> str:
    """``kind/name``, for a name valid for its kind only (listed names are checked before)."""
    if not valid_name(kind, name):
        raise ValueError(f"invalid {kind} name {name[:80]!r}")
    return f"{kind}/{name}"


def cache_key(storage: Storage, config: dict) -> str:
    """Name of a repository's cache folder: a hash of where it is and of its id.

    The store's description is the user's own choice of store, so two stores never
    share a cache, whatever id a planted config claims; the id (hashed, never used
    as a path) gives a repository re-created at the same place a fresh cache.
    """
    text = json.dumps([storage.describe(), config.get("id")])
    return hashlib.sha256(text.encode()).hexdigest()


def with_cache(storage: Storage, cache_root: Path, config: dict) -> CachedStorage:
    """``storage`` keeping local copies of index and backup files under ``cache_root``,
    in the folder of this store and repository (``cache_key``)."""
    return CachedStorage(
        storage,
        cache_root / cache_key(storage, config),
        {kind: MAX_STORED_SIZE[kind] for kind in CACHED_KINDS},
    )
