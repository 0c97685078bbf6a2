"""The wire models must be what the official SDK models parse (and emit) unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pieces_os_client.models.backup import Backup as SdkBackup
from pieces_os_client.models.backup_status import BackupStatus as SdkBackupStatus
from pieces_os_client.models.backup_streamed_progress import (
    BackupStreamedProgress as SdkBackupStreamedProgress,
)
from pieces_os_client.models.backups import Backups as SdkBackups
from pieces_os_client.models.backups_streamed_progress import (
    BackupsStreamedProgress as SdkBackupsStreamedProgress,
)
from pieces_os_client.models.seeded_backup import SeededBackup as SdkSeededBackup

from cloudkeep import wire


@dataclass
class FakeInfo:
    """Duck-typed stand-in for cloudkeep.workspace.BackupInfo (same fields)."""

    id: str
    version: str
    timestamp: str
    bytes: int
    created: datetime
    device_name: str
    platform: str
    warnings: tuple[str, ...] = ()


CREATED = datetime(2026, 11, 26, 23, 30, 5, tzinfo=UTC)
INFO = FakeInfo(
    "0.1.0_20261126T233005Z", "0.1.0", "20261126T233005Z", 12345, CREATED, "laptop", "LINUX"
)


def test_backup_from_info_round_trips_through_sdk_model() -> None:
    backup = wire.backup_from_info(INFO)
    payload = backup.to_json()
    sdk = SdkBackup.from_json(payload)
    assert sdk is not None
    assert sdk.id == INFO.id
    assert sdk.version == "0.1.0"
    assert sdk.timestamp == "20261126T233005Z"
    assert sdk.bytes == 12345
    assert sdk.device_name == "laptop"
    assert sdk.platform.value == "LINUX"
    assert sdk.created.value == CREATED
    assert sdk.created.readable == "Nov 26, 2026 11:30 PM UTC"
    # No nulls on the wire, and the SDK's own serialization parses back into ours.
    assert "schema" not in json.loads(payload)
    assert wire.Backup.model_validate(sdk.to_dict()) == backup


def test_backup_warnings_are_an_extension_the_sdk_ignores() -> None:
    info = FakeInfo(**{**INFO.__dict__, "warnings": ("a.txt: vanished during the backup",)})
    payload = wire.backup_from_info(info).to_json()
    assert json.loads(payload)["warnings"] == ["a.txt: vanished during the backup"]
    sdk = SdkBackup.from_json(payload)
    assert sdk is not None and sdk.id == INFO.id
    assert "warnings" not in wire.backup_from_info(INFO).to_wire()


def test_readable_and_rfc3339_for_non_utc_and_morning_times() -> None:
    plus2 = timezone(timedelta(hours=2))
    stamp = wire.grouped_timestamp(datetime(2026, 1, 5, 10, 7, tzinfo=plus2))
    assert stamp.readable == "Jan 5, 2026 8:07 AM UTC"
    value = stamp.to_wire()["value"]
    assert value == "2026-01-05T08:07:00Z"
    assert datetime.fromisoformat(value) == datetime(2026, 1, 5, 8, 7, tzinfo=UTC)
    assert wire.grouped_timestamp(datetime(2026, 1, 5, 0, 0, tzinfo=UTC)).readable == (
        "Jan 5, 2026 12:00 AM UTC"
    )


def test_backups_list_and_empty_list() -> None:
    many = wire.backups_from_infos([INFO, INFO])
    sdk = SdkBackups.from_json(many.to_json())
    assert sdk is not None
    assert [b.id for b in sdk.iterable] == [INFO.id, INFO.id]
    empty = wire.backups_from_infos([])
    assert empty.to_wire() == {"iterable": []}
    sdk_empty = SdkBackups.from_json(empty.to_json())
    assert sdk_empty is not None and sdk_empty.iterable == []


def test_progress_status_and_enum_values_parse_in_sdk() -> None:
    backup = wire.backup_from_info(INFO)
    for status in wire.ModelDownloadProgressStatusEnum:
        progress = wire.BackupStreamedProgress(backup=backup, percentage=42.5, status=status)
        sdk = SdkBackupStreamedProgress.from_json(progress.to_json())
        assert sdk is not None and sdk.status is not None
        assert sdk.status.value == status.value
        assert sdk.percentage == 42.5
    assert wire.ModelDownloadProgressStatusEnum.IN_PROGRESS.value == "IN-PROGRESS"
    failed = wire.BackupStatus(backup=backup, value=wire.BackupStatusEnum.FAILED, reason="boom")
    assert failed.to_wire()["reason"] == "boom"
    sdk_status = SdkBackupStatus.from_json(failed.to_json())
    assert sdk_status is not None and sdk_status.value is not None
    assert sdk_status.value.value == "FAILED"
    assert sdk_status.backup.id == INFO.id
    plural = wire.BackupsStreamedProgress(
        backups=[
            wire.BackupStreamedProgress(status=wire.ModelDownloadProgressStatusEnum.INITIALIZED)
        ],
        restorations=[],
    )
    sdk_plural = SdkBackupsStreamedProgress.from_json(plural.to_json())
    assert sdk_plural is not None and sdk_plural.backups is not None
    assert sdk_plural.backups[0].status is not None
    assert sdk_plural.backups[0].status.value == "INITIALIZED"
    assert sdk_plural.restorations == []


def test_schema_alias_both_ways() -> None:
    schema = {"migration": 0, "semantic": "MAJOR_0_MINOR_0_PATCH_1"}
    seeded = wire.SeededBackup.model_validate({"schema": schema})
    assert seeded.schema_ is not None and seeded.schema_.migration == 0
    assert seeded.to_wire() == {"schema": schema}
    sdk = SdkSeededBackup.from_json(seeded.to_json())
    assert sdk is not None and sdk.var_schema is not None
    assert sdk.var_schema.semantic.value == "MAJOR_0_MINOR_0_PATCH_1"
    assert wire.SeededBackup().to_wire() == {}


@pytest.mark.parametrize(
    "name,expected", [("linux", "LINUX"), ("MACOS", "MACOS"), ("plan9", "UNKNOWN")]
)
def test_platform_names_are_tolerant(name: str, expected: str) -> None:
    info = FakeInfo(**{**INFO.__dict__, "platform": name})
    assert wire.backup_from_info(info).platform.value == expected


def test_percentage_bounds_are_enforced() -> None:
    with pytest.raises(ValueError):
        wire.BackupStreamedProgress(percentage=101)
