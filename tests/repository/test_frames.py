"""Frame encodings: what the writer chooses for each kind of content, and that every one opens."""

from __future__ import annotations

import os
import struct

import pytest
import zstandard

from cloudkeep.repository.frames import (
    ADAPTIVE_LEVELS,
    DEFAULT_ZSTD_LEVEL,
    FRAME_AAD,
    TRIAL_MIN_SIZE,
    FrameCodec,
    split_frame,
)
from cloudkeep.repository.repository import ZSTD_LEVEL_RANGE, Repository
from cloudkeep.storage.url import open_store

RAW, ZSTD = 0, 1


@pytest.fixture(scope="module")
def repo() -> Repository:
    return Repository.init(open_store("memory://"), "pass")


def sealed_and_encoding(
    codec: FrameCodec, chunks: list[bytes]
) -> list[tuple[bytes, int, list[bytes]]]:
    """(sealed frame, its payload encoding, its members' ids) of each frame ``codec`` writes."""
    ids = [codec.sealer.blob_id(chunk) for chunk in chunks]
    frames = []
    for pieces, members in codec.seal_frames(ids, list(chunks)):
        sealed = b"".join(pieces)
        _, encoding, _ = split_frame(codec.sealer.open(sealed, FRAME_AAD))
        frames.append((sealed, encoding, [member.blob_id for member in members]))
    return frames


def opened_blobs(codec: FrameCodec, sealed: bytes) -> list[bytes]:
    frame = codec.open_frame(sealed)
    return [
        bytes(codec.blob_in_frame(frame, blob_id, offset, length, rehash=True))
        for (offset, blob_id), length in sorted(frame.table.items())
    ]


def text_pages(count: int) -> list[bytes]:
    line = b"def handler(request):\n    return render(request, 'page.html', {'id': 42})\n"
    return [(line * 200)[:8192] for _ in range(count)]


def test_database_pages_are_compressed_and_open(repo: Repository) -> None:
    codec = FrameCodec(repo.sealer)
    pages = text_pages(40)
    frames = sealed_and_encoding(codec, pages)
    assert len(frames) == 2  # ~256 KiB each
    assert [encoding for _, encoding, _ in frames] == [ZSTD, ZSTD]
    assert [blob for sealed, _, _ in frames for blob in opened_blobs(codec, sealed)] == pages


def test_a_large_incompressible_chunk_is_stored_raw_without_compressing_it(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = FrameCodec(repo.sealer)
    chunk = os.urandom(4 * TRIAL_MIN_SIZE)
    asked: list[int] = []
    compressor = codec._zstd(codec.level)
    batch = compressor.multi_compress_to_buffer

    class Spy:
        compress = compressor.compress

        def multi_compress_to_buffer(self, data: list[bytes], threads: int) -> object:
            asked.append(len(data))
            return batch(data, threads=threads)

    monkeypatch.setattr(codec, "_zstd", lambda level: Spy())
    [(sealed, encoding, _)] = sealed_and_encoding(codec, [chunk])
    assert (encoding, asked) == (RAW, [])
    assert opened_blobs(codec, sealed) == [chunk]


def test_the_level_steps_from_the_configs_to_the_top_and_every_level_opens(
    repo: Repository,
) -> None:
    codec = FrameCodec(repo.sealer, zstd_level=DEFAULT_ZSTD_LEVEL)
    pages = text_pages(40)
    levels, sizes = [], []
    for _ in range(len(ADAPTIVE_LEVELS) + 1):  # one step more than the ladder has
        frames = sealed_and_encoding(codec, pages)
        assert [blob for sealed, _, _ in frames for blob in opened_blobs(codec, sealed)] == pages
        levels.append(codec.level)
        sizes.append(sum(len(sealed) for sealed, _, _ in frames))
        codec.smaller()
    assert levels == [*ADAPTIVE_LEVELS, ADAPTIVE_LEVELS[-1]]
    assert sizes[-1] < sizes[0]
    for _ in range(len(ADAPTIVE_LEVELS) + 1):
        codec.faster()
    assert codec.level == DEFAULT_ZSTD_LEVEL
    # A repository made with a faster level (an older default) climbs from it.
    fast = FrameCodec(repo.sealer, zstd_level=-2)
    fast.smaller()
    assert fast.level == ADAPTIVE_LEVELS[0]
    fast.faster()
    fast.faster()
    assert fast.level == -2


def test_a_large_chunk_with_compressible_samples_is_compressed(repo: Repository) -> None:
    codec = FrameCodec(repo.sealer)
    chunk = b"".join(text_pages(40))
    [(sealed, encoding, _)] = sealed_and_encoding(codec, [chunk])
    assert encoding == ZSTD
    assert opened_blobs(codec, sealed) == [chunk]


def test_small_or_many_chunk_frames_are_tried_and_kept_raw_when_zstd_does_not_pay(
    repo: Repository,
) -> None:
    """No sample trial for them: zstd itself is tried, and its output kept only if smaller."""
    codec = FrameCodec(repo.sealer)
    for chunks in ([os.urandom(TRIAL_MIN_SIZE - 1)], [os.urandom(8192) for _ in range(40)], [b""]):
        frames = sealed_and_encoding(codec, chunks)
        assert {encoding for _, encoding, _ in frames} == {RAW}
        assert [blob for sealed, _, _ in frames for blob in opened_blobs(codec, sealed)] == chunks


@pytest.mark.parametrize("level", [-2, *ZSTD_LEVEL_RANGE])
def test_frames_of_any_configured_level_open_with_todays_codec(
    repo: Repository, level: int
) -> None:
    """Stores written at the old default (-2) or any level a config allows still restore."""
    writer = FrameCodec(repo.sealer, level)
    reader = FrameCodec(repo.sealer, DEFAULT_ZSTD_LEVEL)
    pages = text_pages(5)
    [(sealed, encoding, _)] = sealed_and_encoding(writer, pages)
    assert encoding == ZSTD
    assert opened_blobs(reader, sealed) == pages
    assert [bytes(frame.data) for frame in reader.open_frames([sealed])] == [b"".join(pages)]


def test_a_frame_built_byte_by_byte_as_docs_format_says_opens(repo: Repository) -> None:
    """u32 count | (32-byte id, u32 length) each | u8 encoding | payload, sealed with ``frame``."""
    codec = FrameCodec(repo.sealer)
    blobs = [b"first blob " * 30, b"", b"third"]
    table = struct.pack("<I", len(blobs)) + b"".join(
        struct.pack("<32sI", repo.sealer.blob_id(blob), len(blob)) for blob in blobs
    )
    for encoding, payload in (
        (RAW, b"".join(blobs)),
        (ZSTD, zstandard.ZstdCompressor(level=-2).compress(b"".join(blobs))),
    ):
        sealed = repo.sealer.seal(table + bytes([encoding]) + payload, FRAME_AAD)
        assert sorted(opened_blobs(codec, sealed)) == sorted(blobs)
