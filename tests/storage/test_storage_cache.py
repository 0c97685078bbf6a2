"""CachedStorage: local copies of immutable metadata, never a store name as a path."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from cloudkeep.storage.base import Storage
from cloudkeep.storage.cache import CachedStorage
from cloudkeep.storage.url import open_store
from tests.conftest import PassThroughStorage


class CountingStorage(PassThroughStorage):
    """A real store that records the reads that reach it."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.gets: list[str] = []

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets.append(name)
        return self.inner.get(name, offset, length)


@pytest.fixture
def store(tmp_path: Path) -> tuple[CachedStorage, CountingStorage, Path]:
    counting = CountingStorage(open_store((tmp_path / "store").as_uri()))
    folder = tmp_path / "cache"
    return CachedStorage(counting, folder, {"index": 1000, "snapshots": 1000}), counting, folder


def copies(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_whole_reads_of_cached_kinds_come_from_the_copy(
    store: tuple[CachedStorage, CountingStorage, Path],
) -> None:
    cached, counting, folder = store
    cached.put("index/a", b"index a")
    counting.inner.put("index/b", b"index b")
    counting.inner.put("data/00/pack", b"pack bytes")
    assert cached.get("index/a", 0, 7) == b"index a"  # kept by the put
    assert cached.get("index/b") == b"index b"
    assert cached.get("index/b", 0, 7) == b"index b"
    assert cached.get("data/00/pack") == cached.get("data/00/pack") == b"pack bytes"
    assert counting.gets == ["index/b", "data/00/pack", "data/00/pack"]
    assert all(len(Path(name).name) == 64 for name in copies(folder))
    assert stat.S_IMODE((folder / "index").stat().st_mode) == 0o700
    cached.serve_copies = False  # a check judges the store
    assert cached.get("index/a") == b"index a" and counting.gets[-1] == "index/a"
    assert cached.stat("index/a").size == 7  # stat is always the store's


def test_deletes_evictions_and_listings_drop_copies(
    store: tuple[CachedStorage, CountingStorage, Path],
) -> None:
    cached, counting, folder = store
    for name in ("a", "b", "c"):
        cached.put(f"snapshots/{name}", name.encode())
    cached.delete("snapshots/a")
    assert len(copies(folder)) == 2
    assert cached.evict("snapshots/b") and not cached.evict("snapshots/b")
    cached.get("snapshots/b")
    stranger = folder / "snapshots" / "notes.txt"
    stranger.write_text("not ours")
    counting.inner.delete("snapshots/c")  # another device deleted it
    assert sorted(info.name for info in cached.list("snapshots/")) == ["snapshots/b"]
    kept = "snapshots/" + hashlib.sha256(b"snapshots/b").hexdigest()
    assert copies(folder) == {"snapshots/notes.txt", kept}


def test_store_names_never_become_paths_and_symlinks_are_not_followed(
    store: tuple[CachedStorage, CountingStorage, Path], tmp_path: Path
) -> None:
    cached, counting, folder = store
    secret = tmp_path / "secret"
    secret.write_bytes(b"the user's own file")
    climbing = "snapshots/../../secret"
    counting.inner.put("snapshots/x", b"from the store")
    cached.get("snapshots/x")
    (copy,) = (folder / "snapshots").iterdir()
    copy.unlink()
    os.symlink(secret, copy)  # planted at the copy's place
    assert cached.get("snapshots/x") == b"from the store"
    assert secret.read_bytes() == b"the user's own file"
    assert cached._path(climbing) is not None
    assert cached._path(climbing).parent == folder / "snapshots"  # type: ignore[union-attr]


def test_copies_larger_than_their_kind_allows_are_not_read(
    store: tuple[CachedStorage, CountingStorage, Path],
) -> None:
    cached, counting, folder = store
    cached.put("index/big", b"small")
    (copy,) = (folder / "index").iterdir()
    copy.write_bytes(b"x" * 2000)  # beyond the 1000 bytes an index copy may have
    assert cached.get("index/big") == b"small"
    assert counting.gets == ["index/big"]
