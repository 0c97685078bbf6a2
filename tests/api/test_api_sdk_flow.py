"""Every BackupsApi / BackupApi / WellKnownApi call the official Python SDK can make,
against a real server process, asserting on the returned models and on the database."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from api_helpers import ApiServer, StartServer, cli_env, make_notes_db, read_notes
from pieces_os_client.exceptions import ApiException
from pieces_os_client.models.backup import Backup as SdkBackup
from pieces_os_client.models.seeded_backup import SeededBackup as SdkSeededBackup

from cloudkeep import __version__

BACKUP_ID = re.compile(r"^\d+\.\d+\.\d+_\d+$")
ORIGINAL = ["buy milk", "call Ada", "ship cloudkeep"]


@pytest.fixture
def server(start_server: StartServer) -> ApiServer:
    return start_server(notes=ORIGINAL)


def test_well_known_health_and_version(server: ApiServer) -> None:
    well_known = server.well_known_api()
    assert well_known.get_well_known_health() == "ok"
    assert well_known.get_well_known_version() == __version__
    with server.http() as http:
        head = http.head("/.well-known/health")  # what the SDK wrapper's port scan sends
    assert head.status_code == 200
    assert head.content == b""


def test_empty_store_lists_nothing_at_once(server: ApiServer) -> None:
    started = time.monotonic()
    listing = server.backups_api().backups_snapshot()
    assert listing.iterable == []
    assert time.monotonic() - started < 2.0
    assert not (server.store_dir / "config").exists()  # listing does not create a repository


def test_create_list_get_restore_delete_with_sdk(server: ApiServer) -> None:
    backups = server.backups_api()
    backup = server.backup_api()

    created = backups.backups_create_new_backup()
    assert isinstance(created, SdkBackup)
    assert BACKUP_ID.match(created.id)
    assert created.version == __version__
    assert created.id == f"{created.version}_{created.timestamp}"
    assert created.bytes > 0
    assert created.device_name == "api-test-device"
    assert created.platform.value == "LINUX"
    assert created.created.readable and created.created.readable.endswith("UTC")

    listing = backups.backups_snapshot()
    assert [b.id for b in listing.iterable] == [created.id]
    fetched = backup.backup_specific_backup_snapshot(created.id)
    assert fetched == created

    status = backup.backup_specific_creation_status(created.id)
    assert status.backup.id == created.id
    assert status.value is not None and status.value.value == "COMPLETED"
    assert status.percentage == 100

    # Damage the live database, then restore the backup over it.
    make_notes_db(server.db_path, ["overwritten"])
    assert read_notes(server.db_path) == ["overwritten"]
    restored = backup.backup_restore_specific_backup(created.id)
    assert restored.id == created.id
    assert read_notes(server.db_path) == ORIGINAL
    restoration = backup.backup_specific_restoration_status(created.id)
    assert restoration.value is not None and restoration.value.value == "COMPLETED"
    assert restoration.percentage == 100

    # A second, streamed creation (the SDK sends Accept: application/json).
    make_notes_db(server.db_path, [*ORIGINAL, "fourth"])
    progress = backups.backups_create_new_backup_streamed(seeded_backup=SdkSeededBackup())
    assert progress.status is not None and progress.status.value == "COMPLETED"
    assert progress.percentage == 100
    assert progress.backup is not None and progress.backup.id != created.id
    second = progress.backup
    assert [b.id for b in backups.backups_snapshot().iterable] == [second.id, created.id]

    # Restore the first one with the streamed call, passing the Backup as body.
    progress = backup.backup_restore_specific_backup_streamed(created.id, backup2=fetched)
    assert progress.status is not None and progress.status.value == "COMPLETED"
    assert progress.backup is not None and progress.backup.id == created.id
    assert read_notes(server.db_path) == ORIGINAL

    # Cancels of finished jobs are accepted and change nothing.
    backup.backup_specific_creation_cancel(second.id)
    backup.backup_specific_restoration_cancel(created.id)
    assert backup.backup_specific_creation_status(second.id).value.value == "COMPLETED"

    # Delete (with and without a body) and check it is gone everywhere.
    backups.backups_delete_specific_backup(created.id, backup2=fetched)
    assert [b.id for b in backups.backups_snapshot().iterable] == [second.id]
    with pytest.raises(ApiException) as missing:
        backup.backup_specific_backup_snapshot(created.id)
    assert missing.value.status == 404
    assert created.id in (missing.value.body or "")
    backups.backups_delete_specific_backup(second.id)
    assert backups.backups_snapshot().iterable == []
    # The restored data survives deleting the backups it came from.
    assert read_notes(server.db_path) == ORIGINAL


def test_status_of_a_never_restored_backup_is_unknown(server: ApiServer) -> None:
    created = server.backups_api().backups_create_new_backup()
    status = server.backup_api().backup_specific_restoration_status(created.id)
    assert status.backup.id == created.id
    assert status.value is not None and status.value.value == "UNKNOWN"


def test_sdk_errors_for_unknown_ids(server: ApiServer) -> None:
    backup = server.backup_api()
    unknown = "0.1.0_1234567890"
    calls = [
        lambda: backup.backup_specific_backup_snapshot(unknown),
        lambda: backup.backup_restore_specific_backup(unknown),
        lambda: backup.backup_restore_specific_backup_streamed(unknown),
        lambda: backup.backup_specific_creation_status(unknown),
        lambda: backup.backup_specific_restoration_status(unknown),
        lambda: backup.backup_specific_creation_cancel(unknown),
        lambda: backup.backup_specific_restoration_cancel(unknown),
        lambda: server.backups_api().backups_delete_specific_backup(unknown),
    ]
    for call in calls:
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 404
        assert "text/plain" in (error.value.headers or {}).get("content-type", "")
    # Nothing was restored over the live data by the failed calls.
    assert read_notes(server.db_path) == ORIGINAL


def test_backups_created_by_the_cli_are_visible(server: ApiServer) -> None:
    """Another process writing the same store: GET /backup finds it, the list catches up."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudkeep",
            "--data",
            str(server.data_dir),
            "--store",
            server.store_dir.as_uri(),
            "backup",
            "--json",
        ],
        env=cli_env(server),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    cli_backup = SdkBackup.from_json(result.stdout)
    assert cli_backup is not None
    fetched = server.backup_api().backup_specific_backup_snapshot(cli_backup.id)
    assert fetched.id == cli_backup.id
    assert fetched.bytes == cli_backup.bytes
    # Finding it in the store makes the cached list catch up in the background.
    deadline = time.monotonic() + 10
    listed: list[str] = []
    while time.monotonic() < deadline and cli_backup.id not in listed:
        listed = [b.id for b in server.backups_api().backups_snapshot().iterable]
        time.sleep(0.05)
    assert cli_backup.id in listed


def test_sdk_websocket_methods_over_plain_http(server: ApiServer) -> None:
    """The generated SDK calls the WebSocket paths with a plain GET."""
    feed = server.backups_api().backups_streamed_progress()
    assert feed.backups == [] and feed.restorations == []
    with pytest.raises(ApiException) as creation:
        server.backups_api().backups_create_new_backup_streamed_websocket()
    assert creation.value.status == 426
    assert "WebSocket" in (creation.value.body or "")
    with pytest.raises(ApiException) as restoration:
        server.backup_api().backup_restore_specific_backup_streamed_websocket("0.1.0_1")
    assert restoration.value.status == 426
    assert server.backups_api().backups_snapshot().iterable == []  # nothing was started
