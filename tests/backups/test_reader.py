"""backups.reader against a real repository: random reads and the stream give the backed-up
bytes, only the frames holding the wanted chunks are fetched, the cache stays within its
bytes, and a substituted blob, a lying chunk list or a manifest size that disagrees with the
chunks is refused."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from cloudkeep.backups import reader as reader_module
from cloudkeep.backups.manifest import FileEntry, encode_chunk_list
from cloudkeep.backups.reader import BackupReader
from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.pack_writer import PackWriter
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import Repository
from cloudkeep.settings import Settings
from cloudkeep.storage.base import Storage
from cloudkeep.storage.url import open_store
from cloudkeep.workspace import Workspace
from tests.conftest import PassThroughStorage

PASSPHRASE = "reader passphrase"
CHUNKS_PER_FRAME = 16
CHUNKS_PER_LIST = 40


class CountingStorage(PassThroughStorage):
    """Counts the bytes every read returns."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.bytes = 0
        self._lock = threading.Lock()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(name, offset, length)
        with self._lock:
            self.bytes += len(data)
        return data


class Built:
    """A file of ``chunks`` (varied lengths, one content repeated) stored in frames of
    ``CHUNKS_PER_FRAME`` and chunk lists of ``CHUNKS_PER_LIST``."""

    def __init__(self, repo: Repository, storage: CountingStorage, seed: int = 3) -> None:
        rnd = random.Random(seed)
        self.repo = repo
        self.storage = storage
        contents = [rnd.randbytes(rnd.randint(100, 3000)) for _ in range(200)]
        contents[150] = contents[20]  # the same chunk twice in one file
        self.contents = contents
        self.data = b"".join(contents)
        ids = [repo.blob_id(content) for content in contents]
        self.ids = ids
        writer = repo.pack_writer()
        for start in range(0, len(ids), CHUNKS_PER_FRAME):
            members = dict(
                zip(
                    ids[start : start + CHUNKS_PER_FRAME],
                    contents[start : start + CHUNKS_PER_FRAME],
                    strict=True,
                )
            )
            frame_ids = list(members)
            fresh = [frame_ids[n] for n in writer.claim_new(frame_ids)]
            sealed = repo.seal_frames(fresh, [members[blob_id] for blob_id in fresh])
            writer.add_claimed(BlobType.DATA, sealed)
        lists = []
        for start in range(0, len(ids), CHUNKS_PER_LIST):
            pairs = [(ids[n], len(contents[n])) for n in range(start, start + CHUNKS_PER_LIST)]
            lists.append(chunk_list(writer, repo, pairs))
        writer.flush()
        writer.close()
        self.entry = FileEntry("data/file.bin", "file", size=len(self.data), content=lists)


def chunk_list(writer: PackWriter, repo: Repository, pairs: list[tuple[bytes, int]]) -> str:
    raw = encode_chunk_list(pairs)
    list_id = repo.blob_id(raw)
    writer.add(BlobType.TREE, list_id, raw)
    return list_id.hex()


@pytest.fixture
def built(tmp_path: Path) -> Built:
    storage = CountingStorage(open_store((tmp_path / "store").as_uri()))
    repo = Repository.init(storage, PASSPHRASE)
    return Built(repo, storage)


def fresh_reader(
    built: Built, cache_bytes: int = reader_module.DEFAULT_CACHE_BYTES
) -> BackupReader:
    built.repo.load_index()
    built.storage.bytes = 0
    return BackupReader(built.repo, cache_bytes)


def frame_bytes(repo: Repository, blob_ids: list[bytes]) -> int:
    """Sealed bytes of the distinct frames holding ``blob_ids``."""
    frames = {}
    for blob_id in blob_ids:
        where = repo.index.lookup(blob_id)
        assert where is not None
        frames[(where.pack_id, where.offset)] = where.length
    return sum(frames.values())


def test_chunks_map_the_file(built: Built) -> None:
    chunks = fresh_reader(built).file(built.entry).chunks()
    offset = 0
    for (start, length, blob_id), content, expected_id in zip(
        chunks, built.contents, built.ids, strict=True
    ):
        assert (start, length, blob_id) == (offset, len(content), expected_id)
        offset += length
    assert offset == built.entry.size


