"""The repository: config, keys, packs, index and sealed files in one store.

Store layout (see docs/format.md)::

    config                 JSON: format version, repository id, chunker parameters, the
                           master key's fingerprint, a MAC under the master key
    keys/<id>              master key wrapped by a passphrase-derived key (Argon2id)
    data/<xx>/<pack id>    packs of sealed, compressed blobs
    index/<id>             which pack holds each blob
    snapshots/<backup id>  one sealed manifest per backup, written last, create-only
    locks/<id>             shared/exclusive locks with expiry (space reclaim vs. backups)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import struct
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import zstandard

from cloudkeep.errors import (
    FormatTooNew,
    KeyMissing,
    RepositoryChanged,
    RepositoryDamaged,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassphrase,
)
from cloudkeep.platform import open_nofollow
from cloudkeep.repository.crypto import (
    NONCE_SIZE,
    OVERHEAD,
    DecryptionFailed,
    MasterKey,
    Sealer,
)
from cloudkeep.repository.index import IndexFile, IndexFormatError, MasterIndex
from cloudkeep.repository.keys import (
    MAX_KEY_FILE_BYTES,
    MAX_KEY_FILES_TRIED,
    new_key_name,
    unwrap_key,
    wrap_key,
)
from cloudkeep.repository.packs import BlobType, FrameMember, PackBuilder, pack_name
from cloudkeep.repository.untrusted import (
    MAX_PACK_SIZE,
    MAX_PLAIN_SIZE,
    MAX_STORED_SIZE,
    DecompressionFailed,
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
)

log = logging.getLogger(__name__)
# 3: files sealed with their kind and name as associated data, an authenticated config
# naming the master key's fingerprint (2: files bound to their kind only; 1: one sealed
# blob per chunk).
FORMAT_VERSION = 3
# 4 MiB: a 2 GiB backup peaked at 174 MiB RSS (8 MiB packs: 211 MiB) for less CPU,
# and still few, large requests on object stores.
PACK_TARGET_SIZE = 4 * 1024 * 1024
# zstd --fast=2 on 256 KiB frames of the benchmark database (bench/zstd_levels.py):
# compresses 509-516 MB/s and decompresses 1810 MB/s with frames 0.536 of the input;
# level 1: 363-424 / 1038-1270 MB/s, 0.503; --fast=1: 429-471 / 1776, 0.528; --fast=3
# buys only 2-4% more speed for another 1.5% of size. A day's backup adds ~2%.
DEFAULT_ZSTD_LEVEL = -2
PACKS_PER_INDEX_FLUSH = 64  # an index file per 256 MiB uploaded
_RAW, _ZSTD = 0, 1
# Frames of ~256 KiB on the benchmark database vs one 8 KiB chunk each: 10% smaller
# store, zstd 35% faster, 32x fewer AES-GCM calls (see docs/format.md).
FRAME_TARGET_SIZE = 256 * 1024
FRAME_AAD = b"frame"
_COUNT = struct.Struct("<I")
_MEMBER = struct.Struct("<32sI")  # blob id, length: the frame's authenticated member table
MAX_FRAME_SIZE = 64 * 1024 * 1024  # far above the largest frame; bounds a hostile one
# A frame stored as it is (incompressible) plus its member table: bounds a range read.
MAX_SEALED_FRAME_SIZE = 2 * MAX_FRAME_SIZE
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


class OpenedFrame(NamedTuple):
    """A decrypted, decompressed frame and its member table ((offset, id) -> length)."""

    data: memoryview
    table: dict[tuple[int, bytes], int]


class FrameDamaged(Exception):
    """A frame does not decrypt or decompress: every blob in it is lost."""


class BlobDamaged(Exception):
    """A blob failed verification: missing pack, bad ciphertext or wrong content hash."""

    def __init__(self, blob_id: bytes, reason: str) -> None:
        super().__init__(f"blob {blob_id.hex()[:16]}: {reason}")
        self.blob_id = blob_id


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


class Repository:
    """An unlocked repository. Thread-safe for concurrent blob reads and writes."""

    def __init__(
        self,
        storage: Storage,
        config: dict,
        key: MasterKey,
        cache_dir: Path | None,
        key_file: str | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.key = key
        # The key file this key came from (devices remember it and try it first).
        self.key_file = key_file
        self.sealer = Sealer(key)
        self.index = MasterIndex()
        self._cache_dir = cache_dir / cache_key(storage, config) if cache_dir else None
        # Sizes the last listing gave, so a listed object is read without a stat first.
        self._listed_sizes: dict[str, int] = {}
        #: Listed names that are no cloudkeep object's (never used): shown by list and check.
        self.ignored: dict[str, None] = {}
        self._compressor = threading.local()
        # check turns this off: it must judge what the store holds, not our copy of it.
        self.read_cache = True
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
                f"no cloudkeep repository at {storage.describe()} "
                "(run 'cloudkeep init' or 'cloudkeep backup' to create one)"
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
    def init(cls, storage: Storage, passphrase: str, cache_dir: Path | None = None) -> Repository:
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
        return cls(storage, config, key, cache_dir, key_file)

    @classmethod
    def open(
        cls,
        storage: Storage,
        passphrase: str | None,
        cache_dir: Path | None = None,
        preferred_key_file: str | None = None,
    ) -> Repository:
        return cls.unlock(
            storage, cls.read_config(storage), passphrase, cache_dir, preferred_key_file
        )

    @classmethod
    def unlock(
        cls,
        storage: Storage,
        config: dict,
        passphrase: str | None,
        cache_dir: Path | None = None,
        preferred_key_file: str | None = None,
    ) -> Repository:
        """Open ``config`` (from ``read_config``) with the key file holding the key it names.

        At most ``MAX_KEY_FILES_TRIED`` well-formed key files are tried, the
        preferred one (the one this device opened before) first. A key file that
        opens with the passphrase but holds another master key (a planted one, or
        one left by a device that lost the race to create the repository) is
        skipped exactly like one that does not open: the work done, and what is
        read from the store, do not depend on it, so it is no guessing oracle.
        Then the config's MAC must verify under the key before its values count.
        """
        if not passphrase:
            raise KeyMissing("no passphrase or key file given to open the repository")
        sizes = {
            f"keys/{name}": size
            for name, size in list_names(storage, "keys").sizes.items()
            if size <= MAX_KEY_FILE_BYTES
        }
        if not sizes:
            raise KeyMissing(f"the repository at {storage.describe()} has no key files")
        names = sorted(sizes)
        if preferred_key_file in names:
            names.remove(preferred_key_file)
            names.insert(0, preferred_key_file)
        for name in names[:MAX_KEY_FILES_TRIED]:
            try:
                key = unwrap_key(
                    read_bounded(storage, name, MAX_STORED_SIZE["keys"], sizes[name]), passphrase
                )
            except (ObjectNotFound, RepositoryDamaged):
                continue
            if key is None or key.fingerprint() != config["key"]:
                continue
            if not hmac.compare_digest(key.config_mac(canonical_config(config)), config["mac"]):
                raise RepositoryDamaged(
                    f"the repository config at {storage.describe()} fails authentication "
                    "(it was modified): restore it from a copy, or back up into a new store"
                )
            return cls(storage, config, key, cache_dir, name)
        raise WrongPassphrase("wrong passphrase: no key of this repository opens with it")

    def ensure_key_current(self) -> None:
        """Refuse to publish unless the store's config still names this handle's key.

        One GET. A store that cannot create the config atomically may let a second
        device replace it during our first backup; ``RepositoryChanged`` is raised,
        so no backup is published under a key no other device uses. Only the
        creator's first backup (``discard_if_replaced``) removes what it wrote
        (sealed under the losing key); any other handle leaves it to reclaim, as
        another device may already use it.
        """
        stored = self.read_config(self.storage)
        if (stored["id"], stored["key"]) == (self.config["id"], self.config["key"]):
            return
        with self._written_lock:
            written, self._written = self._written, []
        if self.discard_if_replaced:
            for name in written:  # what a failed delete leaves is unreferenced: reclaim's
                with contextlib.suppress(StorageError):
                    self.storage.delete(name)
        raise RepositoryChanged(
            f"the repository at {self.storage.describe()} was created with another key "
            "while this backup ran (another device created it at the same time); "
            "nothing was published: run the backup again"
        )

    def _note_written(self, name: str) -> None:
        with self._written_lock:
            self._written.append(name)

    @property
    def chunker(self) -> dict[str, int]:
        return self.config.get("chunker", DEFAULT_CHUNKER)

    # -------------------------------------------------------------- sealed files
    def save_file(
        self, kind: str, name: str, plaintext: bytes, *, create_only: bool = False
    ) -> None:
        sealed = self.sealer.seal(
            zstandard.ZstdCompressor(level=3).compress(plaintext), file_aad(kind, name)
        )
        self.storage.put(f"{kind}/{name}", sealed, create_only=create_only)
        self._cache_put(kind, name, sealed)

    def load_file(self, kind: str, name: str) -> bytes:
        """Decrypted content of a sealed file, from the local cache when present.

        Raises ``RepositoryDamaged`` (naming the object) if it is larger than its
        kind allows (refused unread), does not decrypt or decompresses too large;
        ``ObjectNotFound`` if it is gone.
        """
        sealed = self._cache_get(kind, name)
        from_cache = sealed is not None
        if sealed is None:
            sealed = self._read_listed(kind, name)
        try:
            plaintext = decompress_bounded(
                self.sealer.open(sealed, file_aad(kind, name)), MAX_PLAIN_SIZE[kind]
            )
        except (DecryptionFailed, DecompressionFailed) as exc:
            if from_cache:
                self._cache_drop(kind, name)
                return self.load_file(kind, name)
            raise RepositoryDamaged(f"{kind}/{name} is damaged: {exc}") from exc
        if not from_cache:
            self._cache_put(kind, name, sealed)
        return plaintext

    def _read_listed(self, kind: str, name: str) -> bytes:
        """A sealed file's bytes, bounded by its kind's limit (see ``read_bounded``)."""
        path = object_path(kind, name)
        return read_bounded(self.storage, path, MAX_STORED_SIZE[kind], self._listed_sizes.get(path))

    def list_files(self, kind: str) -> list[str]:
        """Names of the ``kind`` files; listed names that are not valid ones are ignored."""
        listing = list_names(self.storage, kind)
        for name, size in listing.sizes.items():
            self._listed_sizes[f"{kind}/{name}"] = size
        self.ignored.update(dict.fromkeys(listing.ignored))
        names = list(listing.sizes)
        self._cache_prune(kind, set(names))
        return names

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

    def delete_file(self, kind: str, name: str) -> None:
        self.storage.delete(object_path(kind, name))
        self._cache_drop(kind, name)

    # ------------------------------------------------------------------- cache
    # The cache folder is named by a hash (``cache_key``) and each file by the hash
    # of its kind and name, so no local path holds text from the store.
    def _cache_path(self, kind: str, name: str) -> Path | None:
        if self._cache_dir is None or kind not in ("index", "snapshots"):
            return None
        return self._cache_dir / kind / _cache_file_name(kind, name)

    def _cache_get(self, kind: str, name: str) -> bytes | None:
        if not self.read_cache:
            return None
        path = self._cache_path(kind, name)
        if path is None:
            return None
        try:
            with open(path, "rb", opener=_open_no_follow) as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_STORED_SIZE[kind]:
                    return None
                return handle.read()
        except OSError:
            return None

    def _cache_put(self, kind: str, name: str, sealed: bytes) -> None:
        path = self._cache_path(kind, name)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(sealed)
            os.replace(tmp, path)
        except OSError:
            pass  # the cache only saves requests; never fail an operation over it

    def _cache_drop(self, kind: str, name: str) -> None:
        path = self._cache_path(kind, name)
        if path:
            path.unlink(missing_ok=True)

    def _cache_prune(self, kind: str, live: set[str]) -> None:
        """Remove cached files of ``kind`` no longer in the store.

        Only regular files named like ours (64 hex) in our own folder go; a symlink
        is never followed, and anything else there is left alone.
        """
        folder = self._cache_dir / kind if self._cache_dir else None
        if folder is None or kind not in ("index", "snapshots"):
            return
        keep = {_cache_file_name(kind, name) for name in live}
        try:
            if not stat.S_ISDIR(folder.lstat().st_mode):
                return
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if (
                _CACHE_FILE.fullmatch(entry.name)
                and entry.name not in keep
                and entry.is_file(follow_symlinks=False)
            ):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    # ------------------------------------------------------------------- index
    def load_index(self) -> MasterIndex:
        """Every readable index file; a damaged one is skipped with a warning.

        One planted or damaged index file must not stop every backup and restore:
        without it a backup stores those blobs again, a restore that needs them
        fails naming them, and ``check`` reports the file.
        """
        index = MasterIndex()
        for name in self.list_files("index"):
            try:
                packs = IndexFile.scan(self._load_index_compressed(name))
            except IndexFormatError as exc:
                log.warning("skipped index/%s, damaged: %s; run 'cloudkeep check'", name, exc)
                continue
            except RepositoryDamaged as exc:
                log.warning("skipped %s; run 'cloudkeep check'", exc)
                continue
            for pack_id, encoded in packs:
                index.add_pack_encoded(pack_id, encoded)
        self.index = index
        return index

    def read_index_file(self, name: str) -> IndexFile:
        try:
            return IndexFile.decode(self._load_index_compressed(name))
        except IndexFormatError as exc:
            raise RepositoryDamaged(f"index/{name} is damaged: {exc}") from exc

    def _load_index_compressed(self, name: str) -> bytes:
        sealed = self._cache_get("index", name)
        if sealed is not None:
            try:
                return self.sealer.open(sealed, file_aad("index", name))
            except DecryptionFailed:
                self._cache_drop("index", name)
        sealed = self._read_listed("index", name)
        try:
            compressed = self.sealer.open(sealed, file_aad("index", name))
        except DecryptionFailed as exc:
            raise RepositoryDamaged(f"index/{name} is damaged: {exc}") from exc
        self._cache_put("index", name, sealed)
        return compressed

    def write_index_file(self, index_file: IndexFile) -> str:
        name = uuid.uuid4().hex
        sealed = self.sealer.seal(index_file.encode(), file_aad("index", name))
        self._note_written(f"index/{name}")
        self.storage.put(f"index/{name}", sealed)
        self._cache_put("index", name, sealed)
        return name

    # ------------------------------------------------------------------- blobs
    def _zstd(self) -> zstandard.ZstdCompressor:
        """This thread's compressor (zstd contexts are not thread-safe)."""
        compressor = getattr(self._compressor, "zstd", None)
        if compressor is None:
            level = self.config.get("zstd_level", DEFAULT_ZSTD_LEVEL)
            compressor = self._compressor.zstd = zstandard.ZstdCompressor(level=level)
        return compressor

    def _unzstd(self) -> zstandard.ZstdDecompressor:
        decompressor = getattr(self._compressor, "unzstd", None)
        if decompressor is None:
            decompressor = self._compressor.unzstd = zstandard.ZstdDecompressor()
        return decompressor

    def seal_frames(
        self,
        blob_ids: list[bytes],
        chunks: list[bytes | memoryview],
        source: memoryview | None = None,
        offsets: list[int] | None = None,
    ) -> list[tuple[list[bytes], list[FrameMember]]]:
        """Group consecutive blobs into frames, compress them all in one GIL-free call, seal.

        Returns (sealed frame as pieces to write in order, its members) pairs,
        blobs in their original order. When the chunks are slices of ``source``
        (chunk i at ``offsets[i]``, increasing, not overlapping), a frame of
        adjacent chunks is that slice of ``source`` instead of a joined copy: a
        backup's database pages were copied once more per frame (0.1-0.2 s of
        CPU per 600 MiB).
        """
        groups: list[list[bytes | memoryview]] = []
        memberships: list[list[FrameMember]] = []
        spans: list[tuple[int, int]] = []  # (first chunk number, bytes) of each frame
        parts: list[bytes | memoryview] = []
        members: list[FrameMember] = []
        size = first = 0
        for number, (blob_id, chunk) in enumerate(zip(blob_ids, chunks, strict=True)):
            members.append(FrameMember(blob_id, size, len(chunk)))
            parts.append(chunk)
            size += len(chunk)
            if size >= FRAME_TARGET_SIZE:
                groups.append(parts)
                memberships.append(members)
                spans.append((first, size))
                parts, members, size, first = [], [], 0, number + 1
        if members:
            groups.append(parts)
            memberships.append(members)
            spans.append((first, size))
        raws = [
            self._frame_bytes(group, span, source, offsets)
            for group, span in zip(groups, spans, strict=True)
        ]
        non_empty = [raw for raw in raws if raw]  # zstd's batch call refuses empty inputs
        compressed = iter(
            self._zstd().multi_compress_to_buffer(non_empty, threads=1) if non_empty else ()
        )
        seal_parts = self.sealer.seal_parts
        nonces = os.urandom(NONCE_SIZE * len(raws))
        frames = []
        for number, (raw, frame_members) in enumerate(zip(raws, memberships, strict=True)):
            packed = next(compressed) if raw else b""
            nonce = nonces[number * NONCE_SIZE : (number + 1) * NONCE_SIZE]
            table = _COUNT.pack(len(frame_members)) + b"".join(
                [_MEMBER.pack(blob_id, raw_length) for blob_id, _, raw_length in frame_members]
            )
            # zstd only when it pays: incompressible frames are stored as they are.
            body = [b"\x01", packed] if len(packed) < len(raw) else [b"\x00", raw]
            frames.append((seal_parts([table, *body], FRAME_AAD, nonce), frame_members))
        return frames

    @staticmethod
    def _frame_bytes(
        group: list[bytes | memoryview],
        span: tuple[int, int],
        source: memoryview | None,
        offsets: list[int] | None,
    ) -> bytes | memoryview:
        if len(group) == 1:
            return group[0]
        if source is not None and offsets is not None:
            first, size = span
            start, end = offsets[first], offsets[first + len(group) - 1] + len(group[-1])
            if end - start == size:  # adjacent: the frame is already there
                return source[start:end]
        return b"".join(group)

    def open_frame(self, sealed: bytes | memoryview) -> OpenedFrame:
        """Decrypt and decompress one frame; its blobs are cut out by ``blob_in_frame``."""
        try:
            table, encoding, payload = self._split_frame(self.sealer.open(sealed, FRAME_AAD))
        except DecryptionFailed as exc:
            raise FrameDamaged(str(exc)) from exc
        if encoding == _RAW:
            return OpenedFrame(payload, table)
        try:
            data = self._unzstd().decompress(payload, max_output_size=MAX_FRAME_SIZE)
        except zstandard.ZstdError as exc:
            raise FrameDamaged(f"does not decompress: {exc}") from exc
        return OpenedFrame(memoryview(data), table)

    @staticmethod
    def _split_frame(
        plaintext: bytes | memoryview,
    ) -> tuple[dict[tuple[int, bytes], int], int, memoryview]:
        """(member table by offset, encoding, payload) of a decrypted frame."""
        view = memoryview(plaintext)
        try:
            (count,) = _COUNT.unpack_from(view)
            end = _COUNT.size + count * _MEMBER.size
            table: dict[tuple[int, bytes], int] = {}  # keyed by id too: empty blobs share offsets
            offset = 0
            for blob_id, raw_length in _MEMBER.iter_unpack(view[_COUNT.size : end]):
                table[offset, blob_id] = raw_length
                offset += raw_length
            encoding = view[end]
        except (struct.error, IndexError) as exc:
            raise FrameDamaged("member table is malformed") from exc
        if encoding not in (_RAW, _ZSTD):
            raise FrameDamaged("unknown payload encoding")
        payload = view[end + 1 :]
        if encoding == _ZSTD:
            # zstd allocates the size a frame header declares: bound it before.
            try:
                declared = zstandard.frame_content_size(payload)
            except zstandard.ZstdError as exc:
                raise FrameDamaged(f"does not decompress: {exc}") from exc
            if declared > MAX_FRAME_SIZE:
                raise FrameDamaged(f"declares {declared:,} bytes, more than a frame may hold")
        return table, encoding, payload

    def open_frames(self, sealed_frames: list[bytes | memoryview]) -> list[OpenedFrame]:
        """``open_frame`` for many: all zstd payloads decompressed in one GIL-free call.

        Thousands of per-frame GIL releases stall the other threads (convoy effect).
        On any failure the batch is redone frame by frame, to raise for the damaged one.
        """
        open_into, split = self.sealer.open_into, self._split_frame
        try:
            plain = memoryview(bytearray(sum(len(s) - OVERHEAD for s in sealed_frames)))
            parts = []
            position = 0
            for sealed in sealed_frames:
                size = len(sealed) - OVERHEAD
                open_into(memoryview(sealed), FRAME_AAD, plain[position : position + size])
                parts.append(split(plain[position : position + size]))
                position += size
            packed = [payload for _, encoding, payload in parts if encoding == _ZSTD]
            unpacked = (
                iter(self._unzstd().multi_decompress_to_buffer(packed, threads=1))
                if packed
                else iter(())
            )
            return [
                OpenedFrame(memoryview(next(unpacked)) if encoding == _ZSTD else payload, table)
                for table, encoding, payload in parts
            ]
        except (DecryptionFailed, FrameDamaged, zstandard.ZstdError, ValueError):
            return [self.open_frame(sealed) for sealed in sealed_frames]

    def blob_in_frame(
        self,
        frame: OpenedFrame,
        blob_id: bytes,
        inner_offset: int,
        raw_length: int,
        *,
        rehash: bool = False,
    ) -> memoryview:
        """A blob cut out of its opened frame.

        The frame's authenticated member table vouches for the blob: only a key
        holder can write a frame, and the writer hashed every blob it lists.
        ``rehash`` also recomputes the id, which only a writer bug could fail.
        """
        if frame.table.get((inner_offset, blob_id)) != raw_length:
            raise BlobDamaged(blob_id, "is not where the index says in its frame")
        data = frame.data[inner_offset : inner_offset + raw_length]
        if len(data) != raw_length:
            raise BlobDamaged(blob_id, "lies past the end of its frame")
        if rehash and self.sealer.blob_id(data) != blob_id:
            raise BlobDamaged(blob_id, "content does not match its id")
        return data

    def read_blob(self, blob_id: bytes) -> memoryview:
        location = self.index.lookup(blob_id)
        if location is None:
            raise BlobDamaged(blob_id, "not in the index")
        if location.length > MAX_SEALED_FRAME_SIZE:
            raise BlobDamaged(blob_id, "its frame is larger than any frame may be")
        try:
            sealed = self.storage.get(pack_name(location.pack_id), location.offset, location.length)
        except ObjectNotFound as exc:
            raise BlobDamaged(blob_id, f"pack {location.pack_id[:16]} is missing") from exc
        except StorageUnavailable:
            raise
        except StorageError as exc:  # a range past the end: the pack was cut short
            raise BlobDamaged(blob_id, f"pack {location.pack_id[:16]} is truncated") from exc
        if len(sealed) != location.length:
            raise BlobDamaged(blob_id, f"pack {location.pack_id[:16]} is truncated")
        try:
            frame = self.open_frame(sealed)
        except FrameDamaged as exc:
            raise BlobDamaged(blob_id, str(exc)) from exc
        return self.blob_in_frame(
            frame, blob_id, location.inner_offset, location.raw_length, rehash=True
        )

    def pack_writer(self) -> PackWriter:
        return PackWriter(self)


