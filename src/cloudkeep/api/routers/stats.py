"""``GET /cloudkeep/stats``: what the store holds, for cloudkeep's own dashboard.

Not part of the Pieces OS Backups API (its paths stay exact): cloudkeep's own routes
live under ``/cloudkeep/``, behind the same Host, Origin and application-key guard.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from cloudkeep.api.deps import Service
from cloudkeep.api.routers._responses import ENGINE, errors

router = APIRouter(tags=["cloudkeep"])


class DeviceStats(BaseModel):
    """One device's backups in the store."""

    device: str
    backups: int
    #: What its backups uploaded when they were made (sum of their added bytes).
    added_bytes: int
    #: Logical size of its latest backup.
    latest_bytes: int
    latest_id: str


class StoreStats(BaseModel):
    """Bytes as the store lists them; logical bytes as the backups hold them."""

    store_bytes: int
    pack_bytes: int
    index_bytes: int
    backup_bytes: int
    packs: int
    backups: int
    logical_bytes: int
    #: logical_bytes / store_bytes; null for an empty store.
    dedup_ratio: float | None
    devices: list[DeviceStats]
    #: Backups whose manifest does not read (not counted).
    unreadable: list[str]


@router.get(
    "/cloudkeep/stats",
    operation_id="cloudkeep_stats",
    summary="/cloudkeep/stats [GET]",
    description="The store's size (packs, index and backup files), per device the number "
    "of backups, the bytes they added and the size of the latest, and the dedup ratio "
    "(logical bytes of all backups per stored byte). Reads listings and the cached "
    "backup files only, never a pack.",
    response_model=StoreStats,
    responses=errors(*ENGINE),
)
async def stats(service: Service) -> StoreStats:
    figures = await run_in_threadpool(lambda: service.workspace().stats().figures())
    return StoreStats.model_validate(figures)
