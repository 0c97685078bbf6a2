"""Scheduled backups in a real server process, and the ``/cloudkeep/`` endpoints.

Each test starts ``python -m cloudkeep.api`` (or ``cloudkeep serve``) with a short
schedule (``--schedule "every 1s"``) on a ``file://`` store and watches what it
does through ``GET /cloudkeep/status``, the backup list and ``cloudkeep status``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
from api_helpers import ApiServer, StartServer, cli_env, make_notes_db

from cloudkeep.api.appkeys import create_app_key
from cloudkeep.config import load_config

WAIT = 90.0  # seconds; only ever reached when something is broken


def wait_for(
    server: ApiServer, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll GET /cloudkeep/status until ``check`` holds."""
    deadline = time.monotonic() + WAIT
    status: dict[str, Any] = {}
    with server.http() as http:
        while time.monotonic() < deadline:
            assert server.process.poll() is None, server.log()
            status = http.get("/cloudkeep/status").json()
            if check(status):
                return status
            time.sleep(0.2)
    raise AssertionError(f"{what} did not happen: {status}\n{server.log()}")


def backup_ids(server: ApiServer) -> list[str]:
    with server.http() as http:
        return [b["id"] for b in http.get("/backups").json()["iterable"]]


def outcome(status: dict[str, Any]) -> str | None:
    return (status.get("last_run") or {}).get("outcome")


