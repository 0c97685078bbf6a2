"""Issue 11, item 1: names and values from the store never become local paths.

A keyless attacker who can write the bucket plants objects whose names climb
out of their folder (``snapshots/../../../../<home>/.ssh/id_ed25519``), names
of the wrong shape, and on a folder store symlinks and FIFOs pointing out of it,
or rewrites the repository id in the config. Every command of the victim must
leave the home untouched, skip the planted names (reporting them), never delete
them, and keep working on the real backups.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from cloudkeep.backups.manifest import BACKUP_ID
from cloudkeep.repository.untrusted import BACKUP_ID_NAME
from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace
from tests.hostile.conftest import FolderRaw, HostileStore, assert_clean_failure, tree_state

KINDS = ("snapshots", "index", "keys", "locks", "data")


def make_data(folder: Path, rows: int = 200) -> Path:
    """A data folder with one SQLite database of ``rows`` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "app.db") as db:
        db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany(
            "INSERT INTO notes (body) VALUES (?)", [(f"note {n} " * 20,) for n in range(rows)]
        )
    return folder


def rows_of(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT id, body FROM notes ORDER BY id").fetchall()


def backup_id(stdout: str) -> str:
    """The id in ``backup``'s summary line ("backup <id> of ...")."""
    return stdout.split()[1]


def own_folders(home: Path) -> tuple[Path, ...]:
    """cloudkeep's own cache and settings folders in the test's home."""
    return (home / "cache", home / "config")


def climbing_names(home: Path) -> list[str]:
    """Names that climb from each kind's folder (and from a cache folder below it) to the key."""
    key = home / ".ssh" / "id_ed25519"
    names = []
    for kind in KINDS:
        folder = "data/ab" if kind == "data" else kind
        names += [
            f"{folder}/../../../../.ssh/id_ed25519",
            f"{folder}/{'../' * 24}{str(key).lstrip('/')}",
        ]
    return names


def odd_names() -> list[str]:
    """Names a listing can produce on any store that no cloudkeep object has."""
    hex64 = "ab" + "c" * 62
    return [
        "snapshots/0.1.0_1\\..\\..\\x",
        "snapshots/0.1.0_1.tmp",
        "snapshots/" + "A" * 40,
        "index/" + "A" * 32,
        "index/" + "a" * 31,
        "keys/" + "b" * 33,
        "locks/" + "c" * 32 + ".old",
        "data/cd/" + hex64,  # folder does not match the id
        "data/ab/" + hex64[:-1],
        "data/" + hex64,
    ]


def plant_links(root: Path, home: Path) -> list[Path]:
    """Folder store: symlinks out of the store under valid names, a linked folder, a FIFO."""
    key = home / ".ssh" / "id_ed25519"
    planted = {
        root / "snapshots" / "0.0.1_1": key,
        root / "index" / ("1" * 32): key,
        root / "keys" / ("2" * 32): key,
        root / "locks" / ("3" * 32): key,
        root / "data" / "ab" / ("ab" + "4" * 62): home / ".profile",
        root / "snapshots" / "linked": home / ".ssh",
    }
    for link, target in planted.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    fifo = root / "locks" / ("5" * 32)
    os.mkfifo(fifo)
    return [*planted, fifo]


def test_backup_id_pattern_is_the_manifests() -> None:
    """The repository layer's copy of the backup id pattern is the manifest's."""
    assert BACKUP_ID_NAME.pattern.strip("^$") == BACKUP_ID.pattern.strip("^$")


def test_planted_names_never_reach_the_home(
    hostile_store: HostileStore, guarded_home: Path, cli, tmp_path: Path
) -> None:
    """list, backup, restore, check and delete with names planted under every kind."""
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": hostile_store.url, "CLOUDKEEP_DATA": str(data)}
    first = cli("backup", env=env)
    assert first.code == 0, first.stderr
    make_data(data, rows=50)
    second = cli("backup", env=env)
    assert second.code == 0, second.stderr
    assert cli("list", env=env).code == 0  # the cache holds manifests from now on

    planted = odd_names()
    if hostile_store.kind == "s3":
        planted += climbing_names(guarded_home)
    for name in planted:
        hostile_store.raw.put(name, b"-----BEGIN OPENSSH PRIVATE KEY-----\nplanted\n")
    raw = hostile_store.raw
    links = plant_links(raw.root, guarded_home) if isinstance(raw, FolderRaw) else []
    before = tree_state(guarded_home, skip=own_folders(guarded_home))

    listed = cli("list", "--json", env=env)
    assert listed.code == 0, listed.stderr
    ids = {entry["id"] for entry in json.loads(listed.stdout)["iterable"]}
    assert ids == {backup_id(first.stdout), backup_id(second.stdout)}
    assert "ignored" in listed.stderr and "Traceback" not in listed.stderr
    assert "\\\\..\\\\..\\\\x" in listed.stderr  # the odd name, shown escaped

    third = cli("backup", env=env)
    assert third.code == 0, third.stderr
    restored = cli("restore", backup_id(second.stdout), "--target", str(tmp_path / "out"), env=env)
    assert restored.code == 0, restored.stderr
    assert rows_of(tmp_path / "out" / "app.db") == rows_of(data / "app.db")
    checked = cli("check", env=env)
    assert checked.code == 0, checked.stdout + checked.stderr
    assert "ignored" in checked.stderr
    deleted = cli("delete", backup_id(first.stdout), env=env)
    assert deleted.code == 0, deleted.stderr

    assert tree_state(guarded_home, skip=own_folders(guarded_home)) == before
    assert (guarded_home / ".ssh" / "id_ed25519").read_text().endswith("secret\n")
    # Never deleted either: what is not ours stays where the attacker put it.
    for name in planted:
        assert hostile_store.raw.get(name).endswith(b"planted\n"), name
    for link in links:
        assert os.path.lexists(link), link


def test_a_crafted_repository_id_names_no_local_folder(
    hostile_store: HostileStore, guarded_home: Path, cli, tmp_path: Path
) -> None:
    """The config's id once named the cache folder: an id naming a user folder got it pruned."""
    work = guarded_home / "work"
    for kind in ("snapshots", "index"):
        (work / kind).mkdir(parents=True)
        (work / kind / "plan.txt").write_text(f"the user's own {kind} notes\n")
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": hostile_store.url, "CLOUDKEEP_DATA": str(data)}
    assert cli("backup", env=env).code == 0
    before = tree_state(guarded_home, skip=own_folders(guarded_home))

    for crafted in (str(work), "../../work", "../" * 12 + str(work).lstrip("/")):
        config = json.loads(hostile_store.raw.get("config"))
        config["id"] = crafted
        hostile_store.raw.put("config", json.dumps(config).encode())
        result = cli("list", env=env)
        if result.code != 0:  # refused as unauthentic: as good, if said clearly
            assert_clean_failure(result)
        assert tree_state(guarded_home, skip=own_folders(guarded_home)) == before, crafted
    # Whatever the config says, the cache holds only folders named by a hash.
    for entry in (guarded_home / "cache" / "repositories").iterdir():
        assert len(entry.name) == 64 and set(entry.name) <= set("0123456789abcdef")


def test_workspace_list_reports_planted_names_through_its_notices(
    hostile_store: HostileStore, guarded_home: Path, tmp_path: Path
) -> None:
    """The API lists through ``Workspace.list``: it skips the names and says so, once each."""
    data = make_data(tmp_path / "data")
    settings = Settings.resolve(data=data, store=hostile_store.url)
    notices: list[str] = []
    workspace = Workspace(settings, notice=notices.append)
    saved = workspace.backup()
    hostile_store.raw.put("snapshots/0.1.0_1\x1b[2J", b"planted")
    if hostile_store.kind == "s3":
        hostile_store.raw.put("snapshots/../../../../.ssh/id_ed25519", b"planted")
    before = tree_state(guarded_home, skip=own_folders(guarded_home))
    assert [info.id for info in workspace.list()] == [saved.id]
    warnings = [n for n in notices if "ignored" in n]
    assert len(warnings) == (2 if hostile_store.kind == "s3" else 1), notices
    assert all("\x1b" not in n for n in warnings)  # no terminal escapes from the store
    assert tree_state(guarded_home, skip=own_folders(guarded_home)) == before


def test_a_store_folder_replaced_by_a_symlink_is_not_followed(
    guarded_home: Path, cli, tmp_path: Path
) -> None:
    """Folder store: ``snapshots``, ``locks``, ``index`` or ``data`` made a link out of it."""
    store = tmp_path / "store"
    data = make_data(tmp_path / "data")
    env = {"CLOUDKEEP_STORE": store.as_uri(), "CLOUDKEEP_DATA": str(data)}
    saved = cli("backup", env=env)
    assert saved.code == 0, saved.stderr
    aside = tmp_path / "aside"
    aside.mkdir()
    for kind in ("data", "index", "locks", "snapshots"):
        (store / kind).mkdir(exist_ok=True)
        (store / kind).rename(aside / kind)
        (store / kind).symlink_to(guarded_home / "documents")
        before = tree_state(guarded_home, skip=own_folders(guarded_home))
        for command in (
            ("backup",),
            ("list",),
            ("restore", backup_id(saved.stdout), "--target", str(tmp_path / f"out-{kind}")),
            ("check",),
        ):
            result = cli(*command, env=env)
            if result.code != 0:
                assert_clean_failure(result)
            assert tree_state(guarded_home, skip=own_folders(guarded_home)) == before, command
        (store / kind).unlink()
        (aside / kind).rename(store / kind)
    assert (guarded_home / "documents" / "thesis.txt").read_text() == "four years of work\n"
