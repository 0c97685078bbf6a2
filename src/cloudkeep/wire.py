"""Wire models of the Pieces OS Backups API, shared by the HTTP server and the CLI's ``--json``.

Field names are exactly those of the official generated SDKs (``pieces-os-client`` 5.0.1),
so their ``from_dict``/``from_json`` accept what we emit unchanged. Serialize with
:meth:`WireModel.to_wire` / :meth:`WireModel.to_json`: by alias (``schema``), no ``None``
fields (the SDK treats absent and null alike but absent is what it emits itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from cloudkeep.platform import system_label

if TYPE_CHECKING:
    from cloudkeep.workspace import BackupInfo

__all__ = [
    "Backup",
    "BackupStatus",
    "BackupStatusEnum",
    "BackupStreamedProgress",
    "Backups",
    "BackupsStreamedProgress",
    "EmbeddedModelSchema",
    "EmbeddedModelSchemaSemanticVersionEnum",
    "GroupedTimestamp",
    "ModelDownloadProgressStatusEnum",
    "PlatformEnum",
    "Score",
    "SeededBackup",
    "WireModel",
    "backup_from_info",
    "backups_from_infos",
    "current_platform",
    "grouped_timestamp",
]


class WireModel(BaseModel):
    """Base: accepts both ``schema`` and ``schema_``, emits by alias, ignores unknown fields.

    Unknown fields are ignored (not rejected) because newer SDKs may add properties.
    """

    model_config = ConfigDict(
        populate_by_name=True,
        serialize_by_alias=True,
        extra="ignore",
        use_enum_values=False,
        # Build validators on first use: the CLI prints one model per run and should
        # not pay ~0.1 s at import for all of them.
        defer_build=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict with wire names and without ``None`` fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        """Compact JSON text with wire names and without ``None`` fields."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


class EmbeddedModelSchemaSemanticVersionEnum(StrEnum):
    UNKNOWN = "UNKNOWN"
    MAJOR_0_MINOR_0_PATCH_1 = "MAJOR_0_MINOR_0_PATCH_1"


class PlatformEnum(StrEnum):
    UNKNOWN = "UNKNOWN"
    WEB = "WEB"
    MACOS = "MACOS"
    LINUX = "LINUX"
    WINDOWS = "WINDOWS"
    FUCHSIA = "FUCHSIA"
    IOS = "IOS"
    ANDROID = "ANDROID"


class ModelDownloadProgressStatusEnum(StrEnum):
    UNKNOWN = "UNKNOWN"
    INITIALIZED = "INITIALIZED"
    IN_PROGRESS = "IN-PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    RESET = "RESET"


class BackupStatusEnum(StrEnum):
    UNKNOWN = "UNKNOWN"
    INITIALIZED = "INITIALIZED"
    IN_PROGRESS = "IN-PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    RESET = "RESET"


class EmbeddedModelSchema(WireModel):
    """Version stamp of a model (database migration + API semantic version)."""

    migration: int
    semantic: EmbeddedModelSchemaSemanticVersionEnum


class GroupedTimestamp(WireModel):
    """A date-time (RFC 3339 ``value``) with a human ``readable`` rendering."""

    value: datetime
    readable: str | None = None
    schema_: EmbeddedModelSchema | None = Field(None, alias="schema")


class Score(WireModel):
    manual: int
    automatic: int
    priority: int | None = None
    reference: int | None = None
    reuse: int | None = None
    searched: int | None = None
    update: int | None = None
    schema_: EmbeddedModelSchema | None = Field(None, alias="schema")


class Backup(WireModel):
    """Metadata needed to retrieve one backup; ``id`` is ``version_timestamp``.

    ``warnings`` is a cloudkeep extension (ignored by the SDKs), present only when
    the backup has some: files it left out (vanished, unreadable) or read while
    they kept changing.
    """

    id: str
    version: str
    timestamp: str
    bytes: int | float
    created: GroupedTimestamp
    device_name: str
    platform: PlatformEnum
    schema_: EmbeddedModelSchema | None = Field(None, alias="schema")
    warnings: list[str] | None = None


class Backups(WireModel):
    iterable: list[Backup]
    indices: dict[str, int] | None = None
    score: Score | None = None
    schema_: EmbeddedModelSchema | None = Field(None, alias="schema")


class SeededBackup(WireModel):
    """Precursor of a Backup; carries no properties today."""

    schema_: EmbeddedModelSchema | None = Field(None, alias="schema")


class BackupStreamedProgress(WireModel):
    """One progress event of a creation or restoration.

    ``reason`` is a cloudkeep extension (ignored by the SDKs): why a job FAILED.
    """

    backup: Backup | None = None
    percentage: float | None = Field(None, ge=0, le=100)
    status: ModelDownloadProgressStatusEnum | None = None
    schema_: EmbeddedModelSchema | None = Field(None, alias="schema")
    reason: str | None = None


class BackupsStreamedProgress(WireModel):
    """Every creation and restoration in progress (pushed on each change)."""

    backups: list[BackupStreamedProgress] | None = None
    restorations: list[BackupStreamedProgress] | None = None
    schema_: EmbeddedModelSchema | None = Field(None, alias="schema")


class BackupStatus(WireModel):
    """State of one creation or restoration.

    ``reason`` is a cloudkeep extension (ignored by the SDKs): why a job FAILED.
    """

    backup: Backup
    percentage: float | None = Field(None, ge=0, le=100)
    value: BackupStatusEnum | None = None
    schema_: EmbeddedModelSchema | None = Field(None, alias="schema")
    reason: str | None = None


def _readable(moment: datetime) -> str:
    """Human text such as ``Nov 26, 2026 11:30 PM UTC`` (no zero padding, like the apps)."""
    utc = moment.astimezone(UTC)
    hour = utc.hour % 12 or 12
    half = "AM" if utc.hour < 12 else "PM"
    return f"{utc:%b} {utc.day}, {utc.year} {hour}:{utc.minute:02d} {half} UTC"


def grouped_timestamp(moment: datetime) -> GroupedTimestamp:
    """Wrap a moment; a naive datetime is taken to be UTC (the engine only makes aware ones)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    utc = moment.astimezone(UTC)
    return GroupedTimestamp(value=utc, readable=_readable(utc))


def current_platform() -> PlatformEnum:
    """The PlatformEnum of this machine (what a backup made here records)."""
    return _platform(system_label())


def _platform(value: str) -> PlatformEnum:
    """Unknown platform names map to UNKNOWN rather than failing a whole listing."""
    try:
        return PlatformEnum(str(value).upper())
    except ValueError:
        return PlatformEnum.UNKNOWN


def backup_from_info(info: BackupInfo) -> Backup:
    """The wire Backup of one engine BackupInfo."""
    return Backup(
        id=info.id,
        version=info.version,
        timestamp=info.timestamp,
        bytes=info.bytes,
        created=grouped_timestamp(info.created),
        device_name=info.device_name,
        platform=_platform(info.platform),
        # Lines from the store may hold lone surrogates, which JSON text cannot.
        warnings=[w.encode("utf-8", "backslashreplace").decode() for w in info.warnings] or None,
    )


def backups_from_infos(infos: Iterable[BackupInfo]) -> Backups:
    """The wire Backups of engine BackupInfos, order kept (the engine lists newest first)."""
    return Backups(iterable=[backup_from_info(info) for info in infos])
