"""A new machine in three commands: ``latest``, id prefixes, the data folder a backup came
from, and a restore into this system's Pieces OS folder of an empty home (from S3, through
real CLI processes)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cloudkeep.errors import AmbiguousBackupId, BackupNotFound, InvalidBackupId, UserError
from cloudkeep.platform import SQLITE_IN_PLACE
from cloudkeep.settings import Settings
from cloudkeep.workspace import Workspace
from tests.engine.conftest import PASSPHRASE, folder_state, make_snippets_db

PIECES = (".local", "share", "com.pieces.os", "production")


def _pieces(home: Path) -> Path:
    return home.joinpath(*PIECES)


def _machine(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    store: str,
    device: str,
    data: Path | None = None,
    notices: list[str] | None = None,
) -> Workspace:
    """A device whose home is ``home`` (its config and cache inside it)."""
    monkeypatch.setenv("HOME", str(home))
    environ = {
        "CLOUDKEEP_CONFIG_DIR": str(home / "config"),
        "CLOUDKEEP_CACHE_DIR": str(home / "cache"),
    }
    settings = Settings.resolve(data=data, store=store, device_name=device, environ=environ)
    sink = notices if notices is not None else []
    return Workspace(replace(settings, passphrase=PASSPHRASE), notice=sink.append)


def _data(root: Path, seed: int) -> Path:
    make_snippets_db(root / "notes.db", 40, seed=seed)
    (root / "settings.json").write_text(json.dumps({"seed": seed}))
    return root


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Backups of two devices in one store: laptop (2, oldest first), desk (1, newest)."""
    store = (tmp_path / "store").as_uri()
    laptop = _machine(monkeypatch, tmp_path / "laptop", store, "laptop", _data(tmp_path / "a", 1))
    first = laptop.backup()
    second = laptop.backup()
    desk = _machine(monkeypatch, tmp_path / "desk", store, "desk", _data(tmp_path / "b", 2))
    third = desk.backup()
    return {"store": store, "laptop": [first.id, second.id], "desk": [third.id]}


