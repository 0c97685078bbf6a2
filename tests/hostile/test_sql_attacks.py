"""Attacks on querying a backup in place (issue 14, item 3).

A query is the user's text, but the database is a key holder's: neither may reach the
local disk or change anything. The user's queries try ATTACH of local files (plain
paths and URIs naming another VFS), VACUUM INTO, extension loading and every kind of
write; a backed-up database's own schema tries the same through a view. A key holder
substitutes a page of the database with other bytes under its id (a frame whose
member table lies), and writes a manifest whose size disagrees with the chunks: the
query must be refused with one clear line (exit 2, damage), never answered from them.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import apsw
import pytest

from cloudkeep.backups.manifest import FileEntry, Manifest, decode_chunk_list, encode_chunk_list
from cloudkeep.backups.sql import open_database
from cloudkeep.repository.packs import BlobType
from cloudkeep.repository.repository import Repository
from cloudkeep.settings import Settings
from cloudkeep.storage.url import open_store
from cloudkeep.workspace import Workspace
from tests.hostile.conftest import (
    PASSPHRASE,
    CliResult,
    HostileStore,
    assert_clean_failure,
    tree_state,
)

ROWS = 3000


class Victim:
    """A device whose data folder (one database) is backed up; it queries with the CLI."""

    def __init__(self, tmp_path: Path, store_url: str, cli, home: Path) -> None:  # type: ignore[no-untyped-def]
        self.store_url, self.cli, self.home, self.tmp_path = store_url, cli, home, tmp_path
        self.data = tmp_path / "data"
        self.data.mkdir()
        db = sqlite3.connect(self.data / "notes.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany(
            "INSERT INTO notes(body) VALUES (?)", [(f"note {n} " * 30,) for n in range(ROWS)]
        )
        db.execute("CREATE VIEW sneaky AS SELECT load_extension('/tmp/evil.so') AS x")
        db.commit()
        db.close()

    def run(self, *args: str) -> CliResult:
        result: CliResult = self.cli("--data", str(self.data), "--store", self.store_url, *args)
        return result

    def backup(self) -> str:
        done = self.run("backup", "--json")
        assert done.code == 0, done.stderr
        backup_id: str = json.loads(done.stdout)["id"]
        return backup_id

    def local_state(self) -> tuple[dict[str, tuple[int, str]], ...]:
        """Everything a query must leave alone: the home (its cache aside), the data, the
        working folder (the CLI's) with the store and data left out."""
        return (
            tree_state(self.home, skip=(self.home / "cache",)),
            tree_state(self.data),
            tree_state(self.tmp_path, skip=(self.home, self.data, self.tmp_path / "store")),
        )


@pytest.fixture
def victim(tmp_path: Path, guarded_home: Path, cli) -> Victim:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    return Victim(tmp_path, store.as_uri(), cli, guarded_home)


def attacks(home: Path, tmp_path: Path) -> list[str]:
    secret = home / ".ssh" / "id_ed25519"
    planted = tmp_path / "planted.db"
    return [
        f"ATTACH '{secret}' AS s",
        f"ATTACH 'file:{secret}?vfs=unix' AS s",
        f"ATTACH 'file:{secret}?mode=ro&vfs=unix-none' AS s",
        f"ATTACH '{planted}' AS p",
        f"VACUUM INTO '{planted}'",
        f"SELECT load_extension('{tmp_path / 'evil.so'}')",
        f"SELECT readfile('{secret}')",
        f"SELECT writefile('{planted}', 'x')",
        f"PRAGMA temp_store_directory = '{tmp_path}'",
        "PRAGMA temp_store = FILE",
        "PRAGMA query_only = OFF",
        "PRAGMA writable_schema = 1",
        "PRAGMA journal_mode = WAL",
        "CREATE TEMP TABLE t AS SELECT * FROM notes",
        "INSERT INTO notes(body) VALUES ('overwritten')",
        "UPDATE notes SET body = 'overwritten'",
        "DELETE FROM notes",
        "DROP TABLE notes",
        "SELECT x FROM sneaky",  # the backup's own view, calling an unsafe function
    ]


def test_no_query_reaches_the_local_disk_or_writes(victim: Victim, tmp_path: Path) -> None:
    backup_id = victim.backup()
    before = victim.local_state()
    for attack in attacks(victim.home, tmp_path):
        done = victim.run("sql", backup_id, "notes.db", attack)
        assert_clean_failure(done, codes=(1,))
        assert "id_ed25519" not in done.stdout and "BEGIN OPENSSH" not in done.stdout, attack
    assert victim.local_state() == before
    assert not (tmp_path / "planted.db").exists()
    intact = victim.run("sql", backup_id, "notes.db", "SELECT count(*) FROM notes", "--json")
    assert json.loads(intact.stdout)["rows"] == [[ROWS]]


def test_the_shell_is_held_to_the_same(victim: Victim, tmp_path: Path) -> None:
    import subprocess
    import sys

    backup_id = victim.backup()
    before = victim.local_state()
    script = ";\n".join(attacks(victim.home, tmp_path)) + ";\n.quit\n"
    done = subprocess.run(
        [sys.executable, "-m", "cloudkeep", "--data", str(victim.data), "--store",
         victim.store_url, "sql", backup_id, "notes.db"],
        input=script, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == len(attacks(victim.home, tmp_path))
    assert victim.local_state() == before


def test_the_vfs_opens_nothing_but_the_backed_up_file(victim: Victim, tmp_path: Path) -> None:
    """Defence in depth: with the authorizer and the ATTACH limit lifted, the VFS itself
    still opens no other file (ATTACH goes through the main database's VFS)."""
    backup_id = victim.backup()
    target = tmp_path / "attached.db"
    settings = Settings.resolve(data=victim.data, store=victim.store_url)
    ws = Workspace(Settings(**{**settings.__dict__, "passphrase": PASSPHRASE}))
    with ws.reader() as reader:
        entry = next(e for e in ws.manifest(backup_id).files if e.path == "notes.db")
        connection = open_database(reader, entry)
        connection.authorizer = None
        connection.limit(apsw.SQLITE_LIMIT_ATTACHED, 10)
        for name in (target, victim.home / ".ssh" / "id_ed25519"):
            with pytest.raises(apsw.CantOpenError):
                connection.execute(f"ATTACH '{name}' AS other")
        with pytest.raises((apsw.ReadOnlyError, apsw.CantOpenError)):
            connection.execute(f"VACUUM INTO '{target}'")
        with pytest.raises(apsw.ReadOnlyError):
            connection.execute("DELETE FROM notes")
        connection.close()
    assert not target.exists()


# ------------------------------------------------------------- a key holder's data
def attacker_repo(store_url: str) -> Repository:
    repo = Repository.open(open_store(store_url), PASSPHRASE)
    repo.load_index()
    return repo


def plant(repo: Repository, manifest: Manifest, files: list[FileEntry]) -> str:
    """Save ``manifest`` with ``files`` as a new backup, as a key holder can."""
    from cloudkeep.backups.manifest import new_backup_id

    timestamp = str(int(manifest.timestamp) + 1)
    backup_id = new_backup_id(int(timestamp))
    forged = replace(manifest, id=backup_id, timestamp=timestamp, files=files)
    repo.save_file("snapshots", backup_id, forged.encode())
    return backup_id


def substitute(repo: Repository, entry: FileEntry, chunk: int) -> FileEntry:
    """``entry`` with chunk number ``chunk`` named by a new id whose stored frame holds the
    bytes of another chunk (a real page, of the right length): a frame table that lies."""
    chunks = [
        c
        for list_id in entry.content
        for c in decode_chunk_list(repo.read_blob(bytes.fromhex(list_id)))
    ]
    other = (chunk + 1) % len(chunks)
    evil = bytes(repo.read_blob(chunks[other][0]))[: chunks[chunk][1]]  # real pages
    assert len(evil) == chunks[chunk][1]
    claimed = repo.blob_id(b"the page the attacker claims to hold " + bytes([chunk]))
    chunks[chunk] = (claimed, len(evil))
    writer = repo.pack_writer()
    assert writer.claim_new([claimed]) == [0]
    writer.add_claimed(BlobType.DATA, repo.seal_frames([claimed], [evil]))
    raw = encode_chunk_list(chunks)
    list_id = repo.blob_id(raw)
    writer.add(BlobType.TREE, list_id, raw)
    writer.flush()
    writer.close()
    return replace(entry, content=[list_id.hex()])


def notes_entry(store_url: str, backup_id: str) -> tuple[Repository, Manifest, FileEntry]:
    """The attacker's handle on the store, the backup's manifest and its notes.db entry."""
    repo = attacker_repo(store_url)
    manifest = Manifest.decode(repo.load_file("snapshots", backup_id), backup_id)
    (entry,) = [e for e in manifest.files if e.path == "notes.db"]
    return repo, manifest, entry


@pytest.mark.parametrize("where", ["first page", "last page"])
def test_a_substituted_page_is_refused(
    where: str, tmp_path: Path, hostile_store: HostileStore, guarded_home: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    victim = Victim(tmp_path, hostile_store.url, cli, guarded_home)
    real_id = victim.backup()
    repo, manifest, entry = notes_entry(hostile_store.url, real_id)
    chunks = sum(len(decode_chunk_list(repo.read_blob(bytes.fromhex(i)))) for i in entry.content)
    forged = substitute(repo, entry, 0 if where == "first page" else chunks - 1)
    forged_id = plant(repo, manifest, [forged])

    done = victim.run("sql", forged_id, "SELECT count(*), max(length(body)) FROM notes")
    assert_clean_failure(done, codes=(2,))
    assert "notes.db" in done.stderr and "does not match its id" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not done.stdout.strip()
    honest = victim.run("sql", real_id, "SELECT count(*) FROM notes", "--json")
    assert json.loads(honest.stdout)["rows"] == [[ROWS]]


@pytest.mark.parametrize("delta", [-4096, 4096, 1])
def test_a_size_that_disagrees_with_the_chunks_is_refused(
    delta: int, tmp_path: Path, hostile_store: HostileStore, guarded_home: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    victim = Victim(tmp_path, hostile_store.url, cli, guarded_home)
    real_id = victim.backup()
    repo, manifest, entry = notes_entry(hostile_store.url, real_id)
    forged_id = plant(repo, manifest, [replace(entry, size=entry.size + delta)])
    done = victim.run("sql", forged_id, "SELECT count(*) FROM notes")
    assert_clean_failure(done, codes=(2,))
    assert "does not add up" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"plain text, not a database\n" * 300, "does not start with a SQLite header"),
        (b"SQLite format 3\x00" + bytes(range(256)) * 31 + bytes(240), "malformed"),
    ],
    ids=["not sqlite", "a header over garbage"],
)
def test_a_key_holders_forged_database_is_refused_cleanly(
    content: bytes, message: str, tmp_path: Path, guarded_home: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    victim = Victim(tmp_path, (tmp_path / "store").as_uri(), cli, guarded_home)
    real_id = victim.backup()
    repo = attacker_repo(victim.store_url)
    manifest = Manifest.decode(repo.load_file("snapshots", real_id), real_id)
    writer = repo.pack_writer()
    blob_id = repo.blob_id(content)
    writer.add(BlobType.DATA, blob_id, content)
    raw = encode_chunk_list([(blob_id, len(content))])
    list_id = repo.blob_id(raw)
    writer.add(BlobType.TREE, list_id, raw)
    writer.flush()
    writer.close()
    forged = FileEntry("notes.db", "file", size=len(content), sqlite=True, content=[list_id.hex()])
    forged_id = plant(repo, manifest, [forged])
    before = victim.local_state()
    done = victim.run("sql", forged_id, "SELECT count(*) FROM notes")
    assert_clean_failure(done, codes=(1,))
    assert message in done.stderr, done.stderr
    assert victim.local_state() == before
