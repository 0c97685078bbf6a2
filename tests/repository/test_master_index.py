"""``MasterIndex``: the sorted arrays answer exactly as a dict of first locations would."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudkeep.repository import index as index_module
from cloudkeep.repository.index import BlobLocation, IndexFile, MasterIndex
from cloudkeep.repository.packs import ENTRY, BlobType, PackEntry

ids = st.binary(min_size=32, max_size=32)
# Ids sharing their first 8 bytes, so the full-id comparison is what tells them apart.
twins = st.builds(lambda tail: b"\x07" * 8 + tail, st.binary(min_size=24, max_size=24))
# Small values often: blobs then share frames (offset, length), in a run or apart.
locations = st.tuples(*[st.one_of(st.integers(0, 2), st.integers(0, 2**32 - 1))] * 4)
packs = st.lists(
    st.lists(st.tuples(st.one_of(ids, twins), locations), max_size=40), min_size=1, max_size=6
)


def _entries(pack: list[tuple[bytes, tuple[int, int, int, int]]]) -> list[PackEntry]:
    return [PackEntry(BlobType.DATA, blob_id, *where) for blob_id, where in pack]


def _reference(all_packs: list[list[PackEntry]]) -> dict[bytes, BlobLocation]:
    first: dict[bytes, BlobLocation] = {}
    for number, entries in enumerate(all_packs):
        for entry in entries:
            first.setdefault(entry.blob_id, BlobLocation(f"{number:064x}", *entry[2:]))
    return first


@settings(max_examples=150, deadline=None)
@given(
    packs,
    st.lists(st.one_of(ids, twins), max_size=20),
    st.integers(1, 3),
    st.booleans(),
    st.sampled_from(["locations", "ids", "ids spilled"]),
)
def test_lookups_equal_a_dict_of_first_locations(
    raw: list[list[tuple[bytes, tuple[int, int, int, int]]]],
    strangers: list[bytes],
    recent_max: int,
    encoded: bool,
    kind: str,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        spill = Path(folder) if kind == "ids spilled" else None
        _check_lookups(raw, strangers, recent_max, encoded, kind == "locations", spill)


def _check_lookups(
    raw: list[list[tuple[bytes, tuple[int, int, int, int]]]],
    strangers: list[bytes],
    recent_max: int,
    encoded: bool,
    locations: bool,
    spill: Path | None,
) -> None:
    all_packs = [_entries(pack) for pack in raw]
    index = MasterIndex(locations=locations, spill=spill)
    with pytest.MonkeyPatch.context() as patch:
        # A tiny merge threshold: packs are merged into the arrays while others still wait.
        patch.setattr(index_module, "RECENT_MAX", recent_max)
        for number, entries in enumerate(all_packs):
            pack_id = f"{number:064x}"
            if encoded and number % 2 == 0:  # as loaded; the others as a backup adds them
                index.add_pack_encoded(pack_id, b"".join(ENTRY.pack(*e) for e in entries))
            else:
                index.add_pack(pack_id, entries)
    reference = _reference(all_packs)
    assert len(index) == len(reference)
    for blob_id, location in reference.items():
        assert blob_id in index
        assert not locations or index.lookup(blob_id) == location
    absent = [blob_id for blob_id in strangers if blob_id not in reference]
    for blob_id in absent:
        assert blob_id not in index
        assert not locations or index.lookup(blob_id) is None
    asked = [*reference, *absent]
    assert [asked[at] for at in index.missing(asked)] == absent
    assert index.pack_ids() == [f"{number:064x}" for number in range(len(all_packs))]
    assert MasterIndex.of({f"{n:064x}": e for n, e in enumerate(all_packs)}).missing(asked) == (
        index.missing(asked)
    )


@settings(max_examples=100, deadline=None)
@given(packs, st.randoms())
def test_frames_of_groups_blobs_by_frame_in_order_of_first_appearance(
    raw: list[list[tuple[bytes, tuple[int, int, int, int]]]], rnd: object
) -> None:
    all_packs = [_entries(pack) for pack in raw]
    index = MasterIndex.of({f"{n:064x}": e for n, e in enumerate(all_packs)})
    reference = _reference(all_packs)
    wanted = list(reference)
    rnd.shuffle(wanted)  # type: ignore[attr-defined]
    expected: dict[tuple[str, int, int], list[tuple[bytes, int, int]]] = {}
    for blob_id in wanted:
        where = reference[blob_id]
        expected.setdefault((where.pack_id, where.offset, where.length), []).append(
            (blob_id, where.inner_offset, where.raw_length)
        )
    frames = index.frames_of(iter(wanted))
    assert [((f.pack_id, f.offset, f.length), f.blobs) for f in frames] == list(expected.items())


def test_a_frame_listed_in_two_runs_of_a_header_still_yields_every_blob() -> None:
    first, second, third = (bytes([n]) * 32 for n in (1, 2, 3))
    entries = [
        PackEntry(BlobType.DATA, first, 0, 100, 0, 5),
        PackEntry(BlobType.DATA, second, 100, 50, 0, 7),
        PackEntry(BlobType.DATA, third, 0, 100, 5, 9),  # back in the first frame
    ]
    index = MasterIndex.of({"aa" * 32: entries})
    found = {
        blob: (frame.pack_id, frame.offset, frame.length, inner, size)
        for frame in index.frames_of([first, second, third])
        for blob, inner, size in frame.blobs
    }
    assert found == {
        first: ("aa" * 32, 0, 100, 0, 5),
        second: ("aa" * 32, 100, 50, 0, 7),
        third: ("aa" * 32, 0, 100, 5, 9),
    }


def test_a_frame_named_many_times_is_one_group_to_read() -> None:
    """A key holder's index naming one frame under many numbers (runs of a pack's
    header that return to it, or the same pack in several index files) must not have
    it read once per blob: it is one group wherever it is named."""
    pack = "aa" * 32
    big, small = (0, 64 << 20), (64 << 20, 50)
    wanted = [bytes([n]) * 32 for n in range(1, 9)]
    runs = [(big if n % 2 == 0 else small, wanted[n]) for n in range(6)]
    index = MasterIndex()
    index.add_pack_encoded(
        pack,
        b"".join(ENTRY.pack(BlobType.DATA, i, *frame, n, 1) for n, (frame, i) in enumerate(runs)),
    )
    for n, blob_id in enumerate(wanted[6:]):  # as if from two more index files
        index.add_pack_encoded(pack, ENTRY.pack(BlobType.DATA, blob_id, *big, 10 + n, 1))
    frames = index.frames_of(wanted)
    assert [(frame.offset, frame.length) for frame in frames] == [big, small]
    assert [len(frame.blobs) for frame in frames] == [5, 3]
    places = index.places(np.frombuffer(b"".join(wanted), "V32"))
    assert len(set(places[[0, 2, 4, 6, 7], 0].tolist())) == 1


def test_a_missing_blob_is_named_by_the_key_error() -> None:
    known, unknown = b"k" * 32, b"u" * 32
    index = MasterIndex.of({"aa" * 32: [PackEntry(BlobType.DATA, known, 0, 10, 0, 5)]})
    with pytest.raises(KeyError) as raised:
        index.frames_of([known, unknown, b"v" * 32])
    assert raised.value.args == (unknown,)
    assert index.missing([b"short", known]) == [0]
    assert index.missing([]) == [] and index.frames_of([]) == []


def test_ids_sharing_a_prefix_never_stand_for_each_other() -> None:
    prefix = b"\x01" * 8
    first, second, third = (prefix + bytes([n]) * 24 for n in (3, 1, 2))
    index = MasterIndex()
    index.add_pack("aa" * 32, [PackEntry(BlobType.DATA, first, 0, 10, 0, 5)])
    index.add_pack_encoded("bb" * 32, ENTRY.pack(BlobType.DATA, second, 20, 10, 0, 5))
    assert index.lookup(first) == BlobLocation("aa" * 32, 0, 10, 0, 5)
    assert index.lookup(second) == BlobLocation("bb" * 32, 20, 10, 0, 5)
    assert third not in index and index.missing([third, first, second]) == [0]


def test_an_index_of_ids_only_says_it_cannot_locate() -> None:
    blob_id = b"i" * 32
    index = MasterIndex(locations=False)
    index.add_pack("aa" * 32, [PackEntry(BlobType.DATA, blob_id, 0, 10, 0, 5)])
    assert blob_id in index and len(index) == 1
    with pytest.raises(LookupError, match="ids only"):
        index.frames_of([blob_id])


def test_a_spilled_index_holds_keys_in_memory_and_confirms_them_with_the_whole_id(
    tmp_path: Path,
) -> None:
    prefix = b"\x01" * 8
    loaded, added, twin = (prefix + bytes([n]) * 24 for n in (3, 1, 2))
    other = b"\x02" * 32
    index = MasterIndex(locations=False, spill=tmp_path)
    index.add_pack_encoded("aa" * 32, ENTRY.pack(BlobType.DATA, loaded, 0, 10, 0, 5))
    index.add_pack(
        "bb" * 32,
        [PackEntry(BlobType.DATA, blob_id, 0, 10, 0, 5) for blob_id in (added, other, loaded)],
    )
    index._merge_recent()
    assert len(index) == 3 and not index._recent
    spilled = index._spilled
    assert spilled is not None and len(spilled) == 2  # the loaded id is not spilled again
    assert index.missing([twin, added, other, loaded, b"short"]) == [0, 4]


def test_an_index_that_cannot_spill_keeps_its_ids_in_memory(tmp_path: Path) -> None:
    blob_id = b"s" * 32
    index = MasterIndex(locations=False, spill=tmp_path / "missing folder")
    index.add_pack("aa" * 32, [PackEntry(BlobType.DATA, blob_id, 0, 10, 0, 5)])
    assert index._spilled is None and blob_id in index and len(index) == 1


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from cloudkeep.repository import index as index_module
from cloudkeep.repository.index import MasterIndex
from cloudkeep.repository.packs import BlobType, PackEntry

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 32, resource.RLIM_INFINITY))
index_module.RECENT_MAX = 2
index = MasterIndex(locations=False, spill=Path(sys.argv[1]))
ids = [bytes([n]) * 32 for n in range(1, 9)]
for number, blob_id in enumerate(ids):
    index.add_pack(f"{number:064x}", [PackEntry(BlobType.DATA, blob_id, 0, 10, 0, 5)])
assert index._spill_stopped and 0 < len(index._spilled) < len(ids), len(index._spilled)
assert len(index) == len(ids) and index.missing(ids + [b"x" * 32]) == [len(ids)]
index.add_pack("ff" * 32, [PackEntry(BlobType.DATA, ids[0], 0, 10, 0, 5)])
assert len(index) == len(ids)  # an id in the file is not held again in memory
print("ok")
"""