def test_random_reads_at_and_across_chunk_boundaries_equal_the_source(built: Built) -> None:
    backup_file = fresh_reader(built).file(built.entry)
    data = built.data
    boundaries = [start for start, _, _ in backup_file.chunks()]
    rnd = random.Random(5)
    cases = [(0, 1), (0, len(data)), (len(data) - 1, 1), (len(data), 10), (len(data) - 5, 100)]
    for boundary in rnd.sample(boundaries[1:], 20):
        cases += [(boundary, 1), (boundary - 1, 2), (boundary - 3, 7000), (boundary, 0)]
    cases += [(rnd.randrange(len(data)), rnd.randint(1, 20_000)) for _ in range(100)]
    for offset, size in cases:
        assert backup_file.read(offset, size) == data[offset : offset + size], (offset, size)
    with pytest.raises(ValueError):
        backup_file.read(-1, 1)


def test_a_read_fetches_the_chunk_lists_and_the_frames_it_needs_only(built: Built) -> None:
    reader = fresh_reader(built)
    backup_file = reader.file(built.entry)
    chunks = backup_file.chunks()
    lists = reader.fetched_bytes
    assert lists == built.storage.bytes
    assert 0 < lists < len(built.data) // 10

    # One chunk inside the fifth frame: that frame, nothing else.
    start, length, blob_id = chunks[4 * CHUNKS_PER_FRAME + 3]
    assert backup_file.read(start + 1, length - 2) == built.data[start + 1 : start + length - 1]
    assert reader.fetched_bytes - lists == frame_bytes(built.repo, [blob_id])
    assert reader.fetched_bytes == built.storage.bytes

    # Its frame's other chunks were verified and kept: reading them fetches nothing.
    before = reader.fetched_bytes
    start = chunks[4 * CHUNKS_PER_FRAME][0]
    end = chunks[5 * CHUNKS_PER_FRAME - 1][0] + chunks[5 * CHUNKS_PER_FRAME - 1][1]
    assert backup_file.read(start, end - start) == built.data[start:end]
    assert reader.fetched_bytes == before

    # Across the boundary of two frames not read yet: both, in one ranged read.
    first, second = chunks[8 * CHUNKS_PER_FRAME - 1], chunks[8 * CHUNKS_PER_FRAME]
    offset = first[0] + first[1] - 10
    assert backup_file.read(offset, 20) == built.data[offset : offset + 20]
    assert reader.fetched_bytes - before == frame_bytes(built.repo, [first[2], second[2]])
    assert reader.fetched_bytes == built.storage.bytes
    assert reader.fetched_bytes < len(built.data) // 2


def test_the_cache_keeps_within_its_bytes(built: Built) -> None:
    limit = 20_000
    reader = fresh_reader(built, cache_bytes=limit)
    backup_file = reader.file(built.entry)
    rnd = random.Random(9)
    for _ in range(60):
        offset = rnd.randrange(built.entry.size)
        assert backup_file.read(offset, 5000) == built.data[offset : offset + 5000]
        assert reader.cache.bytes <= limit
    uncached = fresh_reader(built, cache_bytes=0)
    assert uncached.file(built.entry).read(0, built.entry.size) == built.data
    assert uncached.cache.bytes == 0


def test_stream_gives_the_whole_file_in_order(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "STREAM_WINDOW_BYTES", 30_000)  # many windows
    reader = fresh_reader(built)
    assert b"".join(reader.file(built.entry).stream()) == built.data
    assert reader.cache.bytes == 0  # a stream does not push out what random reads keep
    assert reader.fetched_bytes == built.storage.bytes


def test_stream_stopped_early_cancels_cleanly(built: Built) -> None:
    reader = fresh_reader(built)
    pieces = reader.file(built.entry).stream()
    assert bytes(next(pieces)) == built.contents[0]
    pieces.close()


