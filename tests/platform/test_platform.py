"""Each portable implementation against the native one on Linux, the default folders of
every OS, and a backup and restore through the CLI with CLOUDKEEP_PORTABLE=1."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PureWindowsPath
from types import ModuleType

import pytest

from cloudkeep import platform
from cloudkeep.platform import Folder, default_folders, make_symlink, portable
from cloudkeep.platform._folders import DescriptorFolder, PathFolder

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="compares with the Linux calls")

if sys.platform == "linux":
    from cloudkeep.platform import linux
else:  # pragma: no cover
    linux = portable

IMPLEMENTATIONS = [pytest.param(linux, id="linux"), pytest.param(portable, id="portable")]
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    descriptor = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o600)
    yield descriptor
    os.close(descriptor)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_positional_and_vectored_io_give_the_same_bytes(impl: ModuleType, fd: int) -> None:
    assert impl.pwritev(fd, [b"hello ", memoryview(b"world")], 10) == 11
    assert impl.pwrite(fd, b"HE", 10) == 2
    os.lseek(fd, 0, os.SEEK_END)
    assert impl.writev(fd, [b"!", b"?"]) == 2
    assert impl.pread(fd, 100, 0) == bytes(10) + b"HEllo world!?"
    first, second = bytearray(4), bytearray(100)
    assert impl.preadv(fd, [memoryview(first), memoryview(second)], 12) == 11
    assert bytes(first) == b"llo " and bytes(second[:7]) == b"world!?"
    assert impl.pread(fd, 5, 1000) == b""  # past the end


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_positional_io_from_many_threads_at_once(impl: ModuleType, fd: int) -> None:
    """Threads sharing one descriptor never move its offset under each other."""
    block, threads, rounds = 4096, 8, 40
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for round_ in range(rounds):
                offset = (round_ * threads + number) * block
                data = bytes([number + 1]) * block
                assert impl.pwritev(fd, [data[:100], data[100:]], offset) == block
                view = memoryview(bytearray(block))
                assert impl.preadv(fd, [view[:10], view[10:]], offset) == block
                assert bytes(view) == data and impl.pread(fd, block, offset) == data
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == []
    everything = linux.pread(fd, block * threads * rounds, 0)
    for index in range(threads * rounds):
        assert (
            everything[index * block : (index + 1) * block] == bytes([index % threads + 1]) * block
        )


def test_the_portable_preadv_reads_what_the_native_one_reads(fd: int) -> None:
    content = os.urandom(50_000)
    linux.pwrite(fd, content, 0)
    for offset, sizes in [(0, [10, 20]), (49_990, [5, 100]), (123, [4096, 4096, 9])]:
        native = [memoryview(bytearray(size)) for size in sizes]
        fallback = [memoryview(bytearray(size)) for size in sizes]
        assert linux.preadv(fd, native, offset) == portable.preadv(fd, fallback, offset)
        assert [bytes(b) for b in native] == [bytes(b) for b in fallback]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_preallocate_gives_the_file_its_size(impl: ModuleType, fd: int) -> None:
    impl.preallocate(fd, 1_000_000)
    assert os.fstat(fd).st_size == 1_000_000


def test_exchange_swaps_two_folders_or_says_it_cannot(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "which").write_text("a")
    (b / "which").write_text("b")
    assert portable.exchange_paths(a, b) is False
    assert (a / "which").read_text() == "a"
    if linux.exchange_paths(a, b):  # tmpfs and ext4 can; some filesystems cannot
        assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"


@pytest.mark.parametrize("portable_mode", ["0", "1"])
def test_replace_atomically_keeps_the_previous_state_either_way(
    tmp_path: Path, portable_mode: str
) -> None:
    """``swap.replace_atomically`` with and without an exchange leaves the same result."""
    script = (
        "import sys; from pathlib import Path; from cloudkeep.backups import swap\n"
        "root = Path(sys.argv[1]); swap.replace_atomically(root/'staged', root/'live', root/'keep')"
    )
    for name in ("staged", "live", "keep"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "which").write_text(name)
    env = {**os.environ, "CLOUDKEEP_PORTABLE": portable_mode}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    assert (tmp_path / "live" / "which").read_text() == "staged"
    assert (tmp_path / "keep" / "which").read_text() == "live"
    assert not (tmp_path / "staged").exists()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_process_alive_for_self_and_a_dead_child(impl: ModuleType) -> None:
    assert impl.process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not impl.process_alive(child.pid)
    assert not impl.process_alive(0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_zombie_is_dead(impl: ModuleType) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    try:
        assert not impl.process_alive(child.pid)
    finally:
        child.wait()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_open_nofollow_refuses_a_symlink(impl: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError) as refused:
        impl.open_nofollow(tmp_path / "link", os.O_RDONLY)
    assert refused.value.errno == errno.ELOOP
    fd = impl.open_nofollow(tmp_path / "real", os.O_RDONLY)
    try:
        assert os.read(fd, 1) == b"x"
    finally:
        os.close(fd)


@pytest.mark.parametrize("opener", [DescriptorFolder.open_root, PathFolder.open_root])
def test_folders_write_a_tree_and_never_follow_a_symlink(
    opener: Callable[[Path], Folder], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root_path = tmp_path / "root"
    root_path.mkdir()
    root = opener(root_path)
    root.mkdir("sub", 0o700)
    sub = root.child("sub")
    fd = sub.open("file", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, b"data")
    os.close(fd)
    sub.finish_entry("file", 0o640, 10**18)
    assert (root_path / "sub" / "file").stat().st_mtime_ns == 10**18
    assert make_symlink(root, str(outside), "escape") is None
    with pytest.raises(NotADirectoryError):
        root.child("escape")
    with pytest.raises(OSError):
        root.open("escape", os.O_WRONLY | os.O_CREAT)
    assert list(outside.iterdir()) == []
    sub.finish(0o750, 10**18)
    assert (root_path / "sub").stat().st_mode & 0o777 == 0o750
    sub.close()
    root.close()


class _NoSymlinkPrivilege:
    """A folder as Windows without Developer Mode answers a symlink request."""

    path = Path("C:/data")

    def symlink(self, target: str, name: str, target_is_directory: bool = False) -> None:
        error = OSError(errno.EPERM, "A required privilege is not held by the client")
        error.winerror = 1314  # type: ignore[attr-defined]
        raise error


def test_a_symlink_without_the_privilege_is_a_warning() -> None:
    warning = make_symlink(_NoSymlinkPrivilege(), "target", "link")  # type: ignore[arg-type]
    assert warning is not None and "Developer Mode" in warning and "link" in warning


def test_default_folders_on_each_system() -> None:
    linux_folders = default_folders("linux", {"XDG_CONFIG_HOME": "/x/cfg"}, "/home/a", "app")
    assert linux_folders.config == Path("/x/cfg/app")
    assert linux_folders.cache == Path("/home/a/.cache/app")
    assert linux_folders.data == Path("/home/a/.local/share/app")
    relative = default_folders("linux", {"XDG_DATA_HOME": "rel"}, "/home/a", "app")
    assert relative.data == Path("/home/a/.local/share/app")  # relative values are ignored
    mac = default_folders("darwin", {}, "/Users/a", "app")
    assert mac.config == mac.data == Path("/Users/a/Library/Application Support/app")
    assert mac.cache == Path("/Users/a/Library/Caches/app")
    environ = {
        "APPDATA": r"C:\Users\a\AppData\Roaming",
        "LOCALAPPDATA": r"C:\Users\a\AppData\Local",
    }
    windows = default_folders("win32", environ, r"C:\Users\a", "app")
    assert PureWindowsPath(str(windows.config)) == PureWindowsPath(
        r"C:\Users\a\AppData\Roaming\app"
    )
    assert PureWindowsPath(str(windows.data)) == PureWindowsPath(r"C:\Users\a\AppData\Local\app")
    assert PureWindowsPath(str(windows.cache)) == PureWindowsPath(
        r"C:\Users\a\AppData\Local\app\Cache"
    )
    bare = default_folders("win32", {}, r"C:\Users\b", "app")
    assert PureWindowsPath(str(bare.config)) == PureWindowsPath(r"C:\Users\b\AppData\Roaming\app")


def test_the_linux_defaults_are_those_platformdirs_gave() -> None:
    platformdirs = pytest.importorskip("platformdirs")
    folders = platform.user_folders("cloudkeep")
    assert folders.config == Path(platformdirs.user_config_dir("cloudkeep"))
    assert folders.cache == Path(platformdirs.user_cache_dir("cloudkeep"))
    assert folders.data == Path(platformdirs.user_data_dir("cloudkeep"))


def test_portable_is_selected_by_the_environment() -> None:
    script = (
        "from cloudkeep import platform; print(platform.IMPLEMENTATION, platform.SQLITE_IN_PLACE)"
    )
    for value, expected in (("1", "portable False"), ("", "linux True")):
        env = {**os.environ, "CLOUDKEEP_PORTABLE": value}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.split() == expected.split()


def test_umask_is_read_the_same_way() -> None:
    assert linux.process_umask() == portable.process_umask()


def test_backup_and_restore_of_a_live_sqlite_folder_with_the_portable_calls(
    tmp_path: Path,
) -> None:
    data = tmp_path / "production"
    data.mkdir()
    db = sqlite3.connect(data / "notes.db")
    db.execute("PRAGMA journal_mode=wal")
    db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB)")
    db.executemany("INSERT INTO notes(body) VALUES (?)", [(os.urandom(3000),) for _ in range(400)])
    db.commit()  # left open, frames in the WAL: a live app database
    (data / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # large enough to go "direct"
    env = {
        **os.environ,
        "CLOUDKEEP_PORTABLE": "1",
        "CLOUDKEEP_PASSPHRASE": PASSPHRASE,
        "CLOUDKEEP_CONFIG_DIR": str(tmp_path / "config"),
        "CLOUDKEEP_CACHE_DIR": str(tmp_path / "cache"),
    }
    args = ["--data", str(data), "--store", (tmp_path / "store").as_uri()]

    def run(*more: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cloudkeep", *args, *more],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    backup = json.loads(run("backup", "--json"))
    expected = db.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
    db.close()
    target = tmp_path / "restored"
    run("restore", backup["id"], "--target", str(target))
    restored = sqlite3.connect(target / "notes.db")
    assert restored.execute("SELECT id, body FROM notes ORDER BY id").fetchall() == expected
    restored.close()
    assert (target / "big.bin").read_bytes() == (data / "big.bin").read_bytes()
    run("check", "--read-data")  # exit code 0: every stored byte verified
