"""restore.write: the staging tree never follows a symlink, modes are capped by the umask,
pieces land at their offsets (buffered and direct), live files are read only when regular."""

from __future__ import annotations

import errno
import itertools
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudkeep import platform
from cloudkeep.backups.manifest import FileEntry
from cloudkeep.backups.restore.write import (
    DIRECT_MIN_RUN_BYTES,
    Files,
    Piece,
    Tree,
    create_with_mode,
    link_to_folder,
    read_live,
    reserve,
    set_size,
    write_in_place,
    write_pieces,
)
from cloudkeep.direct_io import DIRECT_MIN_BYTES, aligned_read_buffer
from cloudkeep.errors import RepositoryDamaged, UnsafeBackup
from cloudkeep.platform import Folder, process_umask
from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace

MIB = 1024 * 1024


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


@pytest.fixture
def tree(staging: Path) -> Iterator[Tree]:
    tree = Tree(staging)
    yield tree
    tree.close()


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_tree_refuses_a_symlinked_parent_at_any_depth(tmp_path: Path, tree: Tree) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tree.mkdir("a")
    tree.symlink("a/link", str(outside))
    with pytest.raises(RepositoryDamaged, match="cannot restore into 'a/link': it is not a folder"):
        tree.create_file("a/link/file")
    with pytest.raises(RepositoryDamaged, match="not a folder"):
        tree.mkdir("a/link/deeper/sub")
    with pytest.raises(RepositoryDamaged, match="taken"):
        tree.mkdir("a/link")
    with pytest.raises(OSError):
        tree.create_file("a/link")  # the symlink itself is not opened either
    assert list(outside.iterdir()) == []


def test_a_file_where_a_folder_is_expected_stops_the_restore(staging: Path, tree: Tree) -> None:
    os.close(tree.create_file("f"))
    with pytest.raises(RepositoryDamaged, match="cannot restore into 'f'"):
        tree.create_file("f/inner")
    with pytest.raises(RepositoryDamaged, match="taken"):
        tree.mkdir("f")
    with pytest.raises(FileExistsError):
        tree.create_file("f")  # never an existing file
    assert (staging / "f").read_bytes() == b""


def test_folders_not_listed_are_made_private_and_remembered(staging: Path, tree: Tree) -> None:
    os.close(tree.create_file("x/y/z"))
    tree.mkdir("x")  # listed after all
    assert tree.implicit == {"x/y"}
    assert stat.S_IMODE((staging / "x" / "y").stat().st_mode) == 0o700


def test_modes_are_capped_by_the_umask_and_times_set(
    staging: Path, tree: Tree, umask_022: None
) -> None:
    entries = [
        FileEntry("d/open", "file", mode=0o666, mtime_ns=1_000_000_000),
        FileEntry("d/tool", "file", mode=0o777, mtime_ns=2_000_000_000),
        FileEntry("d", "dir", mode=0o777, mtime_ns=3_000_000_000),
    ]
    tree.mkdir("d")
    for entry in entries[:2]:
        os.close(tree.create_file(entry.path))
    umask = process_umask()
    assert umask == 0o022
    tree.finish(entries, umask, root_mode=0o750)
    modes = {entry.path: stat.S_IMODE((staging / entry.path).stat().st_mode) for entry in entries}
    assert modes == {"d/open": 0o644, "d/tool": 0o755, "d": 0o755}
    assert (staging / "d").stat().st_mtime_ns == 3_000_000_000
    assert (staging / "d" / "open").stat().st_mtime_ns == 1_000_000_000
    assert stat.S_IMODE(staging.stat().st_mode) == 0o750


