"""Issue 11, item 10: a backup is correct on the user's data as it really is.

Files vanish while a backup runs, some cannot be read, databases have names that
mean something in an SQLite URI, and a killed backup leaves plaintext scratch
behind. Each test does that to the real CLI (and the API server) on real files:

* vanishing: an app holds a write lock on the first database, so the backup
  waits on it with the scan done; the test then deletes files and a folder the
  backup has not read yet, and lets the lock go (no timing, no mocks);
* unreadable: the CLI runs as ``nobody`` (the tests run as root, and root reads
  any file) over a world-readable folder holding a root-only file; as a plain
  user, the file's mode alone keeps it out. Through the API server, a file is
  swapped for a FIFO once scanned (the same lock holds the backup meanwhile).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pieces_os_client.models.backup_streamed_progress import (
    BackupStreamedProgress as SdkBackupStreamedProgress,
)

from cloudkeep.backups.manifest import Manifest
from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace
from tests.faults.fault_helpers import free_port
from tests.hostile.conftest import CliResult, assert_clean_failure

NOBODY = 65534
WAIT_SECONDS = 60.0  # a deadline against hangs, never an assertion on speed
URI_NAMES = ("what?.db", "notes#1.db", "100%.db", "my notes é.db")


# ------------------------------------------------------------------ helpers
def cloudkeep(*args: str) -> list[str]:
    """The command line of the real CLI."""
    return [sys.executable, "-m", "cloudkeep", *args]


def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, opened read-only through an escaped URI."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = [
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return {t: db.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
    finally:
        db.close()


def make_db(path: Path, rows_count: int, *, wal: bool) -> None:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, blob BLOB)")
    db.executemany(
        "INSERT INTO notes(body, blob) VALUES (?, ?)",
        [(f"note {i} " * 20, os.urandom(300)) for i in range(rows_count)],
    )
    db.commit()
    db.close()


def manifest_of(store: str, backup_id: str) -> Manifest:
    settings = Settings.resolve(data="/nonexistent", store=store)
    return Workspace(settings).manifest(backup_id)


def wait_for(condition: object, process: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``condition`` until it holds; fail if the process ends or the deadline passes."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, f"the backup ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {WAIT_SECONDS} s"
        time.sleep(0.02)


def open_descriptors(pid: int, path: Path) -> int:
    """How many descriptors process ``pid`` holds on ``path``."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(path):
                count += 1
        except OSError:
            continue
    return count


