"""restore.reuse: exactly the chunks the live copy still holds are taken from it, each
checked against its keyed id; everything else is left to be fetched."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloudkeep.backups.manifest import FileEntry
from cloudkeep.backups.progress import Tracker
from cloudkeep.backups.restore.plan import FilePlan, LocalChunk, SlicePlan
from cloudkeep.backups.restore.reuse import (
    REUSE_SPAN_BYTES,
    LiveData,
    ReuseSpan,
    collect_missing,
    reuse_span,
    reuse_spans,
    start_reuse,
)
from cloudkeep.backups.restore.write import Files, Tree, reserve
from cloudkeep.errors import Canceled
from cloudkeep.repository.crypto import MasterKey, Sealer
from tests.restore.plan_helpers import targets_of

CHUNK = 8 * 1024
CHUNKS = 320  # 2.5 MiB: long runs go direct, short ones buffered


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(MasterKey.generate())


class Restore:
    """One file of a batch being restored into a staging folder, as the restorer does."""

    def __init__(self, root: Path, size: int) -> None:
        staging = root / "staging"
        staging.mkdir()
        self.path = staging / "db"
        self.tree = Tree(staging)
        self.files = Files()
        fd = self.files.open(self.tree, "db", size)
        reserve(fd, FileEntry("db", "file", size=size))
        self.tracker = Tracker("restore", size, None, None)
        self.open = True

    def close(self) -> bytes:
        """The restored file's content, once every write is on disk."""
        if self.open:
            self.open = False
            self.files.sync()
            self.files.close()
            self.tree.close()
        return self.path.read_bytes()


@pytest.fixture
def backup() -> bytes:
    return random.Random(1).randbytes(CHUNK * CHUNKS)


@pytest.fixture
def restore(tmp_path: Path, backup: bytes) -> Iterator[Restore]:
    restore = Restore(tmp_path, len(backup))
    yield restore
    restore.close()


def chunks_of(content: bytes, sealer: Sealer) -> list[LocalChunk]:
    return [
        (offset, CHUNK, sealer.blob_id(content[offset : offset + CHUNK]))
        for offset in range(0, len(content), CHUNK)
    ]


def test_a_live_copy_with_some_chunks_changed_gives_exactly_the_others(
    tmp_path: Path, sealer: Sealer, backup: bytes, restore: Restore
) -> None:
    changed = {0, 7, 8, 200, CHUNKS - 1}
    live = bytearray(backup)
    for number in changed:
        live[number * CHUNK + 100] ^= 0xFF
    (tmp_path / "live").write_bytes(live)
    chunks = chunks_of(backup, sealer)
    result = reuse_span(
        ReuseSpan(0, tmp_path / "live", chunks), restore.files, sealer.blob_id, restore.tracker
    )
    assert result.missing == [chunks[number] for number in sorted(changed)]
    assert result.reused == (CHUNKS - len(changed)) * CHUNK
    assert restore.tracker.done == result.reused
    restored = restore.close()
    for number in range(CHUNKS):
        piece = restored[number * CHUNK : (number + 1) * CHUNK]
        expected = bytes(CHUNK) if number in changed else backup[number * CHUNK :][:CHUNK]
        assert piece == expected, number  # a changed chunk is left for the fetch: zeros


def test_a_chunk_is_reused_only_under_the_repository_key(
    tmp_path: Path, sealer: Sealer, backup: bytes, restore: Restore
) -> None:
    """A live chunk whose bytes do not hash to the recorded id under this repository's key
    (tampered, or named by another key) is never written."""
    (tmp_path / "live").write_bytes(backup)
    chunks = chunks_of(backup, sealer)
    other_key = Sealer(MasterKey.generate())
    tampered = (5 * CHUNK, CHUNK, other_key.blob_id(backup[5 * CHUNK : 6 * CHUNK]))
    unkeyed = (6 * CHUNK, CHUNK, bytes(32))
    span = ReuseSpan(0, tmp_path / "live", [*chunks[:5], tampered, unkeyed, *chunks[7:]])
    result = reuse_span(span, restore.files, sealer.blob_id, restore.tracker)
    assert result.missing == [tampered, unkeyed]
    restored = restore.close()
    assert restored[5 * CHUNK : 7 * CHUNK] == bytes(2 * CHUNK)
    assert restored[: 5 * CHUNK] == backup[: 5 * CHUNK]


def test_chunks_past_the_end_of_a_shorter_live_copy_are_missing(
    tmp_path: Path, sealer: Sealer, backup: bytes, restore: Restore
) -> None:
    (tmp_path / "live").write_bytes(backup[: 10 * CHUNK + 5])
    chunks = chunks_of(backup, sealer)
    result = reuse_span(
        ReuseSpan(0, tmp_path / "live", chunks), restore.files, sealer.blob_id, restore.tracker
    )
    assert result.missing == chunks[10:]
    assert result.reused == 10 * CHUNK


def test_spans_are_cut_at_their_size_and_missing_chunks_go_to_the_fetch(
    tmp_path: Path, sealer: Sealer, restore: Restore
) -> None:
    live = tmp_path / "live"
    big = REUSE_SPAN_BYTES // 2 + 1
    plans = [
        FilePlan(0, live, [(0, big, b"x" * 32), (big, big, b"y" * 32)]),
        FilePlan(1, live, [(0, 1, b"z" * 32)]),
    ]
    assert reuse_spans(plans) == [
        ReuseSpan(0, live, plans[0].chunks[:1]),
        ReuseSpan(0, live, plans[0].chunks[1:]),
        ReuseSpan(1, live, plans[1].chunks),
    ]
    live.write_bytes(b"nothing here matches")
    with ThreadPoolExecutor(2) as pool:
        jobs = start_reuse(pool, plans[:1], restore.files, sealer.blob_id, restore.tracker)
        into = SlicePlan()
        assert collect_missing(jobs, into) == 0
    assert targets_of(into.fetch) == {b"x" * 32: [(0, 0)], b"y" * 32: [(0, big)]}


def test_a_canceled_restore_reads_no_more_live_data(
    tmp_path: Path, sealer: Sealer, backup: bytes, restore: Restore
) -> None:
    (tmp_path / "live").write_bytes(backup)
    cancel = threading.Event()
    cancel.set()
    tracker = Tracker("restore", len(backup), None, cancel)
    span = ReuseSpan(0, tmp_path / "live", chunks_of(backup, sealer))
    with pytest.raises(Canceled):
        reuse_span(span, restore.files, sealer.blob_id, tracker)


def test_only_a_regular_non_empty_live_file_is_a_copy(tmp_path: Path) -> None:
    root = tmp_path / "live"
    root.mkdir()
    (root / "db").write_bytes(b"pages")
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to(root / "db")
    os.mkfifo(root / "fifo")
    live = LiveData(root, is_file=False)
    found = {
        name: live.copy_of(FileEntry(name, "file"))
        for name in ("db", "empty", "link", "fifo", "gone")
    }
    assert found == {"db": root / "db", "empty": None, "link": None, "fifo": None, "gone": None}
    single = LiveData(root / "db", is_file=True)
    assert single.copy_of(FileEntry("whatever-name", "file")) == root / "db"
