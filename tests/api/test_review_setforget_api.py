"""Review of issue 13: the ``/cloudkeep/`` settings endpoints.

A Pieces client changing the schedule and the retention policy at the same moment
(two PUTs in flight) must end with both changes in the configuration file and in
the server; each request re-reads the file, so unserialized writes lost one. A
policy with an unlimited count (``keep_daily = "unlimited"``, which setup and
forget accept) is answered, not a 500.
"""

from __future__ import annotations

import threading

import pytest
from api_helpers import StartServer

from cloudkeep.config import UNLIMITED, Retention, UserConfig, load_config, save_config

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


def test_an_unlimited_count_is_answered_and_accepted(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("unlimited")
    save_config(root / "config", UserConfig(retention=Retention(daily=UNLIMITED, weekly=4)))
    server = start_server(root=root, notes=["a"])
    with server.http() as http:
        got = http.get("/cloudkeep/retention")
        assert got.status_code == 200, got.text
        assert (got.json()["keep_daily"], got.json()["keep_weekly"]) == (UNLIMITED, 4)
        put = http.put("/cloudkeep/retention", json={"keep_yearly": UNLIMITED})
        assert put.status_code == 200, put.text
        assert http.put("/cloudkeep/retention", json={"keep_last": -2}).status_code == 422
    assert load_config(server.config_dir).retention == Retention(yearly=UNLIMITED)