@contextlib.contextmanager
def reaped(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Whatever happens in the test, the process (a session of its own) ends with it."""
    try:
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def write_locked(path: Path) -> sqlite3.Connection:
    """An app's write transaction on a rollback-journal database: readers wait for it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    return db


@dataclass
class Unprivileged:
    """Runs the CLI as a user the test's files can refuse (``nobody`` when we are root).

    ``root`` is a world-traversable folder (pytest's own is private to root): the
    data lives there root-owned and world-readable; ``home`` and ``store`` belong
    to the user the CLI runs as.
    """

    root: Path
    uid: int | None

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def store(self) -> str:
        return (self.root / "store").as_uri()

    def give(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.uid is None:
            return
        for folder, dirnames, filenames in os.walk(path):
            os.chown(folder, self.uid, self.uid)
            for name in dirnames + filenames:
                os.chown(os.path.join(folder, name), self.uid, self.uid, follow_symlinks=False)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "CLOUDKEEP_CONFIG_DIR": str(self.home / "config"),
            "CLOUDKEEP_CACHE_DIR": str(self.home / "cache"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def argv(self, *args: str) -> list[str]:
        command = cloudkeep(*args)
        if self.uid is None:
            return command
        # setpriv, not subprocess's user=: the interpreter lives under root's home.
        ids = [f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]
        return ["setpriv", *ids, *command]

    def run(self, *args: str) -> CliResult:
        done = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def unprivileged() -> Iterator[Unprivileged]:
    root = Path(tempfile.mkdtemp(prefix="cloudkeep-unprivileged-"))
    root.chmod(0o755)
    user = Unprivileged(root, NOBODY if os.geteuid() == 0 else None)
    user.give(user.home)
    user.give(root / "store")
    yield user
    shutil.rmtree(root, ignore_errors=True)


def unreadable(path: Path) -> None:
    """Root-owned mode 000: the unprivileged CLI gets EACCES opening it."""
    path.chmod(0)


def readable_tree(root: Path) -> Path:
    """A data folder anyone may read: an app database, a note, a subfolder."""
    root.mkdir(mode=0o755)
    make_db(root / "app.db", 200, wal=False)
    (root / "notes.txt").write_text("my notes\n")
    (root / "sub").mkdir(mode=0o755)
    (root / "sub" / "photo.bin").write_bytes(os.urandom(50_000))
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def one_line_error(result: CliResult) -> str:
    assert_clean_failure(result, codes=(1,))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------ vanishing files
def test_files_vanishing_during_the_backup_are_left_out_with_a_warning(tmp_path: Path, cli) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "a.db", 50, wal=False)  # read first: the app's lock holds the backup here
    (data / "b.txt").write_text("deleted before the backup reads it\n")
    make_db(data / "c.db", 50, wal=False)
    (data / "gone" / "inner").mkdir(parents=True)
    (data / "gone" / "x.txt").write_text("in a folder deleted whole\n")
    (data / "kept").mkdir()
    (data / "kept" / "y.txt").write_text("deleted\n")
    (data / "kept" / "z.txt").write_text("stays\n")
    (data / "stay.txt").write_text("stays too\n")
    store = (tmp_path / "store").as_uri()

    app = write_locked(data / "a.db")
    log = tmp_path / "backup.log"
    with (
        log.open("wb") as out,
        reaped(
            subprocess.Popen(
                cloudkeep("--data", str(data), "--store", store, "backup", "--json"),
                stdout=subprocess.PIPE,
                stderr=out,
                start_new_session=True,
            )
        ) as backup,
    ):
        try:
            # Our descriptor and SQLite's on a.db at once: the scan is over and the
            # backup waits for the app's lock, before reading anything after a.db.
            wait_for(lambda: open_descriptors(backup.pid, data / "a.db") >= 2, backup, "a wait")
            (data / "b.txt").unlink()
            (data / "c.db").unlink()
            shutil.rmtree(data / "gone")
            (data / "kept" / "y.txt").unlink()
        finally:
            app.rollback()
            app.close()
        stdout, _ = backup.communicate(timeout=120)
    stderr = log.read_text()
    assert backup.returncode == 0, stderr
    assert "Traceback" not in stderr

    saved = json.loads(stdout)
    for path in ("b.txt", "c.db", "gone/x.txt", "kept/y.txt"):
        assert f"{path}: vanished during the backup; it is not in this backup" in saved["warnings"]
        assert f"warning: {path}: vanished" in stderr
    manifest = manifest_of(store, saved["id"])
    # Nothing vanished is stored (as an empty file or at all), the folder that went
    # with its files went too, and every entry kept still has its folder.
    assert sorted(e.path for e in manifest.files) == ["a.db", "kept", "kept/z.txt", "stay.txt"]

    target = tmp_path / "restored"
    assert (
        cli(
            "--data", str(data), "--store", store, "restore", saved["id"], "--target", str(target)
        ).code
        == 0
    )
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "a.db",
        "kept",
        "kept/z.txt",
        "stay.txt",
    ]
    assert rows(target / "a.db") == rows(data / "a.db")
    assert (target / "kept" / "z.txt").read_text() == "stays\n"


# ------------------------------------------------------------------ unreadable files
def test_an_unreadable_file_is_skipped_with_a_warning_and_the_rest_restores(
    unprivileged: Unprivileged,
) -> None:
    data = readable_tree(unprivileged.root / "data")
    (data / "secret.txt").write_text("not ours to read\n")
    unreadable(data / "secret.txt")
    (data / "locked").mkdir()
    (data / "locked" / "inside.txt").write_text("cannot even be listed\n")
    unreadable(data / "locked")
    raw_name = data / os.fsdecode(b"\xff-raw.bin")  # not UTF-8: still one line of JSON
    raw_name.write_bytes(b"raw")
    unreadable(raw_name)
    where = ("--data", str(data), "--store", unprivileged.store)

    done = unprivileged.run(*where, "backup", "--json")
    assert done.code == 0, done.stderr
    assert "Traceback" not in done.stderr
    saved = json.loads(done.stdout)
    expected = [
        "\\xff-raw.bin: cannot read it (permission denied); it is not in this backup",
        "locked: cannot list this folder (permission denied); its contents are not in this backup",
        "secret.txt: cannot read it (permission denied); it is not in this backup",
    ]
    assert sorted(saved["warnings"]) == expected

    summary = unprivileged.run(*where, "backup")
    assert summary.code == 0, summary.stderr
    for warning in expected:
        assert f"cloudkeep: warning: {warning}" in summary.stderr
    assert "bytes added to the store; 3 warnings (see above)" in summary.stdout

    target = unprivileged.home / "restored"
    restored = unprivileged.run(*where, "restore", saved["id"], "--target", str(target))
    assert restored.code == 0, restored.stderr
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "app.db",
        "locked",
        "notes.txt",
        "sub",
        "sub/photo.bin",
    ]
    assert rows(target / "app.db") == rows(data / "app.db")
    assert (target / "notes.txt").read_bytes() == (data / "notes.txt").read_bytes()
    assert (target / "sub" / "photo.bin").read_bytes() == (data / "sub" / "photo.bin").read_bytes()


