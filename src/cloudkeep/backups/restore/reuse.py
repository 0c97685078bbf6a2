"""Chunks a restore takes from the live data instead of the store.

A restore usually replaces data that differs from the backup in a few pages
(a bad update, a day of use). Each chunk is first looked for at its place in
the live copy and used only if its keyed BLAKE3 id matches the one the backup
recorded: the same check a fetched chunk passes, so no byte the backup does not
vouch for is written. Only the chunks not found are fetched.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from cloudkeep.backups.manifest import FileEntry
from cloudkeep.backups.progress import Tracker
from cloudkeep.backups.restore.plan import FilePlan, LocalChunk, SlicePlan
from cloudkeep.backups.restore.write import Files, Piece, read_live, write_in_place, write_pieces
from cloudkeep.direct_io import ALIGNMENT, aligned_read_buffer

# Live data is compared with the backup in spans of this size, by this many threads:
# more threads and longer spans paid off until these.
REUSE_SPAN_BYTES = 8 * 1024 * 1024
REUSE_THREADS = 4

#: The keyed hash that names a blob (``Sealer.blob_id`` of the repository's key).
KeyedHash = Callable[[memoryview], bytes]


class LiveData:
    """The live copy of a backup's data: ``root`` is the one file of a single-file backup."""

    def __init__(self, root: Path, is_file: bool) -> None:
        self.root = root
        self.is_file = is_file

    def copy_of(self, entry: FileEntry) -> Path | None:
        """The live file that may hold some of ``entry``'s chunks, if it is a regular file."""
        path = self.root if self.is_file else self.root / entry.path
        try:
            info = path.lstat()
        except OSError:
            return None
        return path if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None


class ReuseSpan(NamedTuple):
    """Consecutive chunks of one file, read from its live copy ``source`` in one go."""

    file: int
    source: Path
    chunks: list[LocalChunk]


class SpanResult(NamedTuple):
    """The chunks of a span its live copy did not hold, and the bytes it did."""

    missing: list[LocalChunk]
    reused: int


class ReuseJob(NamedTuple):
    file: int
    result: Future[SpanResult]


def reuse_spans(plans: Iterable[FilePlan]) -> list[ReuseSpan]:
    """Cut each file's chunks into spans of about ``REUSE_SPAN_BYTES`` (at least one chunk)."""
    spans: list[ReuseSpan] = []
    for plan in plans:
        chunks = plan.chunks
        first = 0
        for position, (offset, size, _) in enumerate(chunks):
            if offset + size - chunks[first][0] > REUSE_SPAN_BYTES and position > first:
                spans.append(ReuseSpan(plan.file, plan.source, chunks[first:position]))
                first = position
        spans.append(ReuseSpan(plan.file, plan.source, chunks[first:]))
    return spans


def start_reuse(
    pool: ThreadPoolExecutor,
    plans: Iterable[FilePlan],
    files: Files,
    blob_id: KeyedHash,
    tracker: Tracker,
) -> list[ReuseJob]:
    """Submit the jobs that write the chunks the live copies hold, a span each."""
    return [
        ReuseJob(span.file, pool.submit(reuse_span, span, files, blob_id, tracker))
        for span in reuse_spans(plans)
    ]


def collect_missing(jobs: list[ReuseJob], into: SlicePlan) -> int:
    """Wait for reuse jobs; the chunks they did not find are to be fetched with ``into``.
    Returns the bytes they took from the live data."""
    reused = 0
    for job in jobs:
        result = job.result.result()
        reused += result.reused
        into.add_missing(job.file, result.missing)
    return reused


def reuse_span(span: ReuseSpan, files: Files, blob_id: KeyedHash, tracker: Tracker) -> SpanResult:
    """Write the chunks of one span its live copy holds, each checked against its keyed id.

    The span is read from a block boundary into an aligned buffer: when the
    whole span matches, its whole blocks are written directly from that
    buffer, without the copy ``write_pieces`` makes.
    """
    tracker.check_canceled()
    number, chunks = span.file, span.chunks
    start, end = chunks[0][0], chunks[-1][0] + chunks[-1][1]
    base = start - start % ALIGNMENT
    view = aligned_read_buffer(end - base)[: end - base]
    got = read_live(span.source, view, base)
    runs: list[list[int]] = []  # [start, end) of each run of chunks found
    missing: list[LocalChunk] = []
    for chunk in chunks:
        offset, size, expected = chunk
        at = offset - base
        if at + size <= got and blob_id(view[at : at + size]) == expected:
            if runs and runs[-1][1] == offset:
                runs[-1][1] += size
            else:
                runs.append([offset, offset + size])
        else:
            missing.append(chunk)
    short = [
        Piece(number, run_start, view[run_start - base : run_end - base])
        for run_start, run_end in runs
        if not write_in_place(files, number, view, base, run_start, run_end)
    ]
    if short:
        write_pieces(files, short)
    reused = sum(run_end - run_start for run_start, run_end in runs)
    tracker.advance(reused)
    return SpanResult(missing, reused)
