"""The names a folder of a restore may hold on each system, and ``PathFolder`` refusing
the Windows ones when told it runs there."""

from __future__ import annotations

import ntpath
import os
from pathlib import Path, PureWindowsPath

import pytest

from cloudkeep.platform._folders import PathFolder, UnsafeName, unsafe_name

# Each of these, joined to a Windows folder, names a drive, a stream, a device, another
# entry or something Windows refuses.
WINDOWS_ONLY_UNSAFE = [
    "C:",
    "C:x",
    "a:b",
    "file.txt:stream",
    "a\\b",
    "..\\x",
    "CON",
    "con",
    "NUL",
    "nul.txt",
    "aux.txt",
    "Aux.tar.gz",
    "COM1",
    "com9.log",
    "LPT1",
    "lpt3.txt",
    "CONIN$",
    "x.",
    "x ",
    "x. .",
    "a?b",
    "a*b",
    "a<b",
    "a|b",
    'a"b',
    "a\x01b",
]
EVERYWHERE_UNSAFE = ["", ".", "..", "a/b", "/", "a\0b"]
SAFE = ["a", "file.txt", ".hidden", "CONSOLE", "COM", "nul_file", "a.b.c", "x .txt", "café"]


@pytest.mark.parametrize("name", WINDOWS_ONLY_UNSAFE)
def test_windows_names_that_escape_or_alias_are_refused_only_on_windows(name: str) -> None:
    assert unsafe_name(name, windows=True) is not None
    assert unsafe_name(name, windows=False) is None  # legit names on Linux and macOS


def test_the_refused_names_would_leave_their_folder_on_windows() -> None:
    stage = PureWindowsPath("D:\\stage")
    assert (stage / "C:").drive == "C:"
    assert ntpath.join("D:\\stage", "C:x") == "C:x"
    assert unsafe_name("C:x", windows=True) is not None


@pytest.mark.parametrize("name", EVERYWHERE_UNSAFE)
def test_names_that_are_not_one_entry_are_refused_everywhere(name: str) -> None:
    assert unsafe_name(name, windows=True) is not None
    assert unsafe_name(name, windows=False) is not None


@pytest.mark.parametrize("name", SAFE)
def test_plain_names_pass_everywhere(name: str) -> None:
    assert unsafe_name(name, windows=True) is None
    assert unsafe_name(name, windows=False) is None


@pytest.mark.parametrize("name", ["C:x", "CON", "aux.txt", "x.", "x ", "a:b"])
def test_a_path_folder_checking_windows_names_refuses_them(tmp_path: Path, name: str) -> None:
    folder = PathFolder.open_root(tmp_path, windows=True)
    with pytest.raises(UnsafeName, match="Windows"):
        folder.open(name, os.O_WRONLY | os.O_CREAT)
    with pytest.raises(UnsafeName):
        folder.mkdir(name, 0o700)
    with pytest.raises(UnsafeName):
        folder.symlink("target", name)
    with pytest.raises(UnsafeName):
        folder.child(name)
    assert list(tmp_path.iterdir()) == []
    linux = PathFolder.open_root(tmp_path, windows=False)
    linux.mkdir(name, 0o700)  # the same name is an ordinary one here
    assert (tmp_path / name).is_dir()


def test_a_child_folder_keeps_checking_windows_names(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    child = PathFolder.open_root(tmp_path, windows=True).child("sub")
    with pytest.raises(UnsafeName):
        child.open("NUL", os.O_WRONLY | os.O_CREAT)
