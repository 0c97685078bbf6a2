"""Browsing and partial restores against hostile input (issue 14, item 1): paths a user
types that aim outside the backup, a key holder's manifest with an entry beneath a
symlink, and a symlink planted in the live data where a restored folder goes. Nothing
outside the data folder or the target may change; each refusal is one clear line."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cloudkeep.backups.manifest import FileEntry, Manifest
from tests.hostile.conftest import HostileStore, assert_clean_failure
from tests.hostile.test_restore_escape import Victim, attacker_repo, plant
from tests.hostile.test_server import StartServer
from tests.hostile.test_server import start_server as start_server  # the fixture


@pytest.fixture
def victim(tmp_path: Path, guarded_home: Path, cli) -> Victim:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"

    class FileStore:
        url = store.as_uri()

    return Victim(tmp_path, FileStore(), cli, guarded_home)  # type: ignore[arg-type]


# A NUL cannot reach a command line; the API's (tests/api/test_api_browse.py) and the
# engine's (tests/engine/test_restore_include.py) refusals of one are tested there.
BAD_PATHS = {
    "dot-dot": "../../home/.profile",
    "dot-dot inside": "config/../../x",
    "backslash dot-dot": "..\\..\\x",
    "empty segment": "config//app.json",
}


@pytest.mark.parametrize("kind", list(BAD_PATHS))
def test_include_paths_that_leave_the_backup_are_refused(kind: str, victim: Victim) -> None:
    backup_id = victim.backup()
    before = victim.outside()
    for target in (("--target", str(victim.target)), ()):
        refused = victim.run("restore", backup_id, "--include", BAD_PATHS[kind], *target)
        assert_clean_failure(refused, codes=(1,))
        assert "not a path inside a backup" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert victim.outside() == before and not victim.target.exists()
    for command in (("ls", backup_id), ("dump", backup_id)):
        listed = victim.run(*command, BAD_PATHS[kind])
        assert_clean_failure(listed, codes=(1,))


def test_an_absolute_include_is_the_top_of_the_backup_not_this_system(
    victim: Victim, guarded_home: Path
) -> None:
    backup_id = victim.backup()
    before = victim.outside()
    aimed = victim.run("restore", backup_id, "--include", str(guarded_home / ".profile"))
    assert_clean_failure(aimed, codes=(1,))
    assert "is not in backup" in aimed.stderr
    assert victim.outside() == before
    top = victim.run(
        "restore", backup_id, "--include", "/notes.txt", "--target", str(victim.target)
    )
    assert top.code == 0, top.stderr
    assert sorted(p.name for p in victim.target.iterdir()) == ["notes.txt"]


def test_a_manifest_with_an_entry_beneath_a_symlink_is_refused(
    tmp_path: Path,
    hostile_store: HostileStore,
    guarded_home: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    victim = Victim(tmp_path, hostile_store, cli, guarded_home)
    real_id = victim.backup()
    repo = attacker_repo(hostile_store)
    manifest = Manifest.decode(repo.load_file("snapshots", real_id), real_id)
    legit = next(entry for entry in manifest.files if entry.path == "notes.txt")
    forged_id = plant(
        repo,
        manifest,
        [
            FileEntry("ssh", "symlink", 0o777, target=str(guarded_home / ".ssh")),
            replace(legit, path="ssh/id_ed25519", content=list(legit.content)),
        ],
    )
    before = victim.outside()
    for args in (
        ("restore", forged_id, "--include", "ssh/id_ed25519", "--force"),
        ("restore", forged_id, "--include", "ssh", "--target", str(victim.target)),
        ("ls", forged_id, "ssh"),
        ("dump", forged_id, "ssh/id_ed25519"),
    ):
        refused = victim.run(*args)
        assert_clean_failure(refused, codes=(2,))
        assert "unsafe" in refused.stderr and "beneath the symlink" in refused.stderr
    assert victim.outside() == before and not victim.target.exists()
    found = victim.run("find", "id_ed25519")
    assert found.code == 0 and "no entry matches" in found.stdout
    assert f"skipped backup {forged_id}" in found.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_in_place_include_never_writes_through_a_symlink_planted_in_the_data(
    victim: Victim, guarded_home: Path
) -> None:
    """The live ``config`` folder is replaced by a symlink to the user's documents: the
    restore replaces the link by the backed-up folder (the link kept for undo) and
    writes nothing into the documents."""
    import shutil

    backup_id = victim.backup()
    shutil.rmtree(victim.data / "config")
    os.symlink(guarded_home / "documents", victim.data / "config")
    documents = sorted(p.name for p in (guarded_home / "documents").iterdir())
    restored = victim.run("restore", backup_id, "--include", "config/app.json")
    assert restored.code == 0, restored.stderr
    assert sorted(p.name for p in (guarded_home / "documents").iterdir()) == documents
    assert not (victim.data / "config").is_symlink()
    assert (victim.data / "config" / "app.json").read_text() == '{"theme": "dark"}'
    undone = victim.run("restore", "--undo")
    assert undone.code == 0, undone.stderr
    assert os.readlink(victim.data / "config") == str(guarded_home / "documents")
    assert sorted(p.name for p in (guarded_home / "documents").iterdir()) == documents


def test_download_paths_that_leave_the_backup_are_refused(
    start_server: StartServer, guarded_home: Path
) -> None:
    """``..`` however spelled, and absolute paths, name nothing outside the backup: the
    file route answers 400 or 404 in text, never a byte of another file."""
    server = start_server()
    secret = (guarded_home / ".ssh" / "id_ed25519").read_bytes()
    with server.http() as http:
        created = http.post("/backups/create")
        assert created.status_code == 200, created.text
        backup_id = created.json()["id"]
        url = f"/cloudkeep/backups/{backup_id}/file"
        for path in (
            "../../home/.ssh/id_ed25519",
            "notes.db/../../x",
            "..\\..\\x",
            "%2e%2e/%2e%2e/x",
            str(guarded_home / ".ssh" / "id_ed25519"),
        ):
            answer = http.get(url, params={"path": path})
            assert answer.status_code in (400, 404), (path, answer.status_code)
            assert answer.headers["content-type"].startswith("text/plain")
            assert secret not in answer.content
        raw = http.get(f"/cloudkeep/backups/{backup_id}/file?path=..%2F..%2Fx")
        assert raw.status_code == 400 and "'..' segment" in raw.text
        escaped = http.get("/cloudkeep/backups/..%2F..%2Fetc/file", params={"path": "x"})
        assert escaped.status_code == 404
        listed = http.get(f"/cloudkeep/backups/{backup_id}/files", params={"path": "../.."})
        assert listed.status_code == 400
    assert "Traceback" not in server.stderr()
