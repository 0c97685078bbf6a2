"""``file:`` store URLs name local paths on POSIX and on Windows, both ways."""

from __future__ import annotations

import pytest

from cloudkeep.storage.url import file_url, file_url_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///C:/Users/a/store", "C:\\Users\\a\\store"),
        ("file:///C:/", "C:\\"),
        ("file:///d:/My%20Backups/x", "d:\\My Backups\\x"),
        ("file://server/share/x", "\\\\server\\share\\x"),
        ("file://server/share/", "\\\\server\\share\\"),
    ],
)
def test_windows_file_urls_round_trip(url: str, path: str) -> None:
    assert file_url_path(url, windows=True) == path
    assert file_url(path, windows=True) == url


def test_windows_drive_is_not_doubled() -> None:
    """The bug this fixes: ``file:///C:/x`` became ``C:\\C:\\x`` through ``abspath``."""
    assert file_url_path("file:///C:/Users/a", windows=True).count("C:") == 1


@pytest.mark.parametrize(
    "url", ["file:///Users/a", "file:///", "file:relative", "file:///C:/x?a=1"]
)
def test_windows_file_urls_need_a_drive_or_a_server(url: str) -> None:
    with pytest.raises(ValueError):
        file_url_path(url, windows=True)


def test_posix_file_urls_round_trip() -> None:
    assert file_url_path("file:///home/a/store", windows=False) == "/home/a/store"
    assert file_url_path("file://localhost/home/a", windows=False) == "/home/a"
    assert file_url("/home/a/store", windows=False) == "file:///home/a/store"


@pytest.mark.parametrize("url", ["file://server/share", "file:relative", "file:///x?a=1"])
def test_posix_file_urls_name_absolute_local_paths(url: str) -> None:
    with pytest.raises(ValueError):
        file_url_path(url, windows=False)