def test_a_substituted_blob_is_refused(built: Built) -> None:
    """A key holder's frame naming blob X in its member table, holding other bytes: read
    and stream refuse it and give none of its bytes."""
    repo = built.repo
    evil = b"the attacker's bytes" * 20
    honest = b"the honest content" * 20
    claimed = repo.blob_id(honest)
    writer = repo.pack_writer()
    writer.claim_new([claimed])
    writer.add_claimed(BlobType.DATA, repo.seal_frames([claimed], [evil]))
    pairs = [(built.ids[0], len(built.contents[0])), (claimed, len(evil))]
    list_id = chunk_list(writer, repo, pairs)
    writer.flush()
    writer.close()
    entry = FileEntry(
        "victim.db", "file", size=len(built.contents[0]) + len(evil), content=[list_id]
    )
    reader = fresh_reader(built)
    backup_file = reader.file(entry)
    with pytest.raises(
        RepositoryDamaged, match=r"cannot read 'victim.db': .*does not match its id"
    ):
        backup_file.read(len(built.contents[0]), 10)
    assert backup_file.read(0, 10) == built.contents[0][:10]  # the honest chunk still reads
    with pytest.raises(RepositoryDamaged, match="does not match its id"):
        b"".join(backup_file.stream())


def test_a_size_that_disagrees_with_the_chunks_is_refused(built: Built) -> None:
    for size in (built.entry.size - 1, built.entry.size + 1):
        entry = FileEntry("f", "file", size=size, content=built.entry.content)
        backup_file = fresh_reader(built).file(entry)
        with pytest.raises(RepositoryDamaged, match="does not add up"):
            backup_file.read(0, 1)
        with pytest.raises(RepositoryDamaged, match="does not add up"):
            b"".join(fresh_reader(built).file(entry).stream())


def test_a_chunk_list_lying_about_a_length_is_refused(built: Built) -> None:
    repo = built.repo
    writer = repo.pack_writer()
    lying = [(built.ids[0], len(built.contents[0]) - 1), (built.ids[1], len(built.contents[1]))]
    list_id = chunk_list(writer, repo, lying)
    writer.flush()
    writer.close()
    entry = FileEntry("f", "file", size=sum(length for _, length in lying), content=[list_id])
    with pytest.raises(RepositoryDamaged, match="its chunk list says"):
        fresh_reader(built).file(entry).read(0, 1)
    with pytest.raises(RepositoryDamaged, match="its chunk list says"):
        b"".join(fresh_reader(built).file(entry).stream())


def test_a_missing_chunk_list_or_blob_is_damage(built: Built) -> None:
    entry = FileEntry("f", "file", size=10, content=["00" * 32])
    with pytest.raises(RepositoryDamaged, match="not in the index"):
        fresh_reader(built).file(entry).chunks()
    repo = built.repo
    writer = repo.pack_writer()
    list_id = chunk_list(writer, repo, [(bytes(32), 10)])
    writer.flush()
    writer.close()
    entry = FileEntry("f", "file", size=10, content=[list_id])
    with pytest.raises(RepositoryDamaged, match="not in the index"):
        fresh_reader(built).file(entry).read(0, 10)


def test_an_empty_file_reads_empty(built: Built) -> None:
    backup_file = fresh_reader(built).file(FileEntry("empty", "file"))
    assert backup_file.chunks() == []
    assert backup_file.read(0, 100) == b""
    assert list(backup_file.stream()) == []


def test_workspace_reader_reads_a_backed_up_database_as_restored(tmp_path: Path) -> None:
    """Through ``Workspace.reader``: a database and a file of a real backup read as a
    restore of the same backup writes them (a capture through SQLite's backup API
    differs from the live file, so the restore is the reference)."""
    import sqlite3

    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "notes.db") as db:
        db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB)")
        db.executemany(
            "INSERT INTO notes(body) VALUES (?)",
            [(random.Random(n).randbytes(700),) for n in range(3000)],
        )
    db.close()
    (data / "plain.bin").write_bytes(random.Random(1).randbytes(700_000))
    settings = Settings.resolve(data=data, store=(tmp_path / "store").as_uri(), device_name="d")
    workspace = Workspace(Settings(**{**settings.__dict__, "passphrase": PASSPHRASE}))
    info = workspace.backup()
    workspace.restore(info.id, target=tmp_path / "restored")
    manifest = workspace.manifest(info.id)
    entries = {entry.path: entry for entry in manifest.files}
    assert entries["notes.db"].sqlite
    with workspace.reader() as reader:
        for path in ("notes.db", "plain.bin"):
            expected = (tmp_path / "restored" / path).read_bytes()
            backup_file = reader.file(entries[path])
            assert backup_file.size == len(expected)
            assert backup_file.read(4096, 8192) == expected[4096 : 4096 + 8192]
            assert b"".join(backup_file.stream()) == expected
        assert reader.fetched_bytes > 0
