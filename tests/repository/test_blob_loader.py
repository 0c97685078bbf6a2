"""The batched blob loader: few ranged reads, every blob re-hashed, damage reported."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cloudkeep.repository.index import FrameBlobs
from cloudkeep.repository.loader import PackRange, plan_ranges
from cloudkeep.repository.packs import BlobType, pack_name
from cloudkeep.repository.repository import BlobDamaged, Repository
from cloudkeep.storage.base import Storage
from cloudkeep.storage.url import open_store
from tests.conftest import PassThroughStorage


class CountingStorage(PassThroughStorage):
    """A real store that counts the ranged reads made through it."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.gets: list[tuple[str, int, int | None]] = []
        self._lock = threading.Lock()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.gets.append((name, offset, length))
        return self.inner.get(name, offset, length)


def frame(pack: str, offset: int, length: int) -> FrameBlobs:
    return FrameBlobs(pack, offset, length, [(os.urandom(32), 0, 1)])


def test_plan_ranges_merges_near_frames_and_bounds_each_read() -> None:
    a, b, c, far, other = (
        frame("p", 0, 100),
        frame("p", 150, 100),
        frame("p", 300, 100),
        frame("p", 10_000, 100),
        frame("q", 0, 50),
    )
    assert plan_ranges([far, c, other, a, b], max_bytes=1000, max_gap=100) == [
        PackRange("p", 0, 400, [a, b, c]),
        PackRange("p", 10_000, 100, [far]),
        PackRange("q", 0, 50, [other]),
    ]
    assert [r.offset for r in plan_ranges([a, b, c], max_bytes=250, max_gap=100)] == [0, 300]
    assert len(plan_ranges([a, b, c], max_bytes=1000, max_gap=10)) == 3


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Repository, CountingStorage, dict[bytes, bytes]]:
    """A repository with 60 blobs in 3 packs, a frame each."""
    counting = CountingStorage(open_store((tmp_path / "store").as_uri()))
    repo = Repository.init(counting, "loader pass")
    contents: dict[bytes, bytes] = {}
    for _ in range(3):
        writer = repo.pack_writer()
        for _ in range(20):
            content = os.urandom(3000)
            contents[repo.blob_id(content)] = content
            writer.add(BlobType.DATA, repo.blob_id(content), content)
        writer.flush()
        writer.close()
    repo.load_index()
    counting.gets.clear()
    return repo, counting, contents


def test_every_blob_comes_once_with_one_read_per_pack(
    stored: tuple[Repository, CountingStorage, dict[bytes, bytes]],
) -> None:
    repo, counting, contents = stored
    loaded = {blob_id: bytes(data) for blob_id, data in repo.load_blobs(contents)}
    assert loaded == contents
    assert len(counting.gets) == 3  # 20 frames of a pack in one ranged read
    frames = list(repo.load_frames(repo.locate(contents)))
    assert sum(len(f.frame.blobs) for f in frames) == 60
    for loaded_frame in frames:  # the sealed frame is the stored bytes
        f = loaded_frame.frame
        stored_bytes = counting.inner.get(pack_name(f.pack_id), f.offset, f.length)
        assert bytes(loaded_frame.sealed) == stored_bytes


def test_damage_is_reported_per_blob_and_the_rest_still_loads(
    stored: tuple[Repository, CountingStorage, dict[bytes, bytes]],
) -> None:
    repo, counting, contents = stored
    victim = next(iter(contents))
    location = repo.index.lookup(victim)
    assert location is not None
    name = pack_name(location.pack_id)
    content = bytearray(counting.inner.get(name))
    content[location.offset + 40] ^= 0xFF  # inside the victim's sealed frame
    counting.inner.put(name, bytes(content))
    missing_id = repo.blob_id(b"never stored")
    damaged: dict[bytes, str] = {}

    def report(error: BlobDamaged) -> None:
        damaged[error.blob_id] = error.reason

    loaded = dict(repo.load_blobs([*contents, missing_id], report))
    assert set(damaged) == {victim, missing_id}
    assert damaged[missing_id] == "not in the index"
    assert "damaged" in damaged[victim] and location.pack_id[:16] in damaged[victim]
    assert loaded.keys() == contents.keys() - {victim}
    with pytest.raises(BlobDamaged) as raised:
        list(repo.load_blobs(contents))
    assert raised.value.blob_id == victim
    with pytest.raises(BlobDamaged, match="damaged"):
        repo.read_blob(victim)
    with pytest.raises(BlobDamaged, match="not in the index"):
        repo.read_blob(missing_id)
    other = next(blob_id for blob_id in contents if blob_id != victim)
    assert bytes(repo.read_blob(other)) == contents[other]


def test_a_frame_that_lies_about_its_blob_is_refused(tmp_path: Path) -> None:
    repo = Repository.init(open_store((tmp_path / "store").as_uri()), "loader pass")
    claimed = repo.blob_id(b"the honest content.")
    writer = repo.pack_writer()
    writer.add(BlobType.DATA, claimed, b"the attacker's text")  # a key holder's lie
    writer.flush()
    writer.close()
    repo.load_index()
    with pytest.raises(BlobDamaged, match="does not match its id"):
        list(repo.load_blobs([claimed]))


def test_a_missing_pack_is_named(
    stored: tuple[Repository, CountingStorage, dict[bytes, bytes]],
) -> None:
    repo, _, contents = stored
    victim = next(iter(contents))
    location = repo.index.lookup(victim)
    assert location is not None
    repo.delete_pack(location.pack_id)
    damaged: list[BlobDamaged] = []
    loaded = dict(repo.load_blobs(contents, damaged.append))
    assert len(damaged) == 20 and len(loaded) == 40
    assert all(error.reason == f"pack {location.pack_id[:16]} is missing" for error in damaged)
