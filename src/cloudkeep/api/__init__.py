"""The HTTP front end: the Pieces OS Backups API over the cloudkeep engine.

``create_app`` and ``serve`` are imported on first use: the engine process imports
``cloudkeep.api.runner`` only, and the web framework would cost it ~30 MiB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudkeep.api.app import create_app
    from cloudkeep.api.server import serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from cloudkeep.api.app import create_app

        return create_app
    if name == "serve":
        from cloudkeep.api.server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
