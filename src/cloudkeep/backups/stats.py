"""What the store holds: its size, what each device's backups added, the dedup ratio.

Cheap: listings (packs, index files, backup files with their sizes) and the
manifests, which the metadata cache keeps locally; no pack is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudkeep.backups.catalog import load_manifests
from cloudkeep.backups.forget import record_of
from cloudkeep.repository.repository import Repository

__all__ = ["DeviceStats", "StoreStats", "store_stats"]


@dataclass(frozen=True)
class DeviceStats:
    """One device's backups: how many, what they uploaded, and its latest backup."""

    device: str
    backups: int
    #: Sum of what each of its backups uploaded (new packs) when it was made.
    added_bytes: int
    #: Logical size (bytes of the data folder) of its latest backup.
    latest_bytes: int
    latest_id: str


@dataclass(frozen=True)
class StoreStats:
    """Bytes as the store lists them; logical bytes as the backups hold them."""

    pack_bytes: int
    index_bytes: int
    backup_bytes: int
    packs: int
    backups: int
    #: Sum of the logical sizes of all backups.
    logical_bytes: int
    devices: tuple[DeviceStats, ...]
    #: Backups whose manifest does not read (not counted in the logical figures).
    unreadable: tuple[str, ...]

    @property
    def store_bytes(self) -> int:
        """Packs + index files + backup files."""
        return self.pack_bytes + self.index_bytes + self.backup_bytes

    @property
    def dedup_ratio(self) -> float | None:
        """Logical bytes of all backups per stored byte; None for an empty store."""
        return self.logical_bytes / self.store_bytes if self.store_bytes else None

    def figures(self) -> dict[str, object]:
        """JSON-ready figures (``stats --json`` and ``GET /cloudkeep/stats``)."""
        return {
            "store_bytes": self.store_bytes,
            "pack_bytes": self.pack_bytes,
            "index_bytes": self.index_bytes,
            "backup_bytes": self.backup_bytes,
            "packs": self.packs,
            "backups": self.backups,
            "logical_bytes": self.logical_bytes,
            "dedup_ratio": self.dedup_ratio,
            "devices": [
                {
                    "device": device.device,
                    "backups": device.backups,
                    "added_bytes": device.added_bytes,
                    "latest_bytes": device.latest_bytes,
                    "latest_id": device.latest_id,
                }
                for device in self.devices
            ],
            "unreadable": list(self.unreadable),
        }


def store_stats(repo: Repository) -> StoreStats:
    """The figures of ``repo`` as listed now."""
    packs = repo.list_packs()
    index_sizes = repo.file_sizes("index")
    backup_sizes = repo.file_sizes("snapshots")
    manifests, unreadable = load_manifests(repo)
    devices: dict[str, list[int]] = {}
    latest: dict[str, tuple[int, str, int]] = {}
    for manifest in manifests:
        totals = devices.setdefault(manifest.device_name, [0, 0])
        totals[0] += 1
        totals[1] += manifest.added_bytes
        moment = int(record_of(manifest).time.timestamp() * 1_000_000)
        newest = latest.get(manifest.device_name)
        if newest is None or (moment, manifest.id) > newest[:2]:
            latest[manifest.device_name] = (moment, manifest.id, manifest.bytes)
    return StoreStats(
        pack_bytes=sum(info.size for info in packs.values()),
        index_bytes=sum(index_sizes.values()),
        backup_bytes=sum(backup_sizes.values()),
        packs=len(packs),
        backups=len(manifests),
        logical_bytes=sum(manifest.bytes for manifest in manifests),
        devices=tuple(
            DeviceStats(
                device=name,
                backups=count,
                added_bytes=added,
                latest_bytes=latest[name][2],
                latest_id=latest[name][1],
            )
            for name, (count, added) in sorted(devices.items())
        ),
        unreadable=tuple(sorted(unreadable)),
    )