def test_the_api_reports_the_warnings_of_a_backup(tmp_path: Path) -> None:
    """A file swapped for a FIFO once scanned cannot be read (and must not hang the backup).

    The server runs as this user: its engine is a spawned interpreter, which
    ``nobody`` may not start here, so the unreadable file is made by the swap.
    """
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "a.db", 50, wal=False)
    (data / "notes.txt").write_text("my notes\n")
    (data / "swapped.txt").write_text("replaced by a FIFO once scanned\n")
    port = free_port()
    log = tmp_path / "server.log"
    store = (tmp_path / "store").as_uri()
    url = f"http://127.0.0.1:{port}"
    warning = "swapped.txt: cannot read it (not a regular file any more); it is not in this backup"
    with (
        log.open("wb") as out,
        reaped(
            subprocess.Popen(
                [*cloudkeep("--data", str(data), "--store", store, "serve"), "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        ) as server,
    ):
        wait_for(lambda: healthy(url), server, "a healthy server")
        app = write_locked(data / "a.db")
        with ThreadPoolExecutor(1) as pool:
            streamed = pool.submit(
                httpx.post,
                f"{url}/backups/create/streamed",
                headers={"Accept": "application/x-ndjson"},
                timeout=120,
            )
            try:
                wait_for(lambda: engine_waits_on(data / "a.db"), server, "engine waiting on a.db")
                (data / "swapped.txt").unlink()
                os.mkfifo(data / "swapped.txt")
            finally:
                app.rollback()
                app.close()
            reply = streamed.result()
        assert reply.status_code == 200, reply.text
        final = json.loads(reply.text.strip().splitlines()[-1])
        assert final["status"] == "COMPLETED", log.read_text()
        assert final["backup"]["warnings"] == [warning]
        sdk = SdkBackupStreamedProgress.from_json(json.dumps(final))  # the SDK still parses it
        assert sdk is not None and sdk.backup is not None and sdk.backup.id == final["backup"]["id"]

        backup_id = final["backup"]["id"]
        status = httpx.get(f"{url}/backup/{backup_id}/creation/status", timeout=30).json()
        assert status["value"] == "COMPLETED" and status["backup"]["warnings"] == [warning]
        listed = httpx.get(f"{url}/backups", timeout=30).json()["iterable"]
        assert [b.get("warnings") for b in listed if b["id"] == backup_id] == [[warning]]
        # The next backup skips the FIFO at the scan (not data): no warnings, no field.
        plain = httpx.post(f"{url}/backups/create", timeout=120)
        assert plain.status_code == 200, plain.text
        assert "warnings" not in plain.json()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert f"backup {backup_id}: {warning}" in log.read_text()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/.well-known/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def engine_waits_on(path: Path) -> bool:
    """Whether some process (the server's engine) holds two descriptors on ``path``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if open_descriptors(int(entry.name), path) >= 2:
                    return True
            except OSError:
                continue
    return False


@pytest.mark.parametrize("source", ["folder", "single file"])
def test_an_unreadable_database_fails_the_backup_clearly(
    unprivileged: Unprivileged, source: str
) -> None:
    data = readable_tree(unprivileged.root / "data")
    unreadable(data / "app.db")
    path = data if source == "folder" else data / "app.db"

    line = one_line_error(
        unprivileged.run("--data", str(path), "--store", unprivileged.store, "backup")
    )
    what = "the database" if source == "folder" else "the data file"
    assert line == f"cloudkeep: error: cannot read {what} {data / 'app.db'}: permission denied"
    listed = unprivileged.run("--store", unprivileged.store, "list", "--json")
    assert listed.code == 0, listed.stderr
    assert json.loads(listed.stdout)["iterable"] == []


# ------------------------------------------------------------------ URI characters
@pytest.mark.parametrize("capture", ["in-place", "backup-api"])
def test_databases_named_with_uri_characters_back_up_without_stray_files(
    tmp_path: Path, cli, capture: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    apps = []
    for number, name in enumerate(URI_NAMES):
        make_db(data / name, 100 + number, wal=True)
        app = sqlite3.connect(f"{(data / name).as_uri()}", uri=True)  # the app, still running
        app.execute("INSERT INTO notes(body) VALUES ('only in the WAL')")
        app.commit()
        apps.append(app)
    before = sorted(p.name for p in data.iterdir())
    assert before == sorted(n + s for n in URI_NAMES for s in ("", "-shm", "-wal"))
    store = (tmp_path / "store").as_uri()
    env = {"CLOUDKEEP_SQLITE_CAPTURE": capture}
    try:
        done = cli("--data", str(data), "--store", store, "backup", "--json", env=env)
        assert done.code == 0, done.stderr
        assert sorted(p.name for p in data.iterdir()) == before  # no `what`, `notes`, `100`
        saved = json.loads(done.stdout)
        assert "warnings" not in saved
        target = tmp_path / "restored"
        restored = cli(
            "--data", str(data), "--store", store, "restore", saved["id"], "--target", str(target)
        )
        assert restored.code == 0, restored.stderr
        assert sorted(p.name for p in target.iterdir()) == sorted(URI_NAMES)
        for name in URI_NAMES:
            assert rows(target / name) == rows(data / name)
            assert rows(target / name)["notes"][-1][1] == "only in the WAL"
    finally:
        for app in apps:
            app.close()


# ------------------------------------------------------------------ scratch copies
def test_a_killed_backups_scratch_is_private_and_removed_at_the_next_start(
    tmp_path: Path, cli, isolated_dirs: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "app.db", 300, wal=False)
    store = (tmp_path / "store").as_uri()
    scratch = isolated_dirs / "cache" / "scratch"
    env = {**os.environ, "CLOUDKEEP_SQLITE_CAPTURE": "backup-api"}  # the copying capture
    argv = cloudkeep("--data", str(data), "--store", store, "backup")

    app = write_locked(data / "app.db")  # holds the copy between its scratch folder and its read
    with reaped(
        subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    ) as backup:
        try:
            ours = f"capture-{backup.pid}-"
            wait_for(
                lambda: (
                    scratch.is_dir() and any(p.name.startswith(ours) for p in scratch.iterdir())
                ),
                backup,
                "scratch folder",
            )
            assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
            (leftover,) = (p for p in scratch.iterdir() if p.name.startswith(ours))
            assert stat.S_IMODE(leftover.stat().st_mode) == 0o700
            backup.kill()
            backup.wait(timeout=60)
        finally:
            app.rollback()
            app.close()
    assert leftover.exists(), "the kill left the capture's folder behind"

    # As an earlier version left it: a loose image, and the folder open to everyone.
    legacy = scratch / "capture-k3x9q2za.db"
    legacy.write_bytes((data / "app.db").read_bytes())
    scratch.chmod(0o755)
    # A backup running beside the next one (this test process is alive) keeps its copy.
    running = scratch / f"capture-{os.getpid()}-live0001"
    running.mkdir(mode=0o700)
    (running / "image.db").write_bytes(b"in use")

    done = cli(
        "--data",
        str(data),
        "--store",
        store,
        "backup",
        "--json",
        env={"CLOUDKEEP_SQLITE_CAPTURE": "backup-api"},
    )
    assert done.code == 0, done.stderr
    assert not leftover.exists()
    assert not legacy.exists()
    assert (running / "image.db").read_bytes() == b"in use"
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    assert sorted(p.name for p in scratch.iterdir()) == [running.name]
    target = tmp_path / "restored"
    saved = json.loads(done.stdout)
    assert (
        cli(
            "--data", str(data), "--store", store, "restore", saved["id"], "--target", str(target)
        ).code
        == 0
    )
    assert rows(target / "app.db") == rows(data / "app.db")