def test_unchanged_data_is_skipped_and_a_change_is_backed_up(start_server: StartServer) -> None:
    server = start_server(notes=["one"], args=("--schedule", "every 1s"))
    wait_for(server, lambda s: outcome(s) == "skipped", "a skipped run")
    # Runs while the data was changed within the last 2 s back up (a signature that
    # fresh vouches for nothing), so how many came first depends on the pace.
    stored = backup_ids(server)
    assert stored
    # Several more runs, all skipped: no new backup.
    seen: set[str] = set()
    wait_for(
        server,
        lambda s: (
            outcome(s) == "skipped"
            and bool(seen.add(s["last_run"]["time"])) is False
            and len(seen) >= 3
        ),
        "three more skipped runs",
    )
    assert backup_ids(server) == stored
    make_notes_db(server.db_path, ["one", "two"])
    status = wait_for(
        server,
        lambda s: (
            (s["last_backup"] or {}).get("id") not in (None, *stored) and outcome(s) == "backed_up"
        ),
        "a backup of the changed data",
    )
    assert status["last_failure"] is None and status["store_unreachable_since"] is None
    assert status["last_backup"]["id"] in backup_ids(server)
    # The CLI reads the same status from the file while the server runs.
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudkeep",
            "--data",
            str(server.data_dir),
            "--store",
            server.store_dir.as_uri(),
            "status",
            "--json",
        ],
        env={
            **cli_env(server),
            "CLOUDKEEP_CACHE_DIR": str(server.root / "cache"),
            "CLOUDKEEP_DEVICE_NAME": "api-test-device",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["server"]["pid"] == server.process.pid
    assert report["schedule"] == "every 1s" and report["next_run"] is not None
    assert report["last_backup"]["source"] == "store"
    assert report["last_backup"]["id"] in backup_ids(server)
    assert "Traceback" not in server.log()


def _engine_process(server: ApiServer) -> psutil.Process:
    """The server's engine (a spawned multiprocessing child), once it runs."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for child in psutil.Process(server.process.pid).children(recursive=True):
            if "spawn_main" in " ".join(child.cmdline()):
                return child
        time.sleep(0.05)
    raise AssertionError(f"the server has no engine process:\n{server.log()}")


def test_a_running_api_backup_is_joined_not_overlapped(start_server: StartServer) -> None:
    server = start_server(notes=["seed"])  # no schedule yet
    engine = _engine_process(server)
    engine.suspend()  # the API's backup stays IN-PROGRESS for as long as the test needs
    events: list[dict[str, Any]] = []

    def create() -> None:
        headers = {"Accept": "application/x-ndjson"}
        with (
            server.http() as http,
            http.stream("POST", "/backups/create/streamed", headers=headers) as response,
        ):
            for line in response.iter_lines():
                if line.strip():
                    events.append(json.loads(line))

    worker = threading.Thread(target=create)
    worker.start()
    try:
        while not any(e["status"] == "IN-PROGRESS" for e in events):
            assert worker.is_alive(), server.log()
            time.sleep(0.05)
        with server.http() as http:
            put = http.put("/cloudkeep/schedule", json={"schedule": "every 1s", "jitter": "0s"})
            assert put.status_code == 200, put.text
            wait_for(server, lambda s: s["running"], "a scheduled run")
            for _ in range(10):  # runs are due every second: none is queued beside it
                creations = http.get("/backups/streamed/progress").json()["backups"]
                assert len(creations) == 1, creations
                assert http.get("/cloudkeep/status").json()["running"] is True
                time.sleep(0.2)
    finally:
        engine.resume()
    worker.join(WAIT)
    final = events[-1]
    assert final["status"] == "COMPLETED", final
    # The scheduled run waited for the API's backup and counted it as its own.
    status = wait_for(server, lambda s: outcome(s) is not None, "the run's outcome")
    assert status["last_run"]["detail"] == f"backup {final['backup']['id']}", status
    assert status["last_run"]["outcome"] == "backed_up"


def test_schedule_and_retention_are_saved_and_validated(start_server: StartServer) -> None:
    server = start_server(notes=["a"])
    with server.http() as http:
        assert http.get("/cloudkeep/schedule").json() == {
            "schedule": None,
            "jitter": None,
            "next_run": None,
        }
        put = http.put("/cloudkeep/schedule", json={"schedule": "at 02:00,14:30"})
        assert put.status_code == 200, put.text
        body = put.json()
        assert body["schedule"] == "at 02:00,14:30" and body["jitter"] == "5m"
        assert body["next_run"] is not None
        for bad in (
            {"schedule": "every 0s"},
            {"schedule": "every 1m", "jitter": "2m"},
            {"schedule": "weekly"},
            {"schedule": "hourly", "extra": 1},
        ):
            refused = http.put("/cloudkeep/schedule", json=bad)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.headers["content-type"].startswith("text/plain")
        retention = {"keep_last": 5, "keep_daily": 7, "keep_within": "1y2m"}
        put = http.put("/cloudkeep/retention", json=retention)
        assert put.status_code == 200, put.text
        assert http.get("/cloudkeep/retention").json()["keep_daily"] == 7
        for bad_rule in ({"keep_last": -2}, {"keep_within": "3w"}, {"keep_hourly": True}):
            assert http.put("/cloudkeep/retention", json=bad_rule).status_code == 422
    config = load_config(server.config_dir)
    assert str(config.schedule) == "at 02:00,14:30"
    assert (config.retention.last, config.retention.daily, config.retention.within) == (
        5,
        7,
        "1y2m",
    )
    # Turning it off is saved too, keeping the retention policy.
    with server.http() as http:
        assert http.put("/cloudkeep/schedule", json={"schedule": "off"}).json()["schedule"] is None
    config = load_config(server.config_dir)
    assert config.schedule is None and config.retention.last == 5


def test_cloudkeep_paths_keep_the_host_origin_and_app_key_guards(
    start_server: StartServer,
) -> None:
    server = start_server(notes=["a"], args=("--require-app-key",))
    key = create_app_key(server.config_dir)
    with server.http() as http:
        for method, path in (
            ("GET", "/cloudkeep/status"),
            ("GET", "/cloudkeep/schedule"),
            ("PUT", "/cloudkeep/schedule"),
            ("GET", "/cloudkeep/retention"),
            ("PUT", "/cloudkeep/retention"),
        ):
            body = {"schedule": "hourly"} if path.endswith("schedule") else {"keep_last": 1}
            payload = body if method == "PUT" else None
            missing = http.request(method, path, json=payload)
            assert missing.status_code == 401, (path, missing.text)
            foreign = http.request(
                method,
                path,
                json=payload,
                headers={"X-Application-ID": key, "Origin": "https://evil.example"},
            )
            assert foreign.status_code == 403, (path, foreign.text)
            rebinding = http.request(
                method,
                path,
                json=payload,
                headers={"X-Application-ID": key, "Host": "evil.example"},
            )
            assert rebinding.status_code == 403
            allowed = http.request(method, path, json=payload, headers={"X-Application-ID": key})
            assert allowed.status_code == 200, (path, allowed.text)
    assert load_config(server.config_dir).schedule is not None
    assert key not in server.log()


def test_serve_refuses_a_bad_schedule_in_one_line(tmp_path: Any) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudkeep",
            "--data",
            str(tmp_path),
            "serve",
            "--schedule",
            "every fortnight",
        ],
        env={
            "CLOUDKEEP_CONFIG_DIR": str(tmp_path / "c"),
            "CLOUDKEEP_CACHE_DIR": str(tmp_path),
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done
    assert "is not a duration" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_health_stays_fast_while_scheduled(start_server: StartServer) -> None:
    server = start_server(notes=["a"], args=("--schedule", "every 1s"), via_cli=True)
    wait_for(server, lambda s: outcome(s) is not None, "a scheduled run")
    assert httpx.get(f"{server.url}/.well-known/health", timeout=10).text == "ok"
    server.stop()  # SIGTERM: the scheduler stops with the server, which shuts down cleanly
    assert "Application shutdown complete" in server.log(), server.log()
    assert "scheduled backups of" in server.log() and "Traceback" not in server.log()


def test_the_retention_policy_runs_after_each_scheduled_backup(start_server: StartServer) -> None:
    """keep-last 2, set through the API: the store never holds more than two of this
    device's backups once a scheduled backup and its forget are done."""
    server = start_server(notes=["n0"], args=("--schedule", "every 1s"))
    with server.http() as http:
        assert http.put("/cloudkeep/retention", json={"keep_last": 2}).status_code == 200
    made: set[str] = set()
    for round_ in range(1, 5):
        make_notes_db(server.db_path, [f"n{i}" for i in range(round_ + 1)])
        status = wait_for(
            server,
            lambda s: (
                (s["last_backup"] or {}).get("id") not in (None, *made)
                and "retention policy" in ((s["last_run"] or {}).get("detail") or "")
            ),
            f"scheduled backup {round_} and its forget",
        )
        made.add(status["last_backup"]["id"])
        assert len(backup_ids(server)) <= 2
    stored = backup_ids(server)
    assert len(stored) == 2 and status["last_backup"]["id"] in stored
    assert "removed" in status["last_run"]["detail"]
    assert "Traceback" not in server.log()
