"""``GET /cloudkeep/stats``: the store's figures, behind the same guard as every route."""

from __future__ import annotations

import subprocess
import sys

from api_helpers import ApiServer, StartServer, cli_env
from pieces_os_client.api.backups_api import BackupsApi


def _stats_cli(server: ApiServer) -> dict[str, object]:
    import json

    done = subprocess.run(
        [sys.executable, "-m", "cloudkeep", "--data", str(server.data_dir), "--store",
         server.store_dir.as_uri(), "stats", "--json"],
        env=cli_env(server), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    figures: dict[str, object] = json.loads(done.stdout)
    return figures


def test_stats_route(start_server: StartServer) -> None:
    server = start_server(notes=["stats"], args=("--allow-origin", "https://app.example"))
    with server.http() as http:
        empty = http.get("/cloudkeep/stats")
        assert empty.status_code == 511 and empty.headers["content-type"].startswith("text/")
    created = BackupsApi(server.sdk()).backups_create_new_backup()
    with server.http() as http:
        answered = http.get("/cloudkeep/stats")
        assert answered.status_code == 200, answered.text
        figures = answered.json()
        assert figures == _stats_cli(server)
        assert figures["backups"] == 1
        assert figures["devices"][0]["latest_id"] == created.id
        assert figures["devices"][0]["device"] == "api-test-device"
        allowed = http.get("/cloudkeep/stats", headers={"Origin": "https://app.example"})
        assert allowed.status_code == 200
        foreign = http.get("/cloudkeep/stats", headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403 and "cross-origin" in foreign.text
        rebound = http.get("/cloudkeep/stats", headers={"Host": "evil.example"})
        assert rebound.status_code == 403


def test_stats_route_needs_the_app_key(start_server: StartServer) -> None:
    server = start_server(notes=["stats"], args=("--require-app-key",))
    with server.http() as http:
        refused = http.get("/cloudkeep/stats")
        assert refused.status_code == 401 and "app-key create" in refused.text
