"""Streamed creations and restorations: NDJSON, SSE, WebSockets, cancel, queueing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil
import pytest
from api_helpers import ApiServer, StartServer, make_big_db, make_notes_db, read_notes
from pieces_os_client.models.backup_streamed_progress import BackupStreamedProgress
from pieces_os_client.models.backups_streamed_progress import BackupsStreamedProgress
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

NOTES = ["alpha", "beta", "gamma"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}


def ws_url(server: ApiServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def ndjson(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.strip():
            yield json.loads(line)


def ws_messages(socket: ClientConnection, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every message until the server closes the socket."""
    messages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = socket.recv(timeout=deadline - time.monotonic())
        except Exception as exc:  # closed by the server after the final event
            if type(exc).__name__.startswith("ConnectionClosed"):
                return messages
            raise
        messages.append(json.loads(raw))
    raise AssertionError("the WebSocket was not closed after the final event")


def assert_well_formed(events: list[dict[str, Any]], final: str) -> None:
    """INITIALIZED, then IN-PROGRESS with a percentage that never drops, then ``final``."""
    statuses = [e["status"] for e in events]
    assert statuses[0] == "INITIALIZED"
    assert statuses[-1] == final
    assert set(statuses[1:-1]) <= {"IN-PROGRESS"}
    percentages = [e["percentage"] for e in events]
    assert percentages == sorted(percentages), percentages
    assert all(0 <= p <= 100 for p in percentages)
    for event in events:  # every line is something the SDK model parses
        parsed = BackupStreamedProgress.from_dict(event)
        assert parsed is not None and parsed.status is not None


@pytest.fixture
def server(start_server: StartServer) -> ApiServer:
    return start_server(notes=NOTES)


def test_ndjson_creation_streams_every_update_in_order(server: ApiServer) -> None:
    make_big_db(server.data_dir / "big.db", 24)
    with server.http() as http:
        with http.stream(
            "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            events = list(ndjson(response))
        assert_well_formed(events, "COMPLETED")
        in_progress = [e["percentage"] for e in events if e["status"] == "IN-PROGRESS"]
        assert any(0 < p < 100 for p in in_progress), in_progress
        job_id = events[0]["backup"]["id"]
        assert job_id.startswith("job-")
        final = events[-1]
        assert final["percentage"] == 100
        backup_id = final["backup"]["id"]
        assert backup_id.startswith("0.1.0_")
        assert final["backup"]["bytes"] > 24 * 1024 * 1024

        # The creation status answers for the job id and for the final id alike.
        for ident in (job_id, backup_id):
            status = http.get(f"/backup/{ident}/creation/status").json()
            assert status["value"] == "COMPLETED"
            assert status["percentage"] == 100
            assert status["backup"]["id"] == backup_id
        assert [b["id"] for b in http.get("/backups").json()["iterable"]] == [backup_id]


def test_sse_restoration_streams_and_restores(server: ApiServer) -> None:
    with server.http() as http:
        backup_id = http.post("/backups/create").json()["id"]
        make_notes_db(server.db_path, ["changed"])
        with http.stream(
            "POST",
            f"/backup/{backup_id}/restore/streamed",
            headers={"Accept": "text/event-stream"},
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            body = response.read().decode()
    events = [
        json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")
    ]
    assert body.count("event: progress") == len(events)
    assert_well_formed(events, "COMPLETED")
    assert {e["backup"]["id"] for e in events} == {backup_id}
    assert read_notes(server.db_path) == NOTES


def test_websocket_creation_and_the_progress_feed(server: ApiServer) -> None:
    with connect(ws_url(server, "/backups/streamed/progress")) as feed:
        first = BackupsStreamedProgress.from_json(feed.recv(timeout=10))
        assert first is not None and first.backups == [] and first.restorations == []
        with connect(ws_url(server, "/backups/create/streamed/websocket")) as socket:
            events = ws_messages(socket)
        assert_well_formed(events, "COMPLETED")
        backup_id = events[-1]["backup"]["id"]

        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = json.loads(feed.recv(timeout=30))
            assert BackupsStreamedProgress.from_dict(message) is not None
            seen.extend(message["backups"])
            if any(b["status"] == "COMPLETED" for b in message["backups"]):
                break
        assert seen[0]["status"] in {"INITIALIZED", "IN-PROGRESS"}
        assert seen[-1]["status"] == "COMPLETED"
        assert seen[-1]["backup"]["id"] == backup_id


def test_websocket_restoration_and_unknown_id(server: ApiServer) -> None:
    with server.http() as http:
        backup_id = http.post("/backups/create").json()["id"]
    make_notes_db(server.db_path, [])
    with connect(ws_url(server, f"/backup/{backup_id}/restore/streamed/websocket")) as socket:
        events = ws_messages(socket)
    assert_well_formed(events, "COMPLETED")
    assert read_notes(server.db_path) == NOTES
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, "/backup/0.1.0_42/restore/streamed/websocket"))
    assert refused.value.response.status_code == 404
    assert b"0.1.0_42" in refused.value.response.body
    with server.http() as http:  # a plain GET on a WebSocket path explains itself
        plain = http.get("/backups/create/streamed/websocket")
    assert plain.status_code == 426
    assert "WebSocket" in plain.text


