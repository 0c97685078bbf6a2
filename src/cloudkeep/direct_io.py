"""Reading and writing large local files past the page cache, from page-aligned buffers.

Used for packs in a local store and for the large files a restore writes. A
pack is written once and read again only by a restore or a check, usually much
later, so caching it costs and does not pay; written from one page-aligned
buffer, the fsync finds nothing left to flush. How the cache is bypassed is the
platform's (``cloudkeep.platform.open_direct``: ``O_DIRECT`` on Linux,
``F_NOCACHE`` on macOS, ordinary I/O elsewhere). Filesystems that refuse it
raise ``DirectIOUnsupported``, and callers fall back to ordinary reads and
writes. The measurements behind this are in docs/performance.md.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence

from cloudkeep import platform
from cloudkeep.platform import DirectIOUnsupported, buffer_address, refusal_is_unsupported

#: Offsets, lengths and the buffer's address must be multiples of the device's
#: logical block size: 4096 covers 512-byte and 4 KiB devices alike.
ALIGNMENT = 4096
#: Smaller objects, reads and restored files (index files, manifests, chunk
#: lists, locks, small files) go through the page cache: small, often read soon.
DIRECT_MIN_BYTES = 512 * 1024
__all__ = [
    "ALIGNMENT",
    "DIRECT_MIN_BYTES",
    "DirectIOUnsupported",
    "aligned_buffer",
    "aligned_read_buffer",
    "create_direct",
    "fill",
    "pwrite_direct",
    "read_direct",
    "write_direct",
]

_GROWTH = 1024 * 1024


class _AlignedBuffer(threading.local):
    """One page-aligned buffer per thread, reused: no page faults per pack."""

    memory: mmap.mmap | None = None

    def at_least(self, size: int) -> memoryview:
        if self.memory is None or len(self.memory) < size:
            # Anonymous mappings are page-aligned; whole MiBs, so that packs and
            # ranges of slightly different sizes (and a pack's size padded to the
            # block size) reuse one. A smaller one is unmapped when its last view goes.
            self.memory = mmap.mmap(-1, -(-size // _GROWTH) * _GROWTH)
        return memoryview(self.memory)


_buffers = _AlignedBuffer()
_read_buffers = _AlignedBuffer()


def _aligned_up(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def _open(path: str | os.PathLike[str], flags: int) -> int:
    return platform.open_direct(path, flags)


def fill(target: memoryview, pieces: Sequence[bytes | memoryview]) -> int:
    """Copy ``pieces`` one after another to the start of ``target``; the bytes copied."""
    position = 0
    for piece in pieces:
        target[position : position + len(piece)] = piece
        position += len(piece)
    return position


def aligned_buffer(size: int) -> memoryview:
    """This thread's page-aligned buffer, at least ``size`` bytes; release the view after use."""
    return _buffers.at_least(max(size, ALIGNMENT))


def aligned_read_buffer(size: int) -> memoryview:
    """A second page-aligned buffer per thread: what is read into it can be written
    directly from it while ``aligned_buffer`` stages other writes."""
    return _read_buffers.at_least(max(size, ALIGNMENT))


def pwrite_direct(fd: int, view: memoryview, offset: int) -> None:
    """Write all of an aligned ``view`` (whole blocks) at an aligned ``offset``."""
    written = 0
    while written < len(view):
        with refusal_is_unsupported():
            done = platform.pwrite(fd, view[written:], offset + written)
        if done <= 0 or done % ALIGNMENT:
            raise DirectIOUnsupported(f"a direct write stopped at {written + done} bytes")
        written += done


def create_direct(path: str | os.PathLike[str]) -> int:
    """Create ``path`` (it must not exist) for ``write_direct``."""
    return _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def _starts_at(part: bytes | memoryview, view: memoryview) -> bool:
    """Whether ``part`` is a view of the first bytes of ``view``'s memory."""
    if not isinstance(part, memoryview) or part.obj is not view.obj or part.readonly:
        return False
    return buffer_address(part) == buffer_address(view)


def write_direct(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """Write ``parts`` in order from offset 0 of a file made by ``create_direct``.

    The last block is padded to the alignment and the file then cut to its true
    size, so the file holds exactly the parts.
    """
    total = sum(len(part) for part in parts)
    padded = _aligned_up(total)
    view = aligned_buffer(padded)
    try:
        if not (len(parts) == 1 and _starts_at(parts[0], view)):  # else assembled there already
            fill(view, parts)
        view[total:padded] = bytes(padded - total)
        pwrite_direct(fd, view[:padded], 0)
    finally:
        view.release()
    if padded != total:
        os.ftruncate(fd, total)


def read_direct(path: str | os.PathLike[str], offset: int, length: int) -> bytes:
    """Up to ``length`` bytes from ``offset`` (fewer at the end of the file).

    The read covers whole aligned blocks around the range; only the range is
    copied out of the buffer.
    """
    fd = _open(path, os.O_RDONLY)
    try:
        start = offset - offset % ALIGNMENT
        end = _aligned_up(offset + length)
        view = aligned_buffer(end - start)
        try:
            got = 0
            while got < end - start:
                with refusal_is_unsupported():
                    done = platform.preadv(fd, [view[got : end - start]], start + got)
                if done <= 0:
                    break  # end of file
                got += done
                if done % ALIGNMENT:
                    break  # only the file's last block is partial
            skip = offset - start
            return bytes(view[skip : max(skip, min(got, skip + length))])
        finally:
            view.release()
    finally:
        os.close(fd)
