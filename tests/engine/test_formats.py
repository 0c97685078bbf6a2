"""Property tests of the byte formats: chunking, packs, index files, chunk lists."""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from cloudkeep.backups.archiver import _cdc_chunks, page_chunks
from cloudkeep.backups.manifest import (
    FileEntry,
    Manifest,
    decode_chunk_list,
    encode_chunk_list,
)
from cloudkeep.repository.index import IndexFile, MasterIndex
from cloudkeep.repository.packs import (
    BlobType,
    PackBuilder,
    PackEntry,
    frames_of,
    pack_id_of,
    read_header,
)
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.url import open_store

ids = st.binary(min_size=32, max_size=32)
entries = st.builds(
    PackEntry,
    st.sampled_from(list(BlobType)),
    ids,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)


@given(st.binary(max_size=300_000), st.integers(8, 12))
@settings(max_examples=40, deadline=None)
def test_cdc_chunks_reassemble_and_respect_bounds(data: bytes, avg_bits: int) -> None:
    avg = 1 << avg_bits
    chunker = FastCDC(avg, min_size=max(64, avg // 4), max_size=max(1024, avg * 4), seed=7)
    chunks = [bytes(c.data) for c in chunker.cut_stream(io.BytesIO(data))]
    assert b"".join(chunks) == data
    assert all(len(c) <= max(1024, avg * 4) for c in chunks)
    assert all(len(c) >= max(64, avg // 4) for c in chunks[:-1])


class _Trickle(io.BytesIO):
    """A file whose reads return at most ``most`` bytes (a pipe, a network share)."""

    def __init__(self, data: bytes, most: int) -> None:
        super().__init__(data)
        self.most = most

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        return super().readinto(memoryview(buffer)[: self.most])


@given(
    st.binary(max_size=40_000),
    st.integers(0, 3),
    st.integers(1, 5000),
    st.integers(0, 3000),
)
@settings(max_examples=80, deadline=None)
def test_cdc_chunks_through_a_reused_window_are_cut_as_a_stream_cuts_them(
    data: bytes, repeats: int, most: int, extra: int
) -> None:
    """Chunk boundaries decide what deduplicates against stores written before."""
    data = data * (repeats + 1)  # repeated runs: cut points that recur
    chunker = FastCDC(256, min_size=64, max_size=1024, seed=7)
    expected = [bytes(c.data) for c in chunker.cut_stream(io.BytesIO(data))]
    window = memoryview(bytearray(2 * 1024 + extra))
    for _ in range(2):  # the window reused, with another file's bytes in it
        assert list(_cdc_chunks(_Trickle(data, most), chunker, window)) == expected


@given(
    st.integers(1, 40),
    st.sampled_from([512, 1024, 4096, 8192]),
    st.integers(1, 4),
    st.integers(1, 8),
)
def test_page_chunks_are_whole_chunks(
    pages: int, page_size: int, per_chunk: int, chunks_per_block: int
) -> None:
    chunk = page_size * per_chunk
    body = os.urandom(page_size * pages)
    block = chunk * chunks_per_block
    blocks = [body[i : i + block] for i in range(0, len(body), block)]
    for piece in blocks:
        chunks = page_chunks(memoryview(piece), chunk)
        assert b"".join(chunks) == piece
        assert all(len(c) == chunk for c in chunks[:-1])
        assert len(chunks[-1]) % page_size == 0


@given(st.lists(st.tuples(ids, st.integers(0, 2**32 - 1)), max_size=200))
def test_chunk_lists_round_trip(chunks: list[tuple[bytes, int]]) -> None:
    assert decode_chunk_list(encode_chunk_list(chunks)) == chunks


@given(
    st.dictionaries(
        st.text("0123456789abcdef", min_size=64, max_size=64),
        st.lists(entries, max_size=20),
        max_size=10,
    )
)
def test_index_files_round_trip(packs: dict[str, list[PackEntry]]) -> None:
    assert IndexFile.decode(IndexFile(packs).encode()).packs == packs


# Sizes straddle the frame target, so frames of one blob and of many are both made.
blob_bodies = st.one_of(
    st.binary(min_size=0, max_size=5000),
    st.builds(lambda n, b: b * n, st.integers(1, 300_000), st.binary(min_size=1, max_size=3)),
)


@given(st.lists(blob_bodies, min_size=1, max_size=30))
@settings(max_examples=40, deadline=None)
def test_packs_round_trip_and_locate_every_blob(blobs: list[bytes]) -> None:
    repo = Repository.init(open_store("memory://"), "pass")
    ids = [repo.sealer.blob_id(blob) for blob in blobs]
    frames = repo.seal_frames(ids, blobs)
    assert [m.blob_id for _, members in frames for m in members] == ids
    builder = PackBuilder()
    for sealed, members in frames:
        builder.add_frame(BlobType.DATA, sealed, members)
    pack_id, assembled = builder.finish(repo.sealer)
    content = bytes(assembled)
    assert pack_id_of(content) == pack_id
    header = read_header(content, repo.sealer)
    assert header == builder.entries
    assert len(frames_of(header)) == len(frames)
    index = MasterIndex()
    index.add_pack(pack_id, header)
    for blob, entry in zip(blobs, header, strict=True):
        location = index.lookup(entry.blob_id)
        assert location is not None and location.pack_id == pack_id
        frame = repo.open_frame(content[location.offset : location.offset + location.length])
        data = repo.blob_in_frame(frame, entry.blob_id, location.inner_offset, location.raw_length)
        assert data == blob


@given(
    st.integers(1, 80),
    st.sampled_from([4096, 8192, 16384]),
    st.data(),
)
@settings(max_examples=40, deadline=None)
def test_frames_cut_from_a_block_equal_joined_frames(
    pages: int, chunk: int, data: st.DataObject
) -> None:
    """Frames made as slices of the source block hold what joining the chunks would.

    Only some chunks of a block are new (the rest were stored before), so runs
    of adjacent chunks alternate with gaps; a frame across a gap must not be a slice.
    """
    repo = Repository.init(open_store("memory://"), "pass")
    if data.draw(st.booleans(), label="compressible"):
        block = memoryview(b"".join(os.urandom(64) * 64 for _ in range(pages)))
    else:
        block = memoryview(os.urandom(pages * 4096))
    chunks = page_chunks(block, chunk)
    fresh = sorted(data.draw(st.sets(st.integers(0, len(chunks) - 1), min_size=1)))
    wanted = [chunks[number] for number in fresh]
    ids = [repo.sealer.blob_id(piece) for piece in wanted]
    frames = repo.seal_frames(ids, wanted, block, [number * chunk for number in fresh])
    opened = [repo.open_frame(b"".join(sealed)) for sealed, _ in frames]
    got = [
        bytes(repo.blob_in_frame(frame, m.blob_id, m.inner_offset, m.raw_length, rehash=True))
        for frame, (_, members) in zip(opened, frames, strict=True)
        for m in members
    ]
    assert got == [bytes(piece) for piece in wanted]
    position = 0
    for frame, (_, members) in zip(opened, frames, strict=True):
        in_frame = wanted[position : position + len(members)]
        assert bytes(frame.data) == b"".join(bytes(piece) for piece in in_frame)
        position += len(members)
    assert position == len(wanted)


@given(st.lists(entries, min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_frames_of_groups_what_lookup_finds(pack_entries: list[PackEntry], rnd: Random) -> None:
    index = MasterIndex()
    index.add_pack("a" * 64, pack_entries[::2])
    index.add_pack("b" * 64, pack_entries[1::2])
    wanted = list(dict.fromkeys(entry.blob_id for entry in pack_entries))
    rnd.shuffle(wanted)
    frames = index.frames_of(wanted)
    seen = [blob for frame in frames for blob, _, _ in frame.blobs]
    assert sorted(seen) == sorted(wanted)
    assert len({(f.pack_id, f.offset, f.length) for f in frames}) == len(frames)
    for frame in frames:
        for blob_id, inner_offset, raw_length in frame.blobs:
            location = index.lookup(blob_id)
            assert location == (frame.pack_id, frame.offset, frame.length, inner_offset, raw_length)
    with pytest.raises(KeyError) as raised:
        index.frames_of([*wanted, b"\xff" * 33])
    assert raised.value.args[0] == b"\xff" * 33


def test_manifest_encoding_is_the_dataclass_document() -> None:
    """encode() builds the document by hand; it must stay what asdict() gives, key order too."""
    entry = FileEntry("db/app.sqlite", "file", 0o600, 7, 9, True, "", ["ab" * 32], "1:9:7")
    manifest = Manifest(
        id="0.1.0_1",
        version="0.1.0",
        timestamp="1",
        bytes=9,
        created="1970-01-01T00:00:00.000001+00:00",
        device_name="dev",
        platform="LINUX",
        hostname="host",
        source="/data",
        kind="folder",
        files=[entry, FileEntry("db", "dir", 0o755, 3)],
        warnings=["w"],
        added_bytes=5,
    )
    expected = json.dumps(asdict(manifest), separators=(",", ":")).encode()
    assert manifest.encode() == expected
    assert Manifest.decode(expected) == manifest