def test_the_umask_is_read_without_being_changed() -> None:
    old = os.umask(0o027)
    try:
        assert process_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_pieces_land_at_their_offsets_merged_in_any_order(staging: Path, tree: Tree) -> None:
    small, large = pattern(10_000, 1), pattern(3 * MIB + 777, 2)
    files = Files()
    try:
        for path, content in (("small", small), ("large", large)):
            fd = files.open(tree, path, len(content))
            reserve(fd, FileEntry(path, "file", size=len(content)))
        assert files.direct[0] is None  # too small to go direct
        cuts = [0, 100, 4096, 5000, DIRECT_MIN_RUN_BYTES + 3, 2 * MIB + 1, len(large)]
        pieces = [Piece(0, 0, small[:6000]), Piece(0, 6000, memoryview(small)[6000:])]
        pieces += [
            Piece(1, start, memoryview(large)[start:end]) for start, end in itertools.pairwise(cuts)
        ]
        random.Random(3).shuffle(pieces)
        assert write_pieces(files, pieces) == len(small) + len(large)
        assert files.direct[1] is not None or not files.direct_ok  # direct where it can
        files.sync()
    finally:
        files.close()
    assert (staging / "small").read_bytes() == small
    assert (staging / "large").read_bytes() == large


def test_a_long_unaligned_run_goes_direct_in_the_middle(staging: Path, tree: Tree) -> None:
    content = pattern(2 * DIRECT_MIN_BYTES + 4 * MIB, 4)
    files = Files()
    try:
        fd = files.open(tree, "db", len(content))
        reserve(fd, FileEntry("db", "file", size=len(content)))
        if files.direct[0] is None:
            pytest.skip("this filesystem refuses O_DIRECT")
        start, end = 123, len(content) - 45  # head and tail are not whole blocks
        view = aligned_read_buffer(len(content))[: len(content)]
        view[:] = content
        assert write_in_place(files, 0, view, 0, start, end)
        assert files.direct[0] is not None  # the file was not dropped to buffered writes
        assert not write_in_place(files, 0, view, 0, 0, 100)  # too short for direct
        write_pieces(files, [Piece(0, 0, content[:start]), Piece(0, end, content[end:])])
        files.sync()
    finally:
        files.close()
    assert (staging / "db").read_bytes() == content


def test_a_reserved_file_is_cut_to_the_size_its_chunks_add_up_to(staging: Path, tree: Tree) -> None:
    fd = tree.create_file("f")
    try:
        reserve(fd, FileEntry("f", "file", size=100_000))
        assert os.fstat(fd).st_size == 100_000
        set_size(fd, 4_096)
    finally:
        os.close(fd)
    assert (staging / "f").stat().st_size == 4_096


