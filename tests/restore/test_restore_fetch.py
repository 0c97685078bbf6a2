"""restore.fetch against a real repository on a folder store: the right bytes reach the
right places, every fetched blob is re-hashed, and a substituted one is refused."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloudkeep.backups.manifest import CHUNKS_PER_LIST_BLOB, FileEntry, encode_chunk_list
from cloudkeep.backups.progress import Tracker
from cloudkeep.backups.restore import fetch
from cloudkeep.backups.restore.fetch import Located, RepositoryReader, frame_pieces, start_fetches
from cloudkeep.backups.restore.write import Files, Piece, Tree, reserve
from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.loader import MAX_RANGE_BYTES
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import Repository, with_cache
from cloudkeep.storage.base import is_local
from cloudkeep.storage.limits import limit_concurrency
from cloudkeep.storage.url import open_store
from tests.conftest import S3Server
from tests.restore.plan_helpers import fetches_of

CHUNK = 8 * 1024
EVIL = b"the attacker's bytes, as long as what they replace"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def repo(store: Path) -> Repository:
    return Repository.init(open_store(store.as_uri()), "fetch passphrase")


def save_frame(repo: Repository, ids: list[bytes], contents: list[bytes]) -> None:
    """Store ``contents`` in one frame whose member table names them ``ids`` (as a key
    holder can, whether or not the ids are the contents' own)."""
    writer = repo.pack_writer()
    assert writer.claim_new(ids) == list(range(len(ids)))
    writer.add_claimed(BlobType.DATA, repo.seal_frames(ids, contents))
    writer.flush()
    writer.close()


def honest(repo: Repository, count: int, seed: int = 1) -> tuple[list[bytes], list[bytes]]:
    contents = [random.Random(seed + n).randbytes(CHUNK) for n in range(count)]
    ids = [repo.blob_id(content) for content in contents]
    save_frame(repo, ids, contents)
    return ids, contents


def store_lists(repo: Repository, raws: list[bytes]) -> list[bytes]:
    """Store ``raws`` as chunk-list blobs, as the archiver does; their ids."""
    list_ids = [repo.blob_id(raw) for raw in raws]
    writer = repo.pack_writer()
    for list_id, raw in zip(list_ids, raws, strict=True):
        writer.add(BlobType.TREE, list_id, raw)
    writer.flush()
    writer.close()
    return list_ids


class Staging:
    """Files 0..n-1 of a batch, created and reserved as the restorer does."""

    def __init__(self, root: Path, sizes: list[int]) -> None:
        root.mkdir()
        self.root = root
        self.tree = Tree(root)
        self.files = Files()
        for number, size in enumerate(sizes):
            fd = self.files.open(self.tree, f"f{number}", size)
            reserve(fd, FileEntry(f"f{number}", "file", size=size))
        self.tracker = Tracker("restore", sum(sizes), None, None)

    def fetch(self, reader: RepositoryReader, targets: dict[bytes, list[tuple[int, int]]]) -> None:
        with ThreadPoolExecutor(4) as pool:
            fetches = fetches_of(targets)
            for future in start_fetches(pool, reader, fetches, self.files, self.tracker):
                future.result()

    def content(self, number: int) -> bytes:
        return (self.root / f"f{number}").read_bytes()

    def close(self) -> None:
        self.files.close()
        self.tree.close()


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[Staging]:
    staging = Staging(tmp_path / "staging", [3 * CHUNK, 2 * CHUNK])
    yield staging
    staging.close()


def test_fetched_blobs_reach_every_place_they_are_needed(
    repo: Repository, staging: Staging
) -> None:
    (a, b, c, d), (pa, pb, pc, pd) = honest(repo, 4)
    reader = RepositoryReader(repo)
    targets = {
        a: [(0, 0)],
        b: [(0, CHUNK), (1, CHUNK)],  # shared by both files
        c: [(0, 2 * CHUNK)],
        d: [(1, 0)],
    }
    with reader.opened():
        staging.fetch(reader, targets)
    assert staging.content(0) == pa + pb + pc
    assert staging.content(1) == pd + pb
    assert staging.tracker.done == 5 * CHUNK


def test_blobs_next_to_each_other_in_frame_and_file_become_one_piece(
    repo: Repository,
) -> None:
    (a, b, c, d), (pa, pb, pc, pd) = honest(repo, 4)
    reader = RepositoryReader(repo)
    targets = {
        a: [(0, 0)],
        b: [(0, CHUNK)],
        c: [(0, 2 * CHUNK)],
        d: [(1, 0), (1, 5 * CHUNK)],
    }
    with reader.opened():
        located = Located(reader, fetches_of(targets))
        ((span, (group,)),) = located.ranges()
        frame, places = located.members(group)
        (loaded,) = reader.load(span._replace(frames=[frame]))
        pieces: list[Piece] = []
        frame_pieces(loaded, places, located, pieces)
    assert sorted((file, offset, bytes(data)) for file, offset, data in pieces) == [
        (0, 0, pa + pb + pc),
        (1, 0, pd),
        (1, 5 * CHUNK, pd),
    ]


def test_a_substituted_blob_is_refused_even_inside_a_run(
    repo: Repository, staging: Staging
) -> None:
    """A key holder's frame whose authenticated member table names blob X while its bytes
    are the attacker's: refused although its neighbours are honest and adjacent."""
    good = [random.Random(n).randbytes(CHUNK) for n in range(2)]
    claimed = repo.blob_id(b"the honest content")
    ids = [repo.blob_id(good[0]), claimed, repo.blob_id(good[1])]
    save_frame(repo, ids, [good[0], EVIL, good[1]])
    reader = RepositoryReader(repo)
    targets = {
        ids[0]: [(0, 0)],
        claimed: [(0, CHUNK)],
        ids[2]: [(0, CHUNK + len(EVIL))],
    }
    with reader.opened(), pytest.raises(RepositoryDamaged, match="does not match its id"):
        staging.fetch(reader, targets)
    assert EVIL not in staging.content(0)


def test_only_the_blobs_wanted_from_a_frame_are_cut_and_checked(
    repo: Repository, staging: Staging
) -> None:
    good = random.Random(7).randbytes(CHUNK)
    claimed = repo.blob_id(b"something else")
    save_frame(repo, [claimed, repo.blob_id(good)], [EVIL, good])
    reader = RepositoryReader(repo)
    with reader.opened():
        staging.fetch(reader, {repo.blob_id(good): [(1, CHUNK)]})
    assert staging.content(1)[CHUNK:] == good


def test_a_slice_is_read_in_ranges_no_longer_than_the_bound(
    repo: Repository, staging: Staging
) -> None:
    contents = [random.Random(n).randbytes(CHUNK) for n in range(5)]
    ids = [repo.blob_id(content) for content in contents]
    writer = repo.pack_writer()
    assert writer.claim_new(ids) == list(range(5))
    for at in range(5):  # a frame each, one pack
        writer.add_claimed(BlobType.DATA, repo.seal_frames(ids[at : at + 1], contents[at : at + 1]))
    writer.flush()
    writer.close()
    bound = 2 * CHUNK + 1024
    targets = {blob_id: [(at // 3, at % 3 * CHUNK)] for at, blob_id in enumerate(ids)}
    reader = RepositoryReader(repo)
    reader.range_bytes = bound
    with reader.opened():
        ranges = Located(reader, fetches_of(targets)).ranges()
        staging.fetch(reader, targets)
    assert len(ranges) == 3
    assert all(span.length <= bound for span, _ in ranges)
    assert sorted(group for _, groups in ranges for group in groups) == list(range(5))
    assert staging.content(0) == b"".join(contents[:3])
    assert staging.content(1)[: 2 * CHUNK] == b"".join(contents[3:])


def pack_file(store: Path) -> Path:
    (path,) = [path for path in (store / "data").rglob("*") if path.is_file()]
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda pack: pack.unlink(), "is missing"),
        (lambda pack: pack.write_bytes(pack.read_bytes()[:100]), "is truncated"),
        (
            lambda pack: pack.write_bytes(b"\0" * 64 + pack.read_bytes()[64:]),
            "frame at .* damaged",
        ),
    ],
    ids=["missing", "truncated", "overwritten"],
)
def test_a_damaged_pack_is_reported_as_damage(
    repo: Repository,
    store: Path,
    staging: Staging,
    damage: Callable[[Path], object],
    message: str,
) -> None:
    ids, _ = honest(repo, 2)
    reader = RepositoryReader(repo)
    with reader.opened():
        damage(pack_file(store))
        with pytest.raises(RepositoryDamaged, match=message):
            staging.fetch(reader, {ids[0]: [(0, 0)]})


def test_a_blob_the_index_does_not_know_is_damage(repo: Repository, staging: Staging) -> None:
    honest(repo, 1)
    reader = RepositoryReader(repo)
    with reader.opened(), pytest.raises(RepositoryDamaged, match="not in the index"):
        staging.fetch(reader, {bytes(32): [(0, 0)]})


def test_chunk_lists_are_read_verified(repo: Repository) -> None:
    ids, _ = honest(repo, 2)
    chunk_list = encode_chunk_list([(ids[0], CHUNK), (ids[1], CHUNK)])
    (list_id,) = store_lists(repo, [chunk_list])
    reader = RepositoryReader(repo)
    entry = FileEntry("db", "file", size=2 * CHUNK)
    with reader.opened():
        assert reader.chunk_lists([(entry, list_id.hex())] * 2) == [chunk_list, chunk_list]
        other = FileEntry("other", "file", size=CHUNK)
        with pytest.raises(RepositoryDamaged, match="cannot restore other"):
            reader.chunk_lists([(entry, list_id.hex()), (other, "00" * 32)])
        with pytest.raises(RepositoryDamaged, match="cannot restore other"):
            reader.chunk_lists([(entry, list_id.hex()), (other, "zz")])


def test_a_chunk_list_with_a_partial_entry_names_its_file(repo: Repository) -> None:
    partial = encode_chunk_list([(bytes(32), CHUNK)])[:-1]
    (list_id,) = store_lists(repo, [partial])
    reader = RepositoryReader(repo)
    with reader.opened():
        read_ahead = fetch.ChunkLists(reader, [FileEntry("db", "file", content=[list_id.hex()])])
        try:
            with pytest.raises(RepositoryDamaged, match=r"cannot restore db: .*partial"):
                read_ahead.next()
        finally:
            read_ahead.close()


def test_chunk_lists_come_in_file_order_across_read_ahead_groups(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "LISTS_AHEAD", 2)
    ids, _ = honest(repo, 7)
    lists = [[(blob_id, CHUNK)] * (n + 1) for n, blob_id in enumerate(ids)]
    raws = [encode_chunk_list(listed) for listed in lists]
    list_ids = store_lists(repo, raws)
    batch = [
        FileEntry("a", "file", content=[list_ids[0].hex(), list_ids[1].hex(), list_ids[2].hex()]),
        FileEntry("b", "file", content=[]),
        FileEntry("c", "file", content=[i.hex() for i in (list_ids[3:] + list_ids[:1])]),
    ]
    reader = RepositoryReader(repo)
    with reader.opened():
        read_ahead = fetch.ChunkLists(reader, batch)
        try:
            assert [read_ahead.next().tobytes() for _ in range(8)] == [*raws, raws[0]]
        finally:
            read_ahead.close()


def test_a_chunk_list_larger_than_a_backup_writes_is_refused_unread(repo: Repository) -> None:
    """A key holder can name any blob as a file's chunk list, up to a 64 MiB frame each;
    read ahead, a few groups of them would be held at once. A backup writes at most
    ``CHUNKS_PER_LIST_BLOB`` chunks a list: a larger one is damage, refused by its size
    in the index before its pack is read (here the pack is gone)."""
    ids, _ = honest(repo, 1)
    oversized = encode_chunk_list([(ids[0], CHUNK)] * (CHUNKS_PER_LIST_BLOB + 1))
    (list_id,) = store_lists(repo, [oversized])
    reader = RepositoryReader(repo)
    entry = FileEntry("db", "file", size=CHUNK)
    big = FileEntry("big", "file", size=CHUNK)
    with reader.opened():
        where = repo.index.lookup(list_id)
        assert where is not None
        repo.storage.delete(f"data/{where.pack_id[:2]}/{where.pack_id}")
        with pytest.raises(RepositoryDamaged, match=r"cannot restore big: .* more than"):
            reader.chunk_lists([(entry, ids[0].hex()), (big, list_id.hex())])


def test_a_restore_reads_smaller_ranges_from_a_folder_than_from_a_remote_store(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """1 MiB ranges bound a restore's memory from a folder; from a remote store each
    range costs a round trip, so the loader's 2 MiB stay. Wrappers do not hide a folder."""
    folder = open_store((tmp_path / "folder").as_uri())
    remote = open_store(s3_server.url_for("ranges"))
    for store, local in ((folder, True), (remote, False)):
        repo = Repository.init(store, "ranges passphrase")
        wrapped = limit_concurrency(with_cache(store, tmp_path / "cache", repo.config), 2)
        assert is_local(store) is is_local(wrapped) is local
        assert RepositoryReader(Repository.open(wrapped, "ranges passphrase")).range_bytes == (
            fetch.LOCAL_RANGE_BYTES if local else MAX_RANGE_BYTES
        )
    assert fetch.LOCAL_RANGE_BYTES < MAX_RANGE_BYTES
