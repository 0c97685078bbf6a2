"""The server around the routes: ports, the CLI's ``serve``, OpenAPI, 500s, latency."""

from __future__ import annotations

import inspect
import logging
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest
from api_helpers import PASSPHRASE, ApiServer, StartServer, make_big_db, make_notes_db
from pieces_os_client.api.backup_api import BackupApi
from pieces_os_client.api.backups_api import BackupsApi

from cloudkeep.api.app import create_app
from cloudkeep.api.server import bind_listening_socket, url_for
from cloudkeep.errors import ConfigurationError
from cloudkeep.settings import Settings

# SDK BackupApi methods for other Pieces endpoints (assets), outside the Backups API.
_NOT_OURS = {"backup", "backup_asset"}


def _occupied() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_default_port_falls_back_to_the_scan_range() -> None:
    busy = _occupied()
    spare = _occupied()
    spare_port = spare.getsockname()[1]
    spare.close()
    notices: list[str] = []
    try:
        chosen = bind_listening_socket(
            "127.0.0.1",
            None,
            default_port=busy.getsockname()[1],
            fallback=[busy.getsockname()[1], spare_port],
            notice=notices.append,
        )
        try:
            assert chosen.getsockname()[1] == spare_port
        finally:
            chosen.close()
        assert notices and f"using {spare_port}" in notices[0]
        with pytest.raises(ConfigurationError, match="--port"):
            bind_listening_socket("127.0.0.1", busy.getsockname()[1])
        with pytest.raises(ConfigurationError, match="39300-39333"):
            bind_listening_socket(
                "127.0.0.1",
                None,
                default_port=busy.getsockname()[1],
                fallback=[busy.getsockname()[1]],
                notice=notices.append,
            )
    finally:
        busy.close()
    assert url_for("127.0.0.1", 39300) == "http://localhost:39300"
    assert url_for("::1", 1000) == "http://[::1]:1000"


def test_cli_serve_runs_the_api(start_server: StartServer) -> None:
    server = start_server(notes=["via the CLI"], via_cli=True)
    created = BackupsApi(server.sdk()).backups_create_new_backup()
    fetched = BackupApi(server.sdk()).backup_specific_backup_snapshot(created.id)
    assert fetched.id == created.id
    with server.http() as http:
        assert http.get("/backups").json()["iterable"][0]["id"] == created.id
    assert f"http://localhost:{server.port}" in server.log()


def test_openapi_describes_every_sdk_operation(start_server: StartServer) -> None:
    server = start_server(notes=["x"])
    with server.http() as http:
        document = http.get("/openapi.json").json()
        docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    operations = {
        op["operationId"]: (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    sdk_methods = {
        name
        for api in (BackupsApi, BackupApi)
        for name, _ in inspect.getmembers(api, inspect.isfunction)
        if not name.startswith("_")
        and not name.endswith(("_with_http_info", "_without_preload_content"))
    } - _NOT_OURS
    assert sdk_methods <= set(operations), sdk_methods - set(operations)
    path, method, create = operations["backups_create_new_backup"]
    assert (path, method) == ("/backups/create", "post")
    assert create["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Backup"
    )
    for code in ("500", "505", "511"):
        assert "text/plain" in create["responses"][code]["content"]
    assert create["requestBody"]["required"] is False
    streamed = operations["backups_create_new_backup_streamed"][2]["responses"]["200"]["content"]
    assert {"application/json", "application/x-ndjson", "text/event-stream"} <= set(streamed)
    assert "204" in operations["backups_delete_specific_backup"][2]["responses"]
    schemas = document["components"]["schemas"]
    assert {
        "Backup",
        "Backups",
        "SeededBackup",
        "BackupStatus",
        "BackupStreamedProgress",
        "BackupsStreamedProgress",
        "GroupedTimestamp",
    } <= set(schemas)
    assert "schema" in schemas["Backup"]["properties"]
    assert set(schemas["Backup"]["required"]) == {
        "id",
        "version",
        "timestamp",
        "bytes",
        "created",
        "device_name",
        "platform",
    }
    assert "HTTPValidationError" not in schemas


def test_unexpected_errors_are_500_with_a_trace_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings.resolve(data=tmp_path / "data", store=(tmp_path / "s").as_uri()))

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", broken)
    transport = httpx.ASGITransport(app=app)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.get("/boom")

    import asyncio

    with caplog.at_level(logging.ERROR, logger="cloudkeep.api"):
        response = asyncio.run(call())
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/plain")
    trace_id = response.text.split("Trace id: ")[1].split(".")[0]
    assert len(trace_id) == 12
    assert any(trace_id in record.getMessage() and record.exc_info for record in caplog.records)


@pytest.mark.timeout(600)
def test_list_and_status_answer_during_a_backup(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """1,000 backups in the store, a large backup running: list and status keep answering.

    The backup runs off the event loop, so no request waits for it: a blocked loop
    would hold requests for most of the backup's duration. How fast they answer is
    the benchmark's to measure (``bench/service.py``: p99 4.8-7.6 ms), not a test's,
    whose timings a busy CI machine would make flaky.
    """
    root = tmp_path_factory.mktemp("latency")
    data = root / "data"
    make_notes_db(data / "notes.db", ["n"])
    from cloudkeep.workspace import Workspace

    settings = Settings.resolve(
        data=data,
        store=(root / "store").as_uri(),
        environ={
            "CLOUDKEEP_PASSPHRASE": PASSPHRASE,
            "CLOUDKEEP_CONFIG_DIR": str(root / "config"),
            "CLOUDKEEP_CACHE_DIR": str(root / "cache"),
        },
    )
    workspace = Workspace(settings)
    for _ in range(1000):
        workspace.backup()
    make_big_db(data / "big.db", 160)
    server: ApiServer = start_server(root=root)
    with server.http() as http:
        assert len(http.get("/backups").json()["iterable"]) == 1000  # warm
        done = threading.Event()
        final: dict[str, object] = {}

        def run_backup() -> None:
            with server.http() as other:
                final.update(other.post("/backups/create/streamed").json())
            done.set()

        worker = threading.Thread(target=run_backup)
        worker.start()
        job_id = None
        while job_id is None:  # wait until the backup is running
            running = http.get("/backups/streamed/progress").json()["backups"]
            if running and running[0]["status"] == "IN-PROGRESS":
                job_id = running[0]["backup"]["id"]
        list_times: list[float] = []
        status_times: list[float] = []
        polling_since = time.perf_counter()
        while not done.is_set():
            started = time.perf_counter()
            response = http.get("/backups")
            list_times.append(time.perf_counter() - started)
            assert response.status_code == 200
            started = time.perf_counter()
            status = http.get(f"/backup/{job_id}/creation/status")
            status_times.append(time.perf_counter() - started)
            assert status.status_code == 200
        polled = time.perf_counter() - polling_since
        worker.join()
    assert final["status"] == "COMPLETED"
    assert len(list_times) >= 50, "the backup ended too soon to measure"
    p99 = statistics.quantiles(list_times, n=100)[98]
    status_p99 = statistics.quantiles(status_times, n=100)[98]
    print(
        f"GET /backups during a backup: n={len(list_times)} "
        f"median={statistics.median(list_times) * 1000:.1f} ms p99={p99 * 1000:.1f} ms; "
        f"status p99={status_p99 * 1000:.1f} ms"
    )
    slowest = max(list_times + status_times)
    assert slowest < polled / 3, f"a request waited {slowest:.2f} s of the backup's {polled:.2f}"
