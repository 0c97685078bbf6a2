"""``Repository.pack_writer``: what a writer deduplicates against, how it paces compression."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cloudkeep.repository import index as index_module
from cloudkeep.repository.frames import ADAPTIVE_LEVELS, DEFAULT_ZSTD_LEVEL
from cloudkeep.repository.index import MasterIndex
from cloudkeep.repository.pack_writer import FIRST_PACK_SHARE, PACK_OVERSHOOT, SLOW_STORE_WAIT
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.base import pieces
from cloudkeep.storage.url import open_store


def test_a_writer_given_known_packs_deduplicates_only_against_them(tmp_path: Path) -> None:
    repo = Repository.init(open_store((tmp_path / "store").as_uri()), "writer pass")
    content = b"a blob every writer sees"
    blob_id = repo.blob_id(content)
    first = repo.pack_writer()
    assert first.add(BlobType.DATA, blob_id, content)
    first.flush()
    first.close()
    (stored_pack,) = repo.index.pack_ids()

    # The default writer follows the repository's index, even one loaded after it was made.
    again = repo.pack_writer()
    repo.load_index()
    assert again.known(blob_id) and not again.add(BlobType.DATA, blob_id, content)
    again.close()

    # A prune's writer knows only the packs it keeps: the blob is copied into a new pack,
    # and the repository's own index is left as it was.
    loaded = repo.index
    repack = repo.pack_writer(known={})
    assert not repack.known(blob_id) and repack.add(BlobType.DATA, blob_id, content)
    (index_file,) = repack.flush()
    repack.close()
    (new_pack,) = repo.read_index_file(index_file).packs
    assert new_pack != stored_pack and repo.index is loaded
    assert repo.index.pack_ids() == [stored_pack]

    kept = repo.read_index()
    assert blob_id in MasterIndex.of(kept)
    with_kept = repo.pack_writer(known=kept)
    assert with_kept.known(blob_id)
    with_kept.close()


class SlowPuts:
    """A store whose puts of packs take ``delay`` seconds each: a slow link."""

    def __init__(self, inner, delay: float) -> None:  # type: ignore[no-untyped-def]
        self._inner = inner
        self.delay = delay
        self.packs: list[int] = []

    def put(self, name: str, data, *, create_only: bool = False) -> None:  # type: ignore[no-untyped-def]
        if name.startswith("data/"):
            time.sleep(self.delay)
            self.packs.append(sum(len(piece) for piece in pieces(data)))
        self._inner.put(name, data, create_only=create_only)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


def test_packs_waiting_on_a_slow_store_raise_the_level_and_a_fast_one_lowers_it(
    tmp_path: Path,
) -> None:
    slow = SlowPuts(open_store((tmp_path / "store").as_uri()), delay=4 * SLOW_STORE_WAIT)
    repo = Repository.init(slow, "writer pass")  # type: ignore[arg-type]
    pack_size = repo.config["pack_size"]
    writer = repo.pack_writer()
    assert repo.codec.level == DEFAULT_ZSTD_LEVEL
    for _ in range(6):  # each pack's worth of random blobs: sealed at once, stored slowly
        blobs = [os.urandom(64 * 1024) for _ in range(pack_size // (64 * 1024) + 1)]
        for blob in blobs:
            writer.add(BlobType.DATA, repo.blob_id(blob), blob)
    assert repo.codec.level > DEFAULT_ZSTD_LEVEL
    slow.delay = 0
    writer.flush()
    for _ in range(len(ADAPTIVE_LEVELS)):
        blob = os.urandom(pack_size + 1)
        writer.add(BlobType.DATA, repo.blob_id(blob), blob)
        writer.flush()
    writer.close()
    assert repo.codec.level == DEFAULT_ZSTD_LEVEL
    # The first pack is sealed at a share of the pack size, the next ones at the full size.
    assert pack_size // FIRST_PACK_SHARE <= slow.packs[0] < pack_size <= min(slow.packs[1:5])


def test_a_large_frame_that_would_overfill_a_pack_starts_the_next_one(tmp_path: Path) -> None:
    """Frames of plain files' chunks are up to 4 MiB: a pack is not left to grow by one
    (the packs waiting to upload and the uploaders' buffers stay near the pack size)."""
    store = SlowPuts(open_store((tmp_path / "store").as_uri()), delay=0)
    repo = Repository.init(store, "writer pass")  # type: ignore[arg-type]
    pack_size = repo.config["pack_size"]
    writer = repo.pack_writer()
    blobs = [os.urandom(pack_size * share // 20) for share in (6, 9, 14, 6, 3, 2, 14, 1)]
    for blob in blobs:
        writer.add(BlobType.DATA, repo.blob_id(blob), blob)
    writer.flush()
    writer.close()
    header_room = 4096  # the sealed header and trailer of a few entries
    assert max(store.packs) <= pack_size + PACK_OVERSHOOT + header_room
    assert len(store.packs) < len(blobs)  # small frames still share packs
    repo.load_index()
    assert [bytes(repo.read_blob(repo.blob_id(blob))) for blob in blobs] == blobs


def test_a_backups_writer_deduplicates_against_the_ids_it_spilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "RECENT_MAX", 1)  # every uploaded pack spilled at once
    repo = Repository.init(open_store((tmp_path / "store").as_uri()), "writer pass")
    spill = tmp_path / "scratch"
    spill.mkdir()
    repo.load_index(locations=False, spill=spill)
    writer = repo.pack_writer()
    blobs = [os.urandom(1000) for _ in range(3)]
    for blob in blobs:
        assert writer.add(BlobType.DATA, repo.blob_id(blob), blob)
    writer.flush()
    spilled = repo.index._spilled
    assert spilled is not None and len(spilled) == len(repo.index) == 3
    twin = repo.blob_id(blobs[0])[:8] + bytes(24)  # shares the first 8 bytes only
    assert writer.known(repo.blob_id(blobs[1])) and not writer.known(twin)
    assert not writer.add(BlobType.DATA, repo.blob_id(blobs[2]), blobs[2])
    writer.close()
