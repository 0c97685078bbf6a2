"""Systems without a login service cloudkeep can register (the BSDs and others)."""

from __future__ import annotations

from pathlib import Path

from cloudkeep.platform.service._common import (
    Outcome,
    ServiceSpec,
    ServiceState,
    ServiceUnsupported,
)


class UnsupportedService:
    """Every call says that this system is not supported, and what to do instead."""

    kind = "login service"
    keeps_output = False
    carries_environment = False

    def __init__(self, system: str) -> None:
        self.system = system
        self.location = ""

    def _refuse(self) -> ServiceUnsupported:
        return ServiceUnsupported(
            f"cloudkeep registers login services on Linux (systemd), macOS (launchd) and "
            f"Windows (Task Scheduler), not on {self.system}: start `cloudkeep serve` from "
            "your system's own startup mechanism"
        )

    def interpreter(self, python: str) -> str:
        return python

    def render(self, spec: ServiceSpec) -> str:
        raise self._refuse()

    def install(self, spec: ServiceSpec) -> Outcome:
        raise self._refuse()

    def uninstall(self) -> Outcome:
        raise self._refuse()

    def status(self, log_file: Path, lines: int) -> ServiceState:
        raise self._refuse()
