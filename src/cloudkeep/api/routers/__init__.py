"""One router per resource of the Pieces OS API (Backups, Backup, WellKnown), and
cloudkeep's own endpoints under ``/cloudkeep/``."""

from cloudkeep.api.routers.backup import router as backup_router
from cloudkeep.api.routers.backups import router as backups_router
from cloudkeep.api.routers.cloudkeep import router as cloudkeep_router
from cloudkeep.api.routers.well_known import router as well_known_router

__all__ = ["backup_router", "backups_router", "cloudkeep_router", "well_known_router"]
