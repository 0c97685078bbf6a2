"""restore.plan: where every chunk goes, which ranges are read, what is created in which order."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudkeep.backups.manifest import FileEntry, Manifest
from cloudkeep.backups.restore.plan import (
    CHUNKS_PER_BATCH,
    FILES_PER_BATCH,
    FilePlan,
    SlicePlan,
    check_file_size,
    next_slice_limit,
    plan_tree,
)
from cloudkeep.errors import RepositoryDamaged
from cloudkeep.repository.index import FrameBlobs
from cloudkeep.repository.loader import MAX_RANGE_BYTES, MAX_RANGE_GAP, PackRange, plan_ranges
from tests.restore.plan_helpers import entries, targets_of

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def manifest_of(files: list[FileEntry]) -> Manifest:
    return Manifest(
        id="0.1.0_1",
        version="0.1.0",
        timestamp="1",
        bytes=sum(entry.size for entry in files),
        created="2026-01-01T00:00:00+00:00",
        device_name="test",
        platform="LINUX",
        hostname="test",
        source="/data",
        kind="folder",
        files=files,
    )


def test_files_sharing_chunks_get_a_target_at_every_place() -> None:
    plan = SlicePlan()
    assert plan.add_chunks(0, 0, entries([(A, 10), (B, 20)]), None) == 30
    assert plan.add_chunks(1, 0, entries([(B, 20), (A, 10)]), None) == 30
    assert plan.add_chunks(1, 30, entries([(A, 10)]), None) == 40  # file 1's next chunk list
    assert targets_of(plan.fetch) == {
        A: [(0, 0), (1, 20), (1, 30)],
        B: [(0, 10), (1, 0)],
    }
    assert list(targets_of(plan.fetch)) == [A, B]  # in the order the data needs them
    assert plan.chunks == 5
    assert plan.reuse == {}


def test_chunks_of_a_file_with_a_live_copy_are_looked_for_there_first(tmp_path: Path) -> None:
    live = tmp_path / "live"
    plan = SlicePlan()
    assert plan.add_chunks(3, 0, entries([(A, 10), (B, 20)]), live) == 30
    assert plan.add_chunks(3, 30, entries([(C, 5)]), live) == 35
    assert not plan.fetch
    assert plan.reuse == {3: FilePlan(3, live, [(0, 10, A), (10, 20, B), (30, 5, C)])}
    plan.add_missing(3, [(10, 20, B)])
    assert targets_of(plan.fetch) == {B: [(3, 10)]}
    assert plan.chunks == 3
    assert not plan.empty()


def test_an_empty_file_plans_nothing_and_still_adds_up() -> None:
    empty = FileEntry("empty", "file", size=0)
    plan = SlicePlan()
    assert plan.add_chunks(0, 0, entries([]), None) == 0
    assert plan.empty() and plan.chunks == 0
    check_file_size(empty, 0)
    tree = plan_tree(manifest_of([empty]))
    assert tree.batches == [[empty]]
    assert tree.finishing == [empty]


@pytest.mark.parametrize("covered", [0, 99, 101])
def test_chunk_lists_that_leave_a_hole_or_run_past_the_end_are_refused(covered: int) -> None:
    entry = FileEntry("db", "file", size=100)
    with pytest.raises(RepositoryDamaged, match="chunk list of db does not add up"):
        check_file_size(entry, covered)
    check_file_size(entry, 100)


def test_a_file_planned_in_part_is_refused_only_once_past_its_end() -> None:
    entry = FileEntry("db", "file", size=100)
    check_file_size(entry, 99, whole=False)
    check_file_size(entry, 100, whole=False)
    with pytest.raises(RepositoryDamaged, match="chunk list of db does not add up"):
        check_file_size(entry, 101, whole=False)


def test_chunk_offsets_add_up_exactly_however_large_the_chunks() -> None:
    largest = 2**32 - 1
    plan = SlicePlan()
    start = 2**62
    end = plan.add_chunks(0, start, entries([(A, largest)] * 4096), None)
    assert end == start + 4096 * largest
    assert targets_of(plan.fetch)[A][-1] == (0, start + 4095 * largest)


def test_slices_double_up_to_the_cap() -> None:
    limits = [4_096]
    while limits[-1] < CHUNKS_PER_BATCH:
        limits.append(next_slice_limit(limits[-1]))
    assert limits == [4_096, 8_192, 16_384]
    assert next_slice_limit(CHUNKS_PER_BATCH) == CHUNKS_PER_BATCH


def frame(pack: str, offset: int, length: int, blob: bytes = A) -> FrameBlobs:
    return FrameBlobs(pack, offset, length, [(blob, 0, length)])


def test_close_frames_of_a_pack_are_read_in_one_range_far_ones_apart() -> None:
    p, q = "p" * 64, "q" * 64
    f1, f2 = frame(p, 0, 100), frame(p, 100 + MAX_RANGE_GAP, 50)  # gap allowed: same range
    f3 = frame(p, 150 + 2 * MAX_RANGE_GAP + 1, 10)  # gap too wide: a range of its own
    g1 = frame(q, 4_000, 10)
    assert plan_ranges([g1, f3, f1, f2]) == [
        PackRange(q, 4_000, 10, [g1]),  # packs in the order the data first needs them
        PackRange(p, 0, 150 + MAX_RANGE_GAP, [f1, f2]),  # frames by offset within a pack
        PackRange(p, f3.offset, 10, [f3]),
    ]


def test_a_range_never_grows_past_its_cap_but_a_larger_frame_is_read_whole() -> None:
    p = "p" * 64
    half = MAX_RANGE_BYTES // 2
    frames = [frame(p, 0, half), frame(p, half, half), frame(p, 2 * half, 1)]
    big = frame(p, 2 * half + 1, 2 * MAX_RANGE_BYTES)
    assert plan_ranges([*frames, big]) == [
        PackRange(p, 0, MAX_RANGE_BYTES, frames[:2]),
        PackRange(p, 2 * half, 1, frames[2:]),
        PackRange(p, big.offset, big.length, [big]),
    ]


def test_the_tree_is_created_folders_first_files_in_batches_finished_deepest_first() -> None:
    folders = [FileEntry("a", "dir"), FileEntry("a/b", "dir")]
    link = FileEntry("a/link", "symlink", target="elsewhere")
    files = [
        FileEntry(f"a/b/f{number}", "file", size=1) for number in range(2 * FILES_PER_BATCH + 3)
    ]
    top = FileEntry("top", "file", size=1)
    plan = plan_tree(manifest_of([folders[0], files[0], link, folders[1], *files[1:], top]))
    assert plan.links_and_folders == [folders[0], link, folders[1]]
    assert [len(batch) for batch in plan.batches] == [FILES_PER_BATCH, FILES_PER_BATCH, 4]
    assert [entry for batch in plan.batches for entry in batch] == [*files, top]
    depths = [entry.path.count("/") for entry in plan.finishing]
    assert depths == sorted(depths, reverse=True)
    assert link not in plan.finishing and len(plan.finishing) == len(files) + 3