def test_a_spill_file_that_cannot_grow_keeps_later_ids_in_memory(tmp_path: Path) -> None:
    """A full disk (here a file size limit: writes past 96 bytes fail) must not fail
    a backup: the ids already in the file stay found, the rest are held in memory."""
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_index_file_writes_packs_kept_encoded_as_it_writes_listed_ones() -> None:
    listed = [PackEntry(BlobType.DATA, b"l" * 32, 0, 10, 0, 5)]
    kept = [PackEntry(BlobType.TREE, b"e" * 32, 10, 20, 4, 6)]
    written = IndexFile({"aa" * 32: listed}, {"bb" * 32: ENTRY.pack(*kept[0])}).encode()
    assert IndexFile.decode(written).packs == {"aa" * 32: listed, "bb" * 32: kept}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(twins, min_size=1, max_size=30), min_size=2, max_size=5),
    st.booleans(),
)
def test_ids_sharing_a_prefix_stay_in_full_id_order_through_every_merge(
    batches: list[list[bytes]], encoded: bool
) -> None:
    """A key holder can plant any number of ids sharing a real id's first 8 bytes. The
    sorted arrays keep such a run in order of the whole id whatever order the packs
    came in, so a lookup binary-searches the run instead of scanning it."""
    index = MasterIndex()
    for number, batch in enumerate(batches):
        entries = [PackEntry(BlobType.DATA, blob_id, 0, 10, 0, 5) for blob_id in batch]
        if encoded:
            index.add_pack_encoded(f"{number:064x}", b"".join(ENTRY.pack(*e) for e in entries))
        else:
            index.add_pack(f"{number:064x}", entries)
            index._merge_recent()
    keys, rest, _ = index._arrays()
    stored = [
        int(key).to_bytes(8, "big") + bytes(tail)
        for key, tail in zip(keys[: len(index)], rest[: len(index)], strict=True)
    ]
    assert stored == sorted({blob_id for batch in batches for blob_id in batch})
    for blob_id in stored:
        assert index.lookup(blob_id) is not None
