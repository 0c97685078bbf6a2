"""``cloudkeep diff`` end to end: real backups in a folder store, the CLI as a child
process, and SQLite's sqldiff on the two backups restored as the anchor."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from sqldiff_anchor import sqldiff

PASSPHRASE = "correct horse battery staple"


class Cli:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.store = (root / "store").as_uri()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
        self.env.update(
            CLOUDKEEP_CONFIG_DIR=str(root / "config"),
            CLOUDKEEP_CACHE_DIR=str(root / "cache"),
            CLOUDKEEP_PASSPHRASE=PASSPHRASE,
            CLOUDKEEP_DEVICE_NAME="diff-test",
            HOME=str(root / "home"),
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cloudkeep", "--data", str(self.data)]
        command += ["--store", self.store, *args]
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=180, check=False
        )
        if check and done.returncode:
            raise AssertionError(f"{args} exit {done.returncode}: {done.stderr}")
        return done

    def backup(self) -> str:
        return str(json.loads(self.run("backup", "--json").stdout)["id"])

    def restored(self, backup: str) -> Path:
        target = self.root / f"restored-{backup}"
        self.run("restore", backup, "--target", str(target))
        return target


def _sql(path: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())


def _first_state(data: Path) -> None:
    notes = data / "notes.db"
    _sql(
        notes,
        "PRAGMA journal_mode=WAL",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT, pic BLOB)",
        "CREATE TABLE tags(name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID",
        "CREATE TABLE plain(a, b)",
    )
    with closing(sqlite3.connect(notes)) as conn, conn:
        conn.executemany(
            "INSERT INTO notes VALUES(?, ?, ?, ?)",
            [(i, f"note {i}", "body " * (i % 7 + 1), bytes(i % 50)) for i in range(1, 4001)],
        )
        conn.executemany(
            "INSERT INTO notes VALUES(?, 'big', ?, zeroblob(30000))",
            [(i, "long " * 3000) for i in range(5001, 5021)],
        )
        conn.executemany("INSERT INTO tags VALUES(?, ?)", [(f"t{i}", i) for i in range(300)])
        conn.executemany("INSERT INTO plain VALUES(?, ?)", [(i, i) for i in range(300)])
    vacuumed = data / "vacuumed.db"
    _sql(vacuumed, "CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT)")
    with closing(sqlite3.connect(vacuumed)) as conn, conn:
        conn.executemany("INSERT INTO items VALUES(?, ?)", [(i, "v" * 300) for i in range(2000)])
    _sql(data / "gone.db", "CREATE TABLE g(x)", "INSERT INTO g VALUES (1), (2)")
    (data / "readme.txt").write_text("first\n")
    (data / "old.txt").write_text("old\n")
    (data / "script.sh").write_text("echo hi\n")
    (data / "script.sh").chmod(0o644)


def _second_state(data: Path) -> None:
    notes = data / "notes.db"
    _sql(
        notes,
        "UPDATE notes SET title = 'edited' WHERE id IN (10, 2000, 3999)",
        "DELETE FROM notes WHERE id IN (11, 12, 3000)",
        "INSERT INTO notes VALUES(9000, 'new', 'fresh', NULL)",
        "UPDATE notes SET body = body || 'more' WHERE id = 5003",
        "DELETE FROM notes WHERE id = 5010",
        "UPDATE tags SET n = -1 WHERE name = 't5'",
        "INSERT INTO tags VALUES('zz', 1)",
        "ALTER TABLE plain ADD COLUMN c",
        "UPDATE plain SET c = 'x' WHERE a = 7",
        "CREATE TABLE added(x)",
        "INSERT INTO added VALUES (1)",
    )
    _sql(
        data / "vacuumed.db",
        "DELETE FROM items WHERE id % 2 = 0",
        "UPDATE items SET v = 'w' WHERE id = 5",
        "VACUUM",
    )
    (data / "gone.db").unlink()
    _sql(data / "new.db", "CREATE TABLE n(x)", "INSERT INTO n VALUES (1)")
    (data / "readme.txt").write_text("second, longer\n")
    (data / "old.txt").unlink()
    (data / "script.sh").chmod(0o755)


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cli, str, str]:
    cli = Cli(tmp_path_factory.mktemp("diff"))
    _first_state(cli.data)
    first = cli.backup()
    _second_state(cli.data)
    second = cli.backup()
    return cli, first, second


def test_diff_agrees_with_sqldiff_on_the_restored_backups(backups: tuple[Cli, str, str]) -> None:
    cli, first, second = backups
    report = json.loads(cli.run("diff", first, second, "--json").stdout)
    assert (report["a"], report["b"]) == (first, second)
    files = report["files"]
    assert [f["path"] for f in files["added"]] == ["new.db"]
    assert [f["path"] for f in files["removed"]] == ["gone.db", "old.txt"]
    changed = {f["path"]: f for f in files["changed"]}
    assert changed["readme.txt"]["size_a"] == 6 and changed["readme.txt"]["size_b"] == 15
    assert changed["script.sh"]["changes"] == ["mode"]
    assert (changed["script.sh"]["mode_a"], changed["script.sh"]["mode_b"]) == (
        "-rw-r--r--",
        "-rwxr-xr-x",
    )
    listed = json.loads(cli.run("ls", second, "script.sh", "--json").stdout)["entries"]
    assert listed[0]["mode"] == changed["script.sh"]["mode_b"]  # one way to write a mode

    old, new = cli.restored(first), cli.restored(second)
    empty = cli.root / "empty.db"
    sqlite3.connect(empty).close()
    databases = {d["path"]: d for d in report["databases"]}
    assert set(databases) == {"notes.db", "vacuumed.db", "gone.db", "new.db"}
    for path, database in databases.items():
        a = old / path if (old / path).exists() else empty
        b = new / path if (new / path).exists() else empty
        expected = sqldiff(a, b)
        ours = {t["name"]: (t["added"], t["removed"], t["changed"]) for t in database["tables"]}
        assert ours == {n: (c.added, c.removed, c.changed) for n, c in expected.items()}, path
    notes = databases["notes.db"]
    assert notes["method"] == "pages", notes["reason"]
    assert set(notes["schema_changed"]) == {"added", "plain"}
    tables = {t["name"]: t for t in notes["tables"]}
    assert tables["notes"]["method"] == "pages"
    assert tables["added"]["schema"] == "added" and tables["plain"]["schema"] == "altered"
    assert databases["vacuumed.db"]["method"] == "full"
    assert databases["gone.db"]["status"] == "removed"
    assert databases["new.db"]["status"] == "added"
    # Only what differs was fetched: far less than the databases.
    assert 0 < report["fetched_bytes"] < (old / "notes.db").stat().st_size


def test_rows_and_text_output(backups: tuple[Cli, str, str]) -> None:
    cli, first, second = backups
    report = json.loads(cli.run("diff", first, second, "--rows", "--json").stdout)
    notes = next(d for d in report["databases"] if d["path"] == "notes.db")
    table = next(t for t in notes["tables"] if t["name"] == "notes")
    rows = table["rows"]
    assert sorted(r["key"] for r in rows["changed"]) == [10, 2000, 3999, 5003]
    edited = next(r for r in rows["changed"] if r["key"] == 10)
    assert edited["columns"] == {"title": {"a": "note 10", "b": "edited"}}
    assert [r["key"] for r in rows["added"]] == [9000]
    assert rows["added"][0]["values"]["title"] == "new"
    assert sorted(r["key"] for r in rows["removed"]) == [11, 12, 3000, 5010]
    tags = next(t for t in notes["tables"] if t["name"] == "tags")
    assert tags["rows"]["changed"] == [{"key": "t5", "columns": {"n": {"a": 5, "b": -1}}}]

    common = next(i for i, (x, y) in enumerate(zip(first, second, strict=True)) if x != y)
    text = cli.run("diff", first[: common + 1], "latest", "--rows", "--max-rows", "2").stdout
    assert f"{first} → {second}: 1 added, 2 removed, 4 changed" in text
    assert "+ new.db" in text and "- old.txt" in text and "M script.sh  mode 644 → 755" in text
    assert "notes: 1 added, 4 removed, 4 changed" in text
    assert "    ~ 10 title: 'note 10' → 'edited'" in text
    assert "(more rows: raise --max-rows)" in text


def test_identical_backups_fetch_nothing(backups: tuple[Cli, str, str]) -> None:
    cli, _first, second = backups
    report = json.loads(cli.run("diff", second, second, "--json").stdout)
    assert report["files"] == {"added": [], "removed": [], "changed": []}
    assert report["databases"] == [] and report["fetched_bytes"] == 0


def test_bad_ids(backups: tuple[Cli, str, str]) -> None:
    cli, first, _second = backups
    missing = cli.run("diff", first, "9.9.9_1", check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "no backup" in missing.stderr
    negative = cli.run("diff", first, first, "--max-rows", "-1", check=False)
    assert negative.returncode != 0 and "--max-rows" in negative.stderr


def test_latest_of_another_device(backups: tuple[Cli, str, str], tmp_path: Path) -> None:
    """``diff ID latest --device NAME`` compares with another device's newest backup, as
    ``ls``/``sql``/``restore`` take ``--device``; with two ids ``--device`` is refused."""
    cli, _first, second = backups
    other = tmp_path / "desktop"
    _sql(other / "notes.db", "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT)")
    env = {**cli.env, "CLOUDKEEP_DEVICE_NAME": "desktop"}
    made = subprocess.run(
        [sys.executable, "-m", "cloudkeep", "--data", str(other), "--store", cli.store,
         "backup", "--json"],
        env=env, capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    desktop = json.loads(made.stdout)["id"]
    report = json.loads(cli.run("diff", second, "latest", "--device", "desktop", "--json").stdout)
    assert (report["a"], report["b"]) == (second, desktop)
    assert "notes.db" in [change["path"] for change in report["files"]["changed"]]
    refused = cli.run("diff", second, desktop, "--device", "desktop", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "cloudkeep: error: --device chooses among the backups for 'latest'; an id names one backup"
    ]