def test_latest_is_this_devices_newest_else_the_only_devices(
    shared: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = shared["store"]
    laptop = _machine(monkeypatch, tmp_path / "laptop", store, "laptop")
    # Its own newest, though the desk backed up later.
    assert laptop.resolve("latest") == shared["laptop"][1]
    assert laptop.resolve("latest", device="desk") == shared["desk"][0]
    with pytest.raises(BackupNotFound, match=r"'phone'.*'desk', 'laptop'"):
        laptop.resolve("latest", device="phone")
    with pytest.raises(UserError, match="--device chooses among the backups for 'latest'"):
        laptop.resolve(shared["desk"][0], device="desk")

    # A new device on a store two devices share: no guess, the devices are named.
    stranger = _machine(monkeypatch, tmp_path / "new", store, "new")
    with pytest.raises(AmbiguousBackupId) as refused:
        stranger.resolve("latest")
    message = str(refused.value)
    assert "'desk'" in message and "'laptop'" in message and "--device" in message
    assert "\n" not in message

    # With one device's backups only, a new device's latest is that device's newest.
    only = (tmp_path / "only").as_uri()
    _machine(monkeypatch, tmp_path / "o", only, "laptop", _data(tmp_path / "c", 3)).backup()
    newest = _machine(monkeypatch, tmp_path / "o", only, "laptop", tmp_path / "c").backup()
    assert _machine(monkeypatch, tmp_path / "n", only, "new").resolve("latest") == newest.id


def test_ids_and_unique_prefixes_resolve(
    shared: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _machine(monkeypatch, tmp_path / "laptop", shared["store"], "laptop")
    ids = shared["laptop"] + shared["desk"]
    for backup_id in ids:
        assert ws.resolve(backup_id) == backup_id
        # The shortest beginning no other id shares names it.
        length = next(
            n
            for n in range(1, len(backup_id) + 1)
            if sum(other.startswith(backup_id[:n]) for other in ids) == 1
        )
        assert ws.resolve(backup_id[:length]) == backup_id
    common = next(  # the longest beginning every id shares
        ids[0][:n] for n in range(len(ids[0]), 0, -1) if all(i.startswith(ids[0][:n]) for i in ids)
    )
    with pytest.raises(AmbiguousBackupId, match="begins 3 backups") as refused:
        ws.resolve(common)
    assert all(backup_id in str(refused.value) for backup_id in ids)
    with pytest.raises(BackupNotFound, match="cloudkeep list"):
        ws.resolve("9.9.9_1")
    for bad in ("", "../x", "a/b", "x" * 60, "0.1.0_1\n"):
        with pytest.raises(InvalidBackupId):
            ws.resolve(bad)


def test_list_shows_each_backups_data_folder_and_filters_by_device(
    shared: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _machine(monkeypatch, tmp_path / "laptop", shared["store"], "laptop")
    listed = ws.list()
    assert [info.id for info in listed] == [shared["desk"][0], *reversed(shared["laptop"])]
    assert {info.source for info in listed} == {str(tmp_path / "a"), str(tmp_path / "b")}
    assert all(info.added_bytes >= 0 and info.bytes > 0 for info in listed)
    assert [info.id for info in ws.list(device="desk")] == shared["desk"]
    assert ws.list(device="phone") == []


def test_a_new_machine_restores_a_pieces_backup_into_its_own_pieces_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = (tmp_path / "store").as_uri()
    # The source's path is a key holder's text: ending like a Pieces OS folder makes it
    # restorable, but only ever into this machine's own Pieces OS folder.
    elsewhere = _data(tmp_path / "srv" / "com.pieces.os" / "production", 4)
    made = _machine(monkeypatch, tmp_path / "old", store, "old", elsewhere).backup()
    expected = folder_state(elsewhere)

    home = tmp_path / "new-home"
    notices: list[str] = []
    ws = _machine(monkeypatch, home, store, "new", notices=notices)
    assert ws.settings.data is None
    info = ws.restore(ws.resolve("latest"))
    assert info.id == made.id and info.restored_to == str(_pieces(home))
    assert folder_state(_pieces(home)) == expected
    assert any(f"restoring into {_pieces(home)} (the Linux location)" in n for n in notices)
    assert not info.undo_path  # nothing was replaced

    # From now on the folder is found: a second restore replaces it in place (undo kept).
    again = _machine(monkeypatch, home, store, "new", notices=notices)
    assert again.settings.data == _pieces(home)
    replaced = again.restore(made.id)
    assert replaced.undo_path and folder_state(_pieces(home)) == expected


def test_other_backups_need_a_place_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = (tmp_path / "store").as_uri()
    app = _data(tmp_path / "app" / "production", 5)
    made = _machine(monkeypatch, tmp_path / "old", store, "old", app).backup()
    home = tmp_path / "new-home"
    ws = _machine(monkeypatch, home, store, "new")
    with pytest.raises(UserError) as refused:
        ws.restore(made.id)
    message = str(refused.value)
    assert repr(str(app)) in message and "--data" in message and "--target" in message
    assert not _pieces(home).exists()  # nothing made

    # Nor does it go over a Pieces OS folder that was merely found.
    _data(_pieces(home), 6)
    before = folder_state(_pieces(home))
    with pytest.raises(UserError, match="not a Pieces OS data folder"):
        _machine(monkeypatch, home, store, "new").restore(made.id)
    assert folder_state(_pieces(home)) == before

    # Given a place, it goes there.
    target = tmp_path / "copy"
    done = _machine(monkeypatch, home, store, "new").restore(made.id, target=target)
    assert done.restored_to == str(target) and folder_state(target) == folder_state(app)
    chosen = tmp_path / "chosen"
    placed = _machine(monkeypatch, home, store, "new", data=chosen).restore(made.id)
    assert placed.restored_to == str(chosen) and folder_state(chosen) == folder_state(app)


def _files(root: Path) -> dict[str, bytes]:
    """Every file's bytes but SQLite's -wal and -shm companions: a backup holds each
    database as of one transaction (``folder_state`` compares their content), and a
    capture through SQLite's backup API (the portable one) leaves empty companions."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.endswith(("-wal", "-shm"))
    }


@pytest.mark.parametrize(
    "server", ["s3_server", "azurite_server", "gcs_server"], ids=["s3", "azblob", "gcs"]
)
def test_new_machine_restore_from_a_cloud_store_into_an_empty_home(
    cli, server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The README's "Restore on a new machine", as two real machines would run it."""
    store = request.getfixturevalue(server).url_for("new-machine")
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text("a passphrase kept safe\n")
    passphrase_file.chmod(0o600)

    def machine(home: Path, device: str) -> dict[str, str]:
        return {
            "HOME": str(home),
            "CLOUDKEEP_CONFIG_DIR": str(home / "config"),
            "CLOUDKEEP_CACHE_DIR": str(home / "cache"),
            "CLOUDKEEP_STORE": store,
            "CLOUDKEEP_PASSPHRASE_FILE": str(passphrase_file),
            "CLOUDKEEP_DEVICE_NAME": device,
        }

    home_a = tmp_path / "home-a"
    pieces_a = _pieces(home_a)
    make_snippets_db(pieces_a / "pieces.db", 200, seed=7)
    make_snippets_db(pieces_a / "models" / "embeddings.db", 50, seed=8, wal=False)
    (pieces_a / "support" / "settings.json").parent.mkdir(parents=True)
    (pieces_a / "support" / "settings.json").write_text('{"theme": "dark"}')
    a = machine(home_a, "laptop-a")
    assert cli("backup", env=a).code == 0
    make_snippets_db(pieces_a / "pieces.db", 20, seed=9)  # more rows: a newer backup
    newest = cli("backup", "--json", env=a)
    assert newest.code == 0, newest.stderr
    newest_id = json.loads(newest.stdout)["id"]
    expected = _files(pieces_a)

    home_b = tmp_path / "home-b"
    home_b.mkdir()
    b = machine(home_b, "laptop-b")
    listed = cli("list", env=b)
    assert listed.code == 0 and "laptop-a" in listed.stdout and str(pieces_a) in listed.stdout
    restored = cli("restore", "latest", env=b)
    assert restored.code == 0, restored.stderr
    pieces_b = _pieces(home_b)
    assert restored.stdout.strip() == f"restored backup {newest_id} into {pieces_b}"
    assert f"no Pieces OS data folder on this machine: restoring into {pieces_b}" in (
        restored.stderr
    )
    files = _files(pieces_b)
    if SQLITE_IN_PLACE:
        assert files == expected  # byte for byte
    else:  # captured through SQLite's backup API: the same rows (below), new header counters
        assert files.keys() == expected.keys()
        plain = [name for name in expected if not name.endswith(".db")]
        assert [files[name] for name in plain] == [expected[name] for name in plain]
    assert folder_state(pieces_b) == folder_state(pieces_a)

    # Machine B goes on backing up the folder it now has.
    backed = cli("backup", env=b)
    assert backed.code == 0, backed.stderr
    assert f"backing up the Pieces OS data folder {pieces_b}" in backed.stderr
    own = cli("restore", "latest", "--target", str(tmp_path / "check"), "--json", env=b)
    assert own.code == 0 and json.loads(own.stdout)["device_name"] == "laptop-b"
