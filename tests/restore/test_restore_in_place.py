"""restore.in_place: the replaced content is kept by a hard link, or by a flushed copy where
the filesystem makes no hard links."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pytest

from cloudkeep.backups.restore.in_place import replace_single_file


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def test_the_replaced_file_is_kept_by_a_hard_link(tmp_path: Path) -> None:
    live, staged, keep = tmp_path / "live", tmp_path / "staged", tmp_path / "keep"
    _write(live, b"old", 0o640)
    old_inode = live.stat().st_ino
    _write(staged, b"new", 0o600)
    replace_single_file(staged, live, keep)
    assert live.read_bytes() == b"new"
    assert keep.read_bytes() == b"old" and keep.stat().st_ino == old_inode


@pytest.mark.skipif(sys.platform == "win32", reason="modes of POSIX")
def test_without_hard_links_the_replaced_file_is_kept_by_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(source: object, target: object, **kwargs: object) -> None:
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))  # as exFAT or SMB answer

    monkeypatch.setattr(os, "link", no_link)
    live, staged, keep = tmp_path / "live", tmp_path / "staged", tmp_path / "keep"
    _write(live, b"old content", 0o640)
    os.utime(live, ns=(10**18, 10**18))
    _write(staged, b"new", 0o600)
    replace_single_file(staged, live, keep)
    assert live.read_bytes() == b"new"
    assert keep.read_bytes() == b"old content"
    assert stat.S_IMODE(keep.stat().st_mode) == 0o640
    assert keep.stat().st_mtime_ns == 10**18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "live"]


def test_another_link_error_is_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(source: object, target: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "link", failing)
    live, staged, keep = tmp_path / "live", tmp_path / "staged", tmp_path / "keep"
    _write(live, b"old", 0o640)
    _write(staged, b"new", 0o600)
    with pytest.raises(OSError) as failed:
        replace_single_file(staged, live, keep)
    assert failed.value.errno == errno.EIO
    assert live.read_bytes() == b"old" and not keep.exists()
