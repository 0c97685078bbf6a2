"""plan_prune and execute_prune on a real repository in a folder store."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cloudkeep import __version__
from cloudkeep.backups.checker import Checker
from cloudkeep.backups.manifest import (
    FileEntry,
    Manifest,
    created_from_us,
    current_platform,
    encode_chunk_list,
    new_backup_id,
    now_us,
)
from cloudkeep.backups.prune import plan_prune, prune
from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.url import open_store

FAR_FUTURE = 4e9  # a store clock past every pack's margin


class Layout:
    """Packs of known content: ``pack(name, blobs)`` writes one pack, a frame per blob."""

    def __init__(self, tmp_path: Path) -> None:
        self.repo = Repository.init(open_store((tmp_path / "store").as_uri()), "prune pass")
        self.packs: dict[str, str] = {}  # our name -> pack id
        self.blobs: dict[str, bytes] = {}  # our name -> blob id

    def pack(self, name: str, blobs: dict[str, bytes], blob_type: BlobType = BlobType.DATA) -> str:
        before = set(self.repo.index.pack_ids())
        writer = self.repo.pack_writer()
        for blob_name, content in blobs.items():
            blob_id = self.repo.blob_id(content)
            self.blobs[blob_name] = blob_id
            assert writer.add(blob_type, blob_id, content)
        writer.flush()
        writer.close()
        (pack_id,) = set(self.repo.index.pack_ids()) - before
        self.packs[name] = pack_id
        return pack_id

    def chunk_list(self, name: str, chunks: list[str], sizes: dict[str, int]) -> bytes:
        listing = encode_chunk_list([(self.blobs[c], sizes[c]) for c in chunks])
        self.pack(name, {name: listing}, BlobType.TREE)
        return self.blobs[name]

    def backup(self, list_id: bytes, size: int) -> str:
        stamp = now_us()
        manifest = Manifest(
            id=new_backup_id(stamp),
            version=__version__,
            timestamp=str(stamp),
            bytes=size,
            created=created_from_us(stamp),
            device_name="desk",
            platform=current_platform(),
            hostname=socket.gethostname(),
            source="/data",
            kind="folder",
            files=[FileEntry("db", "file", 0o644, size=size, content=[list_id.hex()])],
        )
        self.repo.save_backup(manifest.id, manifest.encode())
        return manifest.id

    def size(self, name: str) -> int:
        return self.repo.list_packs()[self.packs[name]].size

    def frame_length(self, blob: str) -> int:
        location = self.repo.index.lookup(self.blobs[blob])
        assert location is not None
        return location.length


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """A kept backup K (blobs x, k1 and its list); garbage y, z, u and an old list.

    P1 = x (small, used) + y (large, unused): mostly unused, repacked.
    P2 = z (unused): deleted. P3 = k1 (large, used) + u (small, unused): kept.
    P4 = K's chunk list: kept. P5 = a deleted backup's chunk list: deleted.
    """
    rnd = os.urandom
    contents = {"x": rnd(20_000), "y": rnd(200_000), "z": rnd(50_000)}
    contents |= {"k1": rnd(300_000), "u": rnd(10_000)}
    sizes = {name: len(content) for name, content in contents.items()}
    built = Layout(tmp_path)
    built.pack("P1", {"x": contents["x"], "y": contents["y"]})
    built.pack("P2", {"z": contents["z"]})
    built.pack("P3", {"k1": contents["k1"], "u": contents["u"]})
    kept_list = built.chunk_list("P4", ["x", "k1"], sizes)
    built.chunk_list("P5", ["y", "z"], sizes)
    built.backup(kept_list, sizes["x"] + sizes["k1"])
    return built


def test_the_plan_has_exact_figures(layout: Layout) -> None:
    repo = layout.repo
    plan = plan_prune(repo, FAR_FUTURE, 0.0)
    p = layout.packs
    assert plan.repack == [p["P1"]]
    assert set(plan.keep) == {p["P3"], p["P4"]}
    assert sorted(plan.delete) == sorted([p["P1"], p["P2"], p["P5"]])
    assert [c.frame.blobs[0][0] for c in plan.copies] == [layout.blobs["x"]]
    assert plan.bytes_freed == layout.size("P1") + layout.size("P2") + layout.size("P5")
    assert plan.bytes_rewritten == layout.frame_length("x")
    assert plan.blobs_kept == 4  # k1 and u (P3), K's list (P4), x (copied)
    assert plan.blobs_dropped == 3  # y, z, the deleted backup's list
    assert plan.adopted == plan.unreadable == plan.sheltered == []
    assert plan.summary() == (
        f"would free {plan.bytes_freed:,} bytes: repack 1 packs "
        f"({plan.bytes_rewritten:,} bytes rewritten), delete 3 packs"
    )
    figures = plan.figures()
    assert figures["packs_deleted"] == 3 and figures["packs_repacked"] == 1


def test_unindexed_packs_are_adopted_sheltered_or_left_alone(layout: Layout) -> None:
    repo = layout.repo
    p = layout.packs
    for name in repo.list_files("index"):  # P2's index file is lost: P2 is unindexed
        if p["P2"] in repo.read_index_file(name).packs:
            repo.remove_index_file(name)
    junk = "ab" + "0" * 62
    repo.storage.put(f"data/ab/{junk}", os.urandom(5000))

    young = plan_prune(repo, None, 3600.0)  # no store clock: every unindexed pack is young
    assert young.adopted == [p["P2"]] and young.sheltered == [p["P2"]]
    assert p["P2"] not in young.delete and young.unreadable == [junk]

    old = plan_prune(repo, FAR_FUTURE, 3600.0)
    assert old.adopted == [p["P2"]] and old.sheltered == []
    assert p["P2"] in old.delete and junk not in old.delete


def test_execute_frees_exactly_the_plan_and_keeps_every_backup(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = layout.repo
    before = set(repo.list_packs())
    dry = prune(repo, dry_run=True)
    assert dry.dry_run and dry.packs_deleted == 0
    assert set(repo.list_packs()) == before  # a dry run changes nothing

    monkeypatch.setenv("CLOUDKEEP_PRUNE_MARGIN", "0")
    report = prune(repo)
    assert report.stopped is None
    assert report.packs_deleted == 3 and report.packs_repacked == 1
    assert report.bytes_freed == dry.plan.bytes_freed
    after = set(repo.list_packs())
    p = layout.packs
    assert {p["P3"], p["P4"]} <= after and not {p["P1"], p["P2"], p["P5"]} & after
    assert len(after - before) == 1  # the pack x was copied into
    fresh = Repository(repo.storage, repo.config, repo.key)
    assert Checker(fresh).run(read_data=True).ok
    fresh.load_index()
    assert bytes(fresh.read_blob(layout.blobs["x"])) and layout.blobs["y"] not in fresh.index
    assert plan_prune(fresh, FAR_FUTURE, 0.0).delete == []  # nothing left to free


def test_a_backup_needing_a_missing_pack_stops_the_plan(layout: Layout) -> None:
    repo = layout.repo
    repo.delete_pack(layout.packs["P3"])
    with pytest.raises(RepositoryDamaged, match="nothing was deleted"):
        plan_prune(repo, FAR_FUTURE, 0.0)
