"""What the store says is untrusted: listed names are validated, sizes bounded before reading.

Anyone who can write the bucket can plant any object name and any size. A
listed name is used only if it matches the strict pattern of its kind (an S3
key such as ``snapshots/../../home/u/.ssh/id`` is skipped and reported, never
read, cached or deleted); an object is read only if the listing or a stat says
it is no larger than its kind allows, and then exactly that many bytes, so a
huge object is refused before a byte of it is downloaded or allocated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudkeep.errors import RepositoryDamaged
from cloudkeep.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageUnavailable,
)

KIB = 1024
MIB = 1024 * KIB

_HEX32 = re.compile(r"[0-9a-f]{32}")
#: The backup id of ``backups.manifest.BACKUP_ID`` (the repository layer cannot import it).
BACKUP_ID_NAME = re.compile(r"[0-9A-Za-z.+-]{1,32}_[0-9]{1,20}")
NAME_PATTERNS: Mapping[str, re.Pattern[str]] = {
    "snapshots": BACKUP_ID_NAME,
    "index": _HEX32,
    "keys": _HEX32,
    "locks": _HEX32,
}
#: ``data/<first two characters of the id>/<64 hex>``: the folder must match the id.
PACK_NAME = re.compile(r"data/([0-9a-f]{2})/(\1[0-9a-f]{62})")

#: Largest stored (sealed) object of each kind. Ours are far smaller: a key file
#: or lock is a few hundred bytes, the config under 1 KiB, a manifest under 300 bytes per
#: file backed up, an index file ~50 bytes per blob of at most 256 packs (~1 GiB).
MAX_STORED_SIZE: Mapping[str, int] = {
    "config": 64 * KIB,
    "keys": 64 * KIB,
    "locks": 64 * KIB,
    "snapshots": 256 * MIB,
    "index": 256 * MIB,
}
#: Largest decompressed content of each sealed kind (zstd compresses 1000:1 at best).
MAX_PLAIN_SIZE: Mapping[str, int] = {
    "keys": 1 * MIB,
    "locks": 1 * MIB,
    "snapshots": 1024 * MIB,
    "index": 1024 * MIB,
}
#: Largest pack downloaded whole (check --read-data, prune): packs are ~4 MiB.
MAX_PACK_SIZE = 1024 * MIB
#: Kinds whose objects are rewritten in place (a lock every minute), see ``read_bounded``.
_REWRITTEN = ("locks/",)


def shown(name: str) -> str:
    """A store-supplied name as it may be printed: quoted, escaped, cut short."""
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


def valid_name(kind: str, name: str) -> bool:
    """Whether ``name`` (without the ``kind/`` folder) is one cloudkeep could have written."""
    pattern = NAME_PATTERNS.get(kind)
    return pattern is not None and pattern.fullmatch(name) is not None


def pack_id_of_name(path: str) -> str | None:
    """The pack id of a listed ``data/xx/<id>`` name; None if it is not a pack's name."""
    found = PACK_NAME.fullmatch(path)
    return found.group(2) if found else None


@dataclass
class Listing:
    """One listing of a kind: valid names (pack ids for packs) with what the listing said
    of each, and the names skipped."""

    infos: dict[str, ObjectInfo] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: info.size for name, info in self.infos.items()}


def list_names(storage: Storage, kind: str) -> Listing:
    """The objects of ``kind`` whose names are valid (size each); others are only reported."""
    listing = Listing()
    prefix = f"{kind}/"
    for info in storage.list(prefix):
        name = info.name[len(prefix) :] if info.name.startswith(prefix) else None
        if kind == "data":
            pack_id = pack_id_of_name(info.name)
            if pack_id is not None:
                listing.infos[pack_id] = info
                continue
        elif name is not None and valid_name(kind, name):
            listing.infos[name] = info
            continue
        listing.ignored.append(info.name)
    return listing


def parse_json(raw: bytes | str) -> Any:
    """JSON from the store; ``ValueError`` for anything that is not JSON.

    Nesting deeper than the interpreter's recursion limit (a 4 KiB key file of
    ``[``) raises ``RecursionError`` in ``json.loads``, which no caller expects.
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def too_large(path: str, size: int, limit: int) -> RepositoryDamaged:
    return RepositoryDamaged(
        f"{path} is damaged: it holds {size:,} bytes, more than the {limit:,} such an "
        "object may have (not written by cloudkeep); it was not read"
    )


def read_bounded(storage: Storage, path: str, limit: int, size: int | None = None) -> bytes:
    """The whole object ``path``, refused unread (``RepositoryDamaged``) beyond ``limit`` bytes.

    ``size`` is the listing's; without it the object is stat-ed. Exactly that many
    bytes are read, so an object replaced by a huge one meanwhile still costs no
    more. A lock is rewritten every minute, with a size that may change: it is
    read again when its size changed (or it became shorter) since it was taken.
    """
    rewritten = path.startswith(_REWRITTEN)
    for _attempt in range(3):
        if size is None:
            size = storage.stat(path).size
        if size > limit:
            raise too_large(path, size, limit)
        try:
            data = storage.get(path, 0, size)
        except (ObjectNotFound, StorageUnavailable):
            raise
        except StorageError:
            if not rewritten:
                raise
            size = None  # shorter than its listed size: rewritten since
            continue
        if not rewritten:
            return data
        size, before = storage.stat(path).size, size
        if size == before:
            return data
    raise RepositoryDamaged(f"{path} is damaged: its size changes at every read")


class DecompressionFailed(Exception):
    """Sealed content does not decompress, or would decompress beyond its bound."""


def decompress_bounded(compressed: bytes | memoryview, limit: int) -> bytes:
    """zstd content of at most ``limit`` bytes, else ``DecompressionFailed``.

    ``decompress`` allocates whatever size a frame header declares, ignoring
    ``max_output_size`` (which only caps frames that declare none): the declared
    size is checked first.
    """
    import zstandard

    try:
        declared = zstandard.frame_content_size(compressed)
        if declared > limit:
            raise DecompressionFailed(
                f"it would decompress to {declared:,} bytes, more than the {limit:,} allowed"
            )
        return zstandard.ZstdDecompressor().decompress(compressed, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise DecompressionFailed(f"it does not decompress ({exc})") from exc
