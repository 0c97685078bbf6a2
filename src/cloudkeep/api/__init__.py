"""The HTTP front end: the Pieces OS Backups API over the cloudkeep engine."""

from cloudkeep.api.app import create_app
from cloudkeep.api.server import serve

__all__ = ["create_app", "serve"]
