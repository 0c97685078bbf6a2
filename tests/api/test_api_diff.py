"""``GET /cloudkeep/diff``: two backups' differences, as the CLI gives them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing

from api_helpers import ApiServer, StartServer, cli_env
from pieces_os_client.api.backups_api import BackupsApi


def _diff_cli(server: ApiServer, a: str, b: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "cloudkeep", "--data", str(server.data_dir), "--store",
         server.store_dir.as_uri(), "diff", a, b, "--json"],
        env=cli_env(server), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report: dict[str, object] = json.loads(done.stdout)
    return report


def _without_timing(report: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in report.items() if k not in ("elapsed_ms",)}


def test_diff_route(start_server: StartServer) -> None:
    server = start_server(
        notes=["one", "two", "three"], args=("--allow-origin", "https://x.example")
    )
    api = BackupsApi(server.sdk())
    first = api.backups_create_new_backup().id
    with closing(sqlite3.connect(server.db_path)) as db, db:
        db.execute("UPDATE notes SET body = 'TWO' WHERE body = 'two'")
        db.execute("INSERT INTO notes(body) VALUES ('four')")
    (server.data_dir / "extra.txt").write_text("hello\n")
    second = api.backups_create_new_backup().id
    with server.http() as http:
        answered = http.get("/cloudkeep/diff", params={"a": first, "b": second})
        assert answered.status_code == 200, answered.text
        report = answered.json()
        assert (report["a"], report["b"]) == (first, second)
        assert report["files"]["added"] == [{"path": "extra.txt", "type": "file", "size": 6}]
        assert [c["path"] for c in report["files"]["changed"]] == ["notes.db"]
        (database,) = report["databases"]
        (table,) = database["tables"]
        assert (table["name"], table["added"], table["removed"], table["changed"]) == (
            "notes",
            1,
            0,
            1,
        )
        assert "rows" not in table
        assert isinstance(report["fetched_bytes"], int) and report["elapsed_ms"] >= 0
        assert _without_timing(report) == _without_timing(_diff_cli(server, first, second))

        common = next(i for i, (x, y) in enumerate(zip(first, second, strict=True)) if x != y)
        ambiguous = http.get("/cloudkeep/diff", params={"a": first[:common], "b": second})
        assert ambiguous.status_code == 400 and "give more of the id" in ambiguous.text
        with_rows = http.get(
            "/cloudkeep/diff", params={"a": first[: common + 1], "b": "latest", "rows": "true"}
        ).json()
        rows = with_rows["databases"][0]["tables"][0]["rows"]
        assert rows["changed"] == [{"key": 2, "columns": {"body": {"a": "two", "b": "TWO"}}}]
        assert rows["added"] == [{"key": 4, "values": {"id": 4, "body": "four"}}]
        assert rows["removed"] == [] and rows["truncated"] is False

        missing = http.get("/cloudkeep/diff", params={"a": first, "b": "0.1.0_9"})
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/")
        assert http.get("/cloudkeep/diff", params={"a": first}).status_code == 422
        too_many = http.get("/cloudkeep/diff", params={"a": first, "b": second, "max_rows": -1})
        assert too_many.status_code == 422
        foreign = http.get(
            "/cloudkeep/diff",
            params={"a": first, "b": second},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403


def test_diff_route_needs_the_app_key(start_server: StartServer) -> None:
    server = start_server(notes=["x"], args=("--require-app-key",))
    with server.http() as http:
        refused = http.get("/cloudkeep/diff", params={"a": "latest", "b": "latest"})
        assert refused.status_code == 401