def test_cancel_mid_backup_leaves_no_backup(server: ApiServer) -> None:
    make_big_db(server.data_dir / "big.db", 96)
    with server.http() as http, server.http() as control:
        with http.stream(
            "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
        ) as response:
            events = []
            for event in ndjson(response):
                events.append(event)
                if event["status"] == "IN-PROGRESS" and 0 < event["percentage"] < 90:
                    job_id = event["backup"]["id"]
                    canceled = control.post(f"/backup/{job_id}/creation/cancel")
                    assert canceled.status_code == 204
                    # The cancel waits for the engine: the status already says so.
                    status = control.get(f"/backup/{job_id}/creation/status").json()
                    assert status["value"] == "CANCELED"
        assert_well_formed(events, "CANCELED")
        assert http.get("/backups").json() == {"iterable": []}
    snapshots = server.store_dir / "snapshots"
    assert not snapshots.exists() or not any(snapshots.iterdir())
    # The server is not stuck: the next backup works.
    assert server.backups_api().backups_create_new_backup().bytes > 0


def test_cancel_of_a_queued_creation_is_immediate(server: ApiServer) -> None:
    make_big_db(server.data_dir / "big.db", 64)
    with server.http() as http, server.http() as other:
        with (
            http.stream(
                "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
            ) as running,
            other.stream(
                "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
            ) as queued,
        ):
            queued_events = ndjson(queued)
            first_of_queued = next(queued_events)
            job_id = first_of_queued["backup"]["id"]
            assert first_of_queued["status"] == "INITIALIZED"
            status = http.get(f"/backup/{job_id}/creation/status").json()
            assert status["value"] == "INITIALIZED"  # waiting behind the running one
            assert http.post(f"/backup/{job_id}/creation/cancel").status_code == 204
            rest = list(queued_events)
            assert rest[-1]["status"] == "CANCELED"
            assert list(ndjson(running))[-1]["status"] == "COMPLETED"
        assert len(http.get("/backups").json()["iterable"]) == 1


def test_client_disconnect_does_not_cancel(server: ApiServer) -> None:
    make_big_db(server.data_dir / "big.db", 48)
    with server.http() as http:
        with http.stream(
            "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
        ) as response:
            job_id = next(ndjson(response))["backup"]["id"]
        # The stream is closed; the backup goes on.
        deadline = time.monotonic() + 120
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = http.get(f"/backup/{job_id}/creation/status").json()
            if status["value"] in TERMINAL:
                break
            time.sleep(0.1)
        assert status["value"] == "COMPLETED"
        listed = [b["id"] for b in http.get("/backups").json()["iterable"]]
        assert listed == [status["backup"]["id"]]


def test_creations_are_serialized_and_restores_never_overlap(server: ApiServer) -> None:
    make_big_db(server.data_dir / "big.db", 16)
    overlaps: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        with connect(ws_url(server, "/backups/streamed/progress")) as feed:
            while not stop.is_set():
                try:
                    message = json.loads(feed.recv(timeout=0.2))
                except TimeoutError:
                    continue
                running = [
                    p
                    for p in message["backups"] + message["restorations"]
                    if p["status"] == "IN-PROGRESS"
                ]
                if len(running) > 1:
                    overlaps.append(message)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with server.http() as http:
            first = http.post("/backups/create").json()["id"]

            def create(_: int) -> str:
                with server.http() as client:
                    return str(client.post("/backups/create").json()["id"])

            def restore(_: int) -> int:
                with server.http() as client:
                    return client.post(f"/backup/{first}/restore").status_code

            with ThreadPoolExecutor(6) as pool:
                creations = [pool.submit(create, i) for i in range(3)]
                restores = [pool.submit(restore, i) for i in range(2)]
                ids = [c.result(timeout=300) for c in creations]
                assert [r.result(timeout=300) for r in restores] == [200, 200]
            assert len(set(ids)) == 3 and first not in ids
            listed = {b["id"] for b in http.get("/backups").json()["iterable"]}
            assert listed == {first, *ids}
    finally:
        stop.set()
        watcher.join(10)
    assert overlaps == []
    assert read_notes(server.db_path) == NOTES


