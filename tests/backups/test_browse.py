"""backups.browse: listing, finding and choosing entries of a manifest (no store needed)."""

from __future__ import annotations

import pytest

from cloudkeep.backups.browse import find, list_entries, normalize_path, select
from cloudkeep.backups.manifest import FileEntry, Manifest
from cloudkeep.errors import EntryNotFound, UserError


def _manifest(*files: FileEntry, backup_id: str = "0.1.0_1000") -> Manifest:
    return Manifest(
        id=backup_id,
        version="0.1.0",
        timestamp=backup_id.split("_")[1],
        bytes=sum(f.size for f in files),
        created="2026-01-01T00:00:00+00:00",
        device_name="laptop",
        platform="LINUX",
        hostname="laptop",
        source="/data",
        kind="folder",
        files=list(files),
    )


TREE = _manifest(
    FileEntry("notes", "dir", 0o755, 1),
    FileEntry("notes/app.db", "file", 0o644, 1, size=8192, sqlite=True),
    FileEntry("notes/app.db-wal", "file", 0o644, 1, size=100),
    FileEntry("notes/readme.txt", "file", 0o644, 1, size=5),
    FileEntry("implicit/deep/file.bin", "file", 0o600, 1, size=7),  # folders not listed
    FileEntry("link", "symlink", 0o777, 1, target="notes"),
    FileEntry("[weird].txt", "file", 0o644, 1, size=1),
)


def test_list_entries_shows_implicit_folders_and_refuses_what_is_not_there() -> None:
    top = list_entries(TREE)
    assert [e.path for e in top.entries] == ["[weird].txt", "implicit", "link", "notes"]
    implicit = next(e for e in top.entries if e.path == "implicit")
    assert implicit.type == "dir" and implicit.mtime_ns == 0
    assert [e.path for e in list_entries(TREE, "/implicit/").entries] == ["implicit/deep"]
    assert [e.path for e in list_entries(TREE, "implicit", recursive=True).entries] == [
        "implicit/deep",
        "implicit/deep/file.bin",
    ]
    assert [e.path for e in list_entries(TREE, "notes/readme.txt").entries] == ["notes/readme.txt"]
    assert list_entries(TREE, "link").entries[0].target == "notes"
    with pytest.raises(EntryNotFound, match="'link' is a symlink there"):
        list_entries(TREE, "link/app.db")
    with pytest.raises(EntryNotFound, match=r"'notes/readme\.txt' is a file there"):
        list_entries(TREE, "notes/readme.txt/x")
    with pytest.raises(EntryNotFound, match=r"'nope' is not in backup 0\.1\.0_1000"):
        list_entries(TREE, "nope")


@pytest.mark.parametrize("bad", ["..", "a/../b", "a//b", "a\0b", "..\\x", "./a"])
def test_normalize_path_refuses_what_check_path_refuses(bad: str) -> None:
    with pytest.raises(UserError, match="not a path inside a backup"):
        normalize_path(bad)


def test_find_by_name_by_path_by_type_and_limit() -> None:
    older = _manifest(FileEntry("notes/app.db", "file", size=1), backup_id="0.1.0_900")
    groups, cut = find([TREE, older], "*.db")
    assert [(g.manifest.id, [e.path for e in g.entries]) for g in groups] == [
        ("0.1.0_1000", ["notes/app.db"]),
        ("0.1.0_900", ["notes/app.db"]),
    ]
    assert not cut
    assert [e.path for e in find([TREE], "notes/*")[0][0].entries] == [
        "notes/app.db",
        "notes/app.db-wal",
        "notes/readme.txt",
    ]
    assert [e.path for e in find([TREE], "/*/*/*.bin")[0][0].entries] == ["implicit/deep/file.bin"]
    assert find([TREE], "*/*.bin")[0] == []  # '*' stays within one name
    assert [e.path for e in find([TREE], "**/*.bin")[0][0].entries] == ["implicit/deep/file.bin"]
    assert [e.path for e in find([TREE], "[[]weird].txt")[0][0].entries] == ["[weird].txt"]
    assert [e.path for e in find([TREE], "*", kind="symlink")[0][0].entries] == ["link"]
    groups, cut = find([TREE, older], "*.db", limit=1)
    assert cut and [len(g.entries) for g in groups] == [1]
    with pytest.raises(UserError):
        find([TREE], "*", kind="fifo")
    with pytest.raises(UserError):
        find([TREE], "")


def test_select_takes_folders_on_the_way_and_a_database_with_its_companions() -> None:
    part, roots = select(TREE, ["notes/app.db-wal", "implicit/deep"])
    assert roots == ["implicit/deep", "notes/app.db-wal"]
    assert [e.path for e in part.files] == [
        "notes",
        "notes/app.db",
        "notes/app.db-wal",
        "implicit/deep/file.bin",
    ]
    assert part.bytes == 8192 + 100 + 7 and part.id == TREE.id
    whole, roots = select(TREE, ["/"])
    assert whole is TREE and roots == [""]
    assert select(TREE, ["notes", "notes/readme.txt"])[1] == ["notes"]
    with pytest.raises(EntryNotFound, match="'link' is a symlink there"):
        select(TREE, ["link/readme.txt"])
    with pytest.raises(UserError, match="no path"):
        select(TREE, [])