_CACHE_FILE = re.compile(r"[0-9a-f]{64}")


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


def _open_no_follow(path: str, flags: int) -> int:
    return open_nofollow(path, flags)


def _cache_file_name(kind: str, name: str) -> str:
    return hashlib.sha256(f"{kind}/{name}".encode()).hexdigest()


class PackWriter:
    """Collects sealed blobs into packs and uploads them in the background.

    Uploads overlap with chunking (two at a time, bounded so memory stays flat).
    ``flush`` uploads the partial pack and writes the index of everything
    uploaded, so a manifest written afterwards never points at unindexed data.
    """

    def __init__(self, repo: Repository, max_pending_uploads: int = 2) -> None:
        self._repo = repo
        self._lock = threading.Lock()
        self._uploads_lock = threading.Lock()
        self._builder = PackBuilder()
        self._pending: set[bytes] = set()
        self._uploads: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(max_pending_uploads)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload")
        self._unindexed = IndexFile()
        self._index_files: list[str] = []
        self._flushed_packs: list[str] = []
        self.uploaded_bytes = 0

    def known(self, blob_id: bytes) -> bool:
        """Already stored, or queued for storing by this writer."""
        return blob_id in self._repo.index or blob_id in self._pending

    def claim_new(self, blob_ids: list[bytes]) -> list[int]:
        """Positions of the ids nobody stored or claimed yet; claims them (one lock per batch).

        A claimed blob must then be passed to ``add_claimed`` by the claimer.
        """
        known, pending = self._repo.index.ids(), self._pending
        fresh = []
        with self._lock:
            for position, blob_id in enumerate(blob_ids):
                if blob_id not in known and blob_id not in pending:
                    pending.add(blob_id)
                    fresh.append(position)
        return fresh

    def add(self, blob_type: BlobType, blob_id: bytes, data: bytes | memoryview) -> bool:
        """Seal and queue one blob in a frame of its own; False if it is known already."""
        if not self.claim_new([blob_id]):
            return False
        self.add_claimed(blob_type, self._repo.seal_frames([blob_id], [data]))
        return True

    def add_frame(
        self, blob_type: BlobType, sealed: list[bytes], members: list[FrameMember]
    ) -> bool:
        """Queue an already sealed frame (space reclaim copies them) unless all of it is known."""
        with self._lock:
            if all(self.known(member.blob_id) for member in members):
                return False
            self._pending.update(member.blob_id for member in members)
        self.add_claimed(blob_type, [(sealed, members)])
        return True

    def add_claimed(
        self, blob_type: BlobType, frames: list[tuple[list[bytes], list[FrameMember]]]
    ) -> None:
        """Queue sealed frames whose blobs the caller claimed: one lock round per batch."""
        pack_size = self._repo.config.get("pack_size", PACK_TARGET_SIZE)
        full: list[PackBuilder] = []
        with self._lock:
            for sealed, members in frames:
                self._builder.add_frame(blob_type, sealed, members)
                if self._builder.size >= pack_size:
                    full.append(self._builder)
                    self._builder = PackBuilder()
        for builder in full:
            self._submit(builder)

    def _submit(self, builder: PackBuilder) -> None:
        # Two sealing threads submit packs: the list of uploads has its own lock, as
        # a lost future would let flush() index before that pack is uploaded.
        self._raise_failed_uploads()
        self._slots.acquire()
        future = self._executor.submit(self._upload, builder)
        future.add_done_callback(lambda _f: self._slots.release())
        with self._uploads_lock:
            self._uploads.append(future)

    def _upload(self, builder: PackBuilder) -> None:
        pack_id, content = builder.finish(self._repo.sealer)
        self._repo._note_written(pack_name(pack_id))
        self._repo.storage.put(pack_name(pack_id), content)
        with self._lock:
            self._repo.index.add_pack(pack_id, builder.entries)
            self._pending.difference_update([entry.blob_id for entry in builder.entries])
            self._unindexed.packs[pack_id] = builder.entries
            self.uploaded_bytes += len(content)
            full = len(self._unindexed.packs) >= PACKS_PER_INDEX_FLUSH
            if full:
                unindexed, self._unindexed = self._unindexed, IndexFile()
        if full:
            # Index as we go: bounded memory, and what was uploaded before a crash
            # is found (and deduplicated against) by the next backup.
            name = self._repo.write_index_file(unindexed)
            with self._lock:
                self._index_files.append(name)
                self._flushed_packs += unindexed.packs

    def _raise_failed_uploads(self) -> None:
        with self._uploads_lock:
            done = [future for future in self._uploads if future.done()]
            self._uploads = [future for future in self._uploads if not future.done()]
        for future in done:
            future.result()  # re-raises the upload's error here, in the caller

    def flush(self) -> list[str]:
        """Upload everything queued and index it; returns the new index file names."""
        with self._lock:
            builder, self._builder = self._builder, PackBuilder()
        if builder.entries:
            self._submit(builder)
        with self._uploads_lock:
            uploads, self._uploads = self._uploads, []
        for future in uploads:
            future.result()
        with self._lock:
            unindexed, self._unindexed = self._unindexed, IndexFile()
        if unindexed.packs:
            self._index_files.append(self._repo.write_index_file(unindexed))
            self._flushed_packs += unindexed.packs
        return list(self._index_files)

    def flushed_pack_ids(self) -> list[str]:
        return list(self._flushed_packs)

    def close(self) -> None:
        """Stop the upload threads (after flush, or abandoning queued work on cancel)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def unindexed_pack_ids(self) -> list[str]:
        """Packs uploaded since the last flush: garbage if the backup is abandoned."""
        with self._lock:
            return list(self._unindexed.packs)