def test_a_copy_target_gets_exactly_its_mode_and_never_an_existing_path(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "copy"
    create_with_mode(path, 0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_with_mode(path, 0o600)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):  # EEXIST, or ELOOP where O_NOFOLLOW is emulated (portable)
        create_with_mode(link, 0o600)
    assert not (tmp_path / "elsewhere").exists()


def test_only_regular_live_files_are_read(tmp_path: Path) -> None:
    data = pattern(10_000, 5)
    regular = tmp_path / "regular"
    regular.write_bytes(data)
    view = memoryview(bytearray(8_192))
    assert read_live(regular, view, 4_000) == 6_000
    assert bytes(view[:6_000]) == data[4_000:]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_live(fifo, view, 0) == 0  # not opened for a blocking read
    link = tmp_path / "link"
    link.symlink_to(regular)
    assert read_live(link, view, 0) == 0
    assert read_live(tmp_path / "missing", view, 0) == 0


def privilege_refused(
    folder: object, target: str, name: str, target_is_directory: bool = False
) -> None:
    """What Windows raises when a user without the privilege creates a symlink."""
    error = OSError(errno.EPERM, "A required privilege is not held by the client")
    error.winerror = 1314  # type: ignore[attr-defined]
    raise error


def test_a_symlink_the_system_refuses_becomes_a_warning(
    staging: Path, tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(tree.root), "symlink", privilege_refused)
    tree.symlink("link", "elsewhere")
    (warning,) = tree.warnings
    assert "link -> elsewhere was not restored" in warning
    assert not (staging / "link").is_symlink()


def test_a_restore_reports_the_symlinks_it_could_not_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_bytes(b"content")
    (data / "link").symlink_to("file")
    ws = Workspace(
        Settings(
            data=data,
            store=(tmp_path / "store").as_uri(),
            passphrase="warnings passphrase",
            config_dir=tmp_path / "config",
            cache_dir=tmp_path / "cache",
        )
    )
    backup_id = ws.backup().id
    probe = platform.open_folder(tmp_path)  # of the class this system restores through
    probe.close()
    monkeypatch.setattr(type(probe), "symlink", privilege_refused)
    info = ws.restore(backup_id, target=tmp_path / "restored")
    (warning,) = info.warnings
    assert "link -> file was not restored" in warning
    assert (tmp_path / "restored" / "file").read_bytes() == b"content"
    assert not (tmp_path / "restored" / "link").exists()


def _workspace(tmp_path: Path, data: Path) -> Workspace:
    return Workspace(
        Settings(
            data=data,
            store=(tmp_path / "store").as_uri(),
            passphrase="names passphrase",
            config_dir=tmp_path / "config",
            cache_dir=tmp_path / "cache",
        )
    )


@pytest.mark.parametrize("path", ["CON", "sub/aux.txt", "C:x", "a:b", "x.", "dir./f"])
def test_the_tree_refuses_windows_names_on_windows_as_an_unsafe_backup(
    staging: Path, tree: Tree, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(platform, "WINDOWS_NAMES", True)
    with pytest.raises(UnsafeBackup) as refused:
        tree.create_file(path)
    message = str(refused.value)
    assert "\n" not in message and repr(path) in message
    with pytest.raises(UnsafeBackup):
        tree.mkdir(path)
    with pytest.raises(UnsafeBackup):
        tree.symlink(path, "target")
    assert [p.name for p in staging.rglob("*")] in ([], ["sub"])


def test_windows_names_are_ordinary_names_elsewhere(staging: Path, tree: Tree) -> None:
    os.close(tree.create_file("sub/aux.txt"))
    tree.mkdir("a:b")
    assert (staging / "sub" / "aux.txt").is_file() and (staging / "a:b").is_dir()


def test_a_restore_of_a_windows_device_name_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "nul.txt").write_bytes(b"content")
    ws = _workspace(tmp_path, data)
    backup_id = ws.backup().id
    monkeypatch.setattr(platform, "WINDOWS_NAMES", True)  # restored as Windows would
    with pytest.raises(UnsafeBackup, match=r"'sub/nul\.txt' on this system: 'nul\.txt' is a dev"):
        ws.restore(backup_id, target=tmp_path / "restored")
    assert not (tmp_path / "restored").exists() or not any((tmp_path / "restored").iterdir())


def test_a_link_to_a_folder_of_the_backup_is_known() -> None:
    folders = {"a", "a/b", "c"}
    assert link_to_folder("a/link", "b", folders)
    assert link_to_folder("a/b/link", "../../c", folders)
    assert link_to_folder("a/link", "..", folders)  # the backup's root
    assert link_to_folder("a/link", "b\\", folders)  # a Windows target
    assert not link_to_folder("a/link", "file", folders)
    assert not link_to_folder("link", "../outside", folders)
    assert not link_to_folder("link", "/abs/a", folders)
    assert not link_to_folder("link", "C:\\a", folders)


def test_a_restore_makes_links_to_folders_as_folder_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "dir").mkdir(parents=True)
    (data / "file").write_bytes(b"x")
    (data / "to_dir").symlink_to("dir")
    (data / "to_file").symlink_to("file")
    ws = _workspace(tmp_path, data)
    backup_id = ws.backup().id
    made: dict[str, bool] = {}
    probe = platform.open_folder(tmp_path)
    probe.close()
    real = type(probe).symlink

    def recording(
        folder: Folder, target: str, name: str, target_is_directory: bool = False
    ) -> None:
        made[name] = target_is_directory
        real(folder, target, name, target_is_directory)  # type: ignore[arg-type]

    monkeypatch.setattr(type(probe), "symlink", recording)
    ws.restore(backup_id, target=tmp_path / "restored")
    assert made == {"to_dir": True, "to_file": False}
    assert (tmp_path / "restored" / "to_dir").resolve() == (tmp_path / "restored" / "dir")
