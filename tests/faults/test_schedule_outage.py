"""Scheduled backups through a store outage: a real ``cloudkeep serve`` with a
configuration file whose schedule is ``every 2s``, backing up to the moto S3
server behind the fault proxy.

The server backs up on its own; then the proxy refuses everything: the status
names the failure and the unreachable store, the failure command runs once for
the whole outage (it appends a line to a file), the server keeps answering and
never piles up jobs; then the proxy heals and the server catches up with a new
good backup, and the status shows the recovery.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from cloudkeep.config import OnFailure, Schedule, UserConfig, save_config
from tests.faults.fault_helpers import Setup, make_live_db, mutate_db, start_server
from tests.faults.fault_proxy import FORWARD, RESET_BEFORE, FaultProxy
from tests.faults.fault_proxy import Schedule as Faults

WAIT = 120.0  # seconds; only ever reached when something is broken
FAST_FAIL = {
    "CLOUDKEEP_STORE_TIMEOUT": "1",
    "CLOUDKEEP_STORE_RETRIES": "3",
    "CLOUDKEEP_STORE_RETRY_DEADLINE": "3",
}
HOOK = (
    "import os, sys\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(os.environ['CLOUDKEEP_FAILURE_REASON'] + '|' + os.environ['CLOUDKEEP_STORE']"
    " + '|' + os.environ['CLOUDKEEP_BACKUP_TIME'] + '\\n')\n"
)


def _status(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/cloudkeep/status", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _wait(
    http: httpx.Client, server: Any, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.output()
        status = _status(http)
        if check(status):
            return status
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen: {status}\n{server.output()}")


def test_scheduled_backups_survive_an_outage_and_catch_up(
    tmp_path: Path, s3_server: Any, rng: random.Random
) -> None:
    prefix = f"schedule-{rng.randrange(16**8):08x}"
    faults = Faults(lambda _n, _m, _p: FORWARD)
    port = int(urlparse(s3_server.endpoint).port or 80)
    marker = tmp_path / "hook.log"
    with FaultProxy(port, faults) as proxy:
        url = s3_server.url_for(prefix).replace(s3_server.endpoint, proxy.endpoint())
        device = Setup(tmp_path / "device", tmp_path / "production", url, extra_env=FAST_FAIL)
        device.root.mkdir()
        make_live_db(device.data / "snippets.db", 2, seed=rng.randint(0, 10**6))
        save_config(
            device.root / "config",
            UserConfig(
                schedule=Schedule.parse("every 2s", "0s"),
                on_failure=OnFailure(command=(sys.executable, "-c", HOOK, str(marker))),
            ),
        )
        server = start_server(device)
        try:
            with httpx.Client(base_url=server.url) as http:
                # It backs up on its own.
                first = _wait(
                    http, server, lambda s: s["last_backup"] is not None, "a scheduled backup"
                )["last_backup"]["id"]

                # Outage: every request is refused; the data changes, so runs must back up.
                faults.decide = lambda _n, _m, _p: RESET_BEFORE
                mutate_db(device.data / "snippets.db", rng, rows=50)
                jobs_seen: list[int] = []

                def three_failures(status: dict[str, Any]) -> bool:
                    # No pile-up: never more than the one scheduled job at a time.
                    active = http.get("/backups/streamed/progress", timeout=10).json()
                    jobs_seen.append(len(active.get("backups") or []))
                    failures = (status["last_failure"] or {}).get("consecutive_failures", 0)
                    return bool(failures >= 3)

                down = _wait(http, server, three_failures, "three failed runs")
                assert max(jobs_seen) <= 1, jobs_seen
                assert down["store_unreachable_since"] is not None
                assert "unreachable" in down["last_failure"]["reason"], down
                assert down["last_run"]["outcome"] == "failed"
                assert httpx.get(f"{server.url}/.well-known/health", timeout=5).text == "ok"
                lines = marker.read_text().splitlines()
                assert len(lines) == 1, lines  # once for the whole outage
                reason, store, when = lines[0].split("|")
                assert "unreachable" in reason and "127.0.0.1" in store and when
                shown = device.run("status", "--offline")
                assert shown.returncode == 0, shown.stderr
                assert "unreachable" in shown.stdout and "in a row" in shown.stdout, shown.stdout

                # Healed: the server catches up with a new good backup.
                faults.decide = lambda _n, _m, _p: FORWARD
                healed = _wait(
                    http,
                    server,
                    lambda s: (
                        s["last_run"]["outcome"] == "backed_up"
                        and s["store_unreachable_since"] is None
                    ),
                    "a backup after the outage",
                )
                assert healed["last_failure"]["consecutive_failures"] == 0
                latest = healed["last_backup"]["id"]
                assert latest != first
        finally:
            server.stop()
    assert len(marker.read_text().splitlines()) == 1
    stored = [
        b.id
        for b in Setup(tmp_path / "direct", device.data, s3_server.url_for(prefix))
        .workspace()
        .list()
    ]
    assert first in stored and latest in stored
    assert "Traceback" not in server.output()
    shown = device.run("status", "--json", "--offline")
    report = json.loads(shown.stdout)
    assert report["last_failure"]["consecutive_failures"] == 0
    assert report["server"] is None  # the server stopped and said so
