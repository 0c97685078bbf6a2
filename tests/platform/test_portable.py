"""The portable implementation: truncation only after the identity check, modes set through
a descriptor or by path, hard links that fall back where a filesystem has none, and
``CLOUDKEEP_PORTABLE=1`` reaching every call but the two that need the OS."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudkeep import platform
from cloudkeep.platform import portable
from cloudkeep.platform._common import link_unsupported
from cloudkeep.platform._folders import PathFolder
from cloudkeep.storage.base import ObjectExists
from cloudkeep.storage.url import open_store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symlinks and modes of POSIX")


def _lstat_sees_a_regular_file_once(
    monkeypatch: pytest.MonkeyPatch, path: Path, decoy: Path
) -> None:
    """``lstat(path)`` answers as for ``decoy`` once: a symlink swapped in just after."""
    real = os.lstat
    fooled = []

    def lstat(target: str | os.PathLike[str], **kwargs: object) -> os.stat_result:
        if Path(target) == path and not fooled:
            fooled.append(True)
            return real(decoy)
        return real(target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", lstat)


def _portable_open(path: Path, flags: int) -> int:
    return portable.open_nofollow(path, flags)


def _path_folder_open(path: Path, flags: int) -> int:
    return PathFolder(path.parent).open(path.name, flags)


@pytest.mark.parametrize("opener", [_portable_open, _path_folder_open])
def test_a_symlink_swapped_in_is_refused_before_its_target_is_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opener: Callable[[Path, int], int]
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"decoy")
    link = tmp_path / "link"
    link.symlink_to(victim)
    _lstat_sees_a_regular_file_once(monkeypatch, link, decoy)
    with pytest.raises(OSError) as refused:
        opener(link, os.O_WRONLY | os.O_TRUNC)
    assert refused.value.errno == errno.ELOOP
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("opener", [_portable_open, _path_folder_open])
def test_o_trunc_still_truncates_the_entry_checked(
    tmp_path: Path, opener: Callable[[Path, int], int]
) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old content")
    fd = opener(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"new"


def test_set_mode_through_the_descriptor_or_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        platform.set_mode(fd, path, 0o640)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        portable.set_mode(fd, path, 0o604)
        assert stat.S_IMODE(path.stat().st_mode) == 0o604
        # As Windows before Python 3.13: chmod takes no descriptor, so by path.
        monkeypatch.setattr(os, "supports_fd", set())
        portable.set_mode(-1, path, 0o600)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.close(fd)


def _no_hard_links(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """``os.link`` answering as a filesystem without hard links (FAT, SMB, macOS ENOTSUP)."""

    def link(source: object, target: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", link)


def test_link_new_links_refuses_a_taken_name_and_raises_other_errors(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"x")
    assert platform.link_new(source, tmp_path / "linked")
    assert (tmp_path / "linked").stat().st_ino == source.stat().st_ino
    with pytest.raises(FileExistsError):
        platform.link_new(source, tmp_path / "linked")
    with pytest.raises(FileNotFoundError):
        platform.link_new(tmp_path / "missing", tmp_path / "other")


@pytest.mark.parametrize("code", [errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV])
def test_link_new_says_false_where_the_filesystem_has_no_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"x")
    _no_hard_links(monkeypatch, code)
    assert platform.link_new(source, tmp_path / "linked") is False


def test_the_windows_codes_of_no_hard_links() -> None:
    for winerror in (1, 50, 1142):
        error = OSError(errno.EINVAL, "refused")
        error.winerror = winerror  # type: ignore[attr-defined]
        assert link_unsupported(error)
    denied = OSError(errno.EACCES, "denied")
    denied.winerror = 5  # type: ignore[attr-defined]
    assert not link_unsupported(denied)
    assert not link_unsupported(OSError(errno.EACCES, "denied"))
    assert not link_unsupported(OSError(errno.EIO, "I/O error"))


def test_a_folder_store_without_hard_links_still_creates_only_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_hard_links(monkeypatch, errno.ENOTSUP)
    store = open_store((tmp_path / "store").as_uri())
    store.put("config", b"first", create_only=True)
    with pytest.raises(ObjectExists):
        store.put("config", b"second", create_only=True)
    assert store.get("config") == b"first"


ROUTED = [
    "MODES_ENFORCED",
    "link_new",
    "lower_priority",
    "make_blocking",
    "open_nofollow",
    "owned_by_me",
    "process_alive",
    "raise_descriptor_limit",
    "range_locked",
    "set_mode",
]


def test_cloudkeep_portable_reaches_every_call() -> None:
    script = (
        "import cloudkeep.platform as p, cloudkeep.platform.portable as q\n"
        f"print([n for n in {ROUTED!r} + p.__all__ if hasattr(q, n)"
        " and getattr(p, n) is not getattr(q, n)])"
    )
    env = {**os.environ, "CLOUDKEEP_PORTABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_portable_answers_match_this_system(tmp_path: Path) -> None:
    assert portable.MODES_ENFORCED
    assert portable.owned_by_me(os.lstat(tmp_path))
    assert portable.raise_descriptor_limit(64) >= 64
    read, write = os.pipe()
    try:
        os.set_blocking(read, False)
        portable.make_blocking(read)
        assert os.get_blocking(read)
    finally:
        os.close(read)
        os.close(write)


def test_lower_priority_lowers_this_process() -> None:
    script = (
        "import os\nfrom cloudkeep.platform import lower_priority\n"
        "before = os.nice(0)\nlower_priority()\nprint(os.nice(0) - before, before)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    lowered, before = map(int, done.stdout.split())
    assert lowered == min(10, 19 - before)
