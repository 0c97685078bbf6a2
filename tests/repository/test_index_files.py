"""Reading the index beside a client that rewrites it: a vanished file is no damage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cloudkeep.backups.checker import Checker
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.base import ObjectInfo, Payload, Storage
from cloudkeep.storage.url import open_store


class RacingStore:
    """A real store where another client deletes an index file right after our listing
    of ``index/`` (as a backup or prune replacing the index does)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.vanish: str | None = None  # the index file to delete after the next listing

    def put(self, name: str, data: Payload, *, create_only: bool = False) -> None:
        self._storage.put(name, data, create_only=create_only)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._storage.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self._storage.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        listed = list(self._storage.list(prefix))
        if prefix.startswith("index") and self.vanish is not None:
            self._storage.delete(f"index/{self.vanish}")
            self.vanish = None
        return iter(listed)

    def delete(self, name: str) -> None:
        self._storage.delete(name)

    def describe(self) -> str:
        return self._storage.describe()


def _store_pack(repo: Repository, content: bytes) -> str:
    """One pack with one blob, indexed by an index file of its own; that file's name."""
    writer = repo.pack_writer()
    assert writer.add(BlobType.DATA, repo.blob_id(content), content)
    (name,) = writer.flush()
    writer.close()
    return name


def test_an_index_file_gone_after_the_listing_is_skipped_not_damage(tmp_path: Path) -> None:
    store = RacingStore(open_store((tmp_path / "store").as_uri()))
    repo = Repository.init(store, "index pass")  # type: ignore[arg-type]
    gone = _store_pack(repo, b"first blob")
    kept = _store_pack(repo, b"second blob")
    (kept_pack,) = repo.read_index_file(kept).packs

    damage: list[str] = []
    store.vanish = gone
    indexed = repo.read_index(lambda name, exc: damage.append(f"{name}: {exc}"))
    assert damage == [] and list(indexed) == [kept_pack]

    _store_pack(repo, b"third blob")
    store.vanish = kept
    assert kept_pack not in repo.load_index().pack_ids()

    # check beside an index rewrite reports no damage (nor "run repair-index").
    store.vanish = repo.list_files("index")[0]
    report = Checker(repo).run(read_data=False)
    assert report.errors == [] and report.ok
