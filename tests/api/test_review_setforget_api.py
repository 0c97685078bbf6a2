"""Review of issue 13: the ``/cloudkeep/`` settings endpoints under concurrent requests.

A Pieces client changing the schedule and the retention policy at the same moment
(two PUTs in flight) must end with both changes in the configuration file and in
the server; each request re-reads the file, so unserialized writes lost one.
"""

from __future__ import annotations

import threading

from api_helpers import StartServer

from cloudkeep.config import load_config

ROUNDS = 15


def test_concurrent_schedule_and_retention_changes_are_both_kept(
    start_server: StartServer,
) -> None:
    server = start_server(notes=["a"])
    failures: list[str] = []

    def put_schedules() -> None:
        with server.http() as http:
            for minutes in range(1, ROUNDS + 1):
                done = http.put("/cloudkeep/schedule", json={"schedule": f"every {minutes}m"})
                if done.status_code != 200:
                    failures.append(done.text)

    def put_retentions() -> None:
        with server.http() as http:
            for days in range(1, ROUNDS + 1):
                done = http.put("/cloudkeep/retention", json={"keep_daily": days})
                if done.status_code != 200:
                    failures.append(done.text)

    workers = [threading.Thread(target=put_schedules), threading.Thread(target=put_retentions)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not failures, failures
    config = load_config(server.config_dir)
    assert str(config.schedule) == f"every {ROUNDS}m" and config.retention.daily == ROUNDS
    with server.http() as http:
        assert http.get("/cloudkeep/schedule").json()["schedule"] == f"every {ROUNDS}m"
        assert http.get("/cloudkeep/retention").json()["keep_daily"] == ROUNDS