def test_failure_ends_failed_with_reason(start_server: StartServer) -> None:
    server = start_server(notes=NOTES)
    # Take the data folder away: the engine cannot read it.
    for child in server.data_dir.iterdir():
        child.unlink()
    server.data_dir.rmdir()
    with server.http() as http:
        with http.stream(
            "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
        ) as response:
            events = list(ndjson(response))
        assert_well_formed(events, "FAILED")
        reason = events[-1]["reason"]
        assert str(server.data_dir) in reason
        job_id = events[0]["backup"]["id"]
        status = http.get(f"/backup/{job_id}/creation/status").json()
        assert status["value"] == "FAILED" and status["reason"] == reason
        # The SDK's mode (one JSON object) reports it the same way.
        single = http.post("/backups/create/streamed", headers={"Accept": "application/json"})
        assert single.status_code == 200
        assert single.json()["status"] == "FAILED"
        # The plain creation answers the engine's status code as text.
        plain = http.post("/backups/create")
        assert plain.status_code == 400
        assert plain.headers["content-type"].startswith("text/plain")
        assert str(server.data_dir) in plain.text
        assert http.get("/backups").json() == {"iterable": []}


def test_delete_during_a_backup_answers_at_once(server: ApiServer) -> None:
    """The space reclaim waits for the running backup; the delete itself does not."""
    with server.http() as http:
        old = http.post("/backups/create").json()["id"]
        make_big_db(server.data_dir / "big.db", 160)
        with http.stream(
            "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
        ) as response:
            events = ndjson(response)
            for event in events:
                if event["status"] == "IN-PROGRESS" and event["percentage"] > 0:
                    break
            with server.http() as control:
                started = time.monotonic()
                deleted = control.post(f"/backups/{old}/delete")
                elapsed = time.monotonic() - started
                assert deleted.status_code == 204
                running = control.get("/backups/streamed/progress").json()["backups"]
            rest = list(events)
        assert running and running[0]["status"] == "IN-PROGRESS"  # answered mid-backup
        assert elapsed < 1.5, elapsed
        assert rest[-1]["status"] == "COMPLETED"
        listed = [b["id"] for b in http.get("/backups").json()["iterable"]]
        assert listed == [rest[-1]["backup"]["id"]]
        assert http.get(f"/backup/{old}").status_code == 404


def _engine_processes(server: ApiServer) -> list[psutil.Process]:
    """The server's spawned engine worker(s) (not multiprocessing's resource tracker)."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if "spawn_main" in " ".join(p.cmdline())]


def test_engine_crash_fails_the_job_and_the_next_one_works(server: ApiServer) -> None:
    make_big_db(server.data_dir / "big.db", 96)
    with server.http() as http:
        with http.stream(
            "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
        ) as response:
            events = []
            for event in ndjson(response):
                events.append(event)
                if (
                    event["status"] == "IN-PROGRESS"
                    and event["percentage"] > 0
                    and len([e for e in events if e["status"] == "IN-PROGRESS"]) == 2
                ):
                    (engine,) = _engine_processes(server)
                    engine.kill()  # a process this test started (via the server)
        assert_well_formed(events, "FAILED")
        reason = events[-1]["reason"]
        assert "trace id" in reason
        trace_id = reason.split("trace id ")[1].split(")")[0]
        assert trace_id in server.log()
        assert http.get("/backups").json() == {"iterable": []}
        # A new engine process takes the next job.
        retry = http.post("/backups/create/streamed").json()
        assert retry["status"] == "COMPLETED"
        assert [b["id"] for b in http.get("/backups").json()["iterable"]] == [retry["backup"]["id"]]


def test_stopping_the_server_cancels_the_running_backup(server: ApiServer) -> None:
    make_big_db(server.data_dir / "big.db", 160)
    engines = _engine_processes(server)
    assert len(engines) == 1
    events: list[dict[str, Any]] = []
    with (
        server.http() as http,
        http.stream(
            "POST", "/backups/create/streamed", headers={"Accept": "application/x-ndjson"}
        ) as response,
    ):
        for event in ndjson(response):
            events.append(event)
            if event["status"] == "IN-PROGRESS" and event["percentage"] > 0:
                started = time.monotonic()
                server.process.terminate()
    server.process.wait(timeout=30)
    assert time.monotonic() - started < 15
    assert events[-1]["status"] == "CANCELED"
    psutil.wait_procs(engines, timeout=10)
    assert not any(p.is_running() for p in engines)
    snapshots = server.store_dir / "snapshots"
    assert not snapshots.exists() or not any(snapshots.iterdir())
