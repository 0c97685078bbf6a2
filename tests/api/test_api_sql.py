"""``GET /cloudkeep/backups/{id}/databases`` and ``POST /cloudkeep/backups/{id}/sql`` on a
real server and store: answers, bounded rows, JSON-safe values, and each refusal with its
status and a text body."""

from __future__ import annotations

import sqlite3

from api_helpers import StartServer
from pieces_os_client.api.backups_api import BackupsApi


def test_databases_and_queries(start_server: StartServer) -> None:
    server = start_server(
        notes=["first", "second", "third"], args=("--allow-origin", "https://app.example")
    )
    with sqlite3.connect(server.data_dir / "notes.db") as db:
        db.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB, x REAL)")
        db.execute("INSERT INTO blobs(data, x) VALUES (randomblob(100), 1e999)")
    db.close()
    (server.data_dir / "readme.txt").write_text("not a database")
    backup = BackupsApi(server.sdk()).backups_create_new_backup().id
    with server.http() as http:
        listed = http.get(f"/cloudkeep/backups/{backup}/databases")
        assert listed.status_code == 200, listed.text
        ((database,),) = [list(listed.json()["databases"])]
        assert database["path"] == "notes.db" and database["size"] > 0

        answered = http.post(
            f"/cloudkeep/backups/{backup}/sql",
            json={"query": "SELECT count(*) AS n FROM notes"},
        )
        assert answered.status_code == 200, answered.text
        body = answered.json()
        assert body["database"] == "notes.db"
        assert (body["columns"], body["rows"], body["truncated"]) == (["n"], [[3]], False)
        assert body["fetched_bytes"] > 0 and body["elapsed_ms"] >= 0

        values = http.post(
            f"/cloudkeep/backups/{backup}/sql",
            json={"database": "notes.db", "query": "SELECT data, x, NULL FROM blobs"},
        ).json()
        ((blob, x, null),) = values["rows"]
        assert (blob["blob"], len(blob["hex"]), x, null) == (100, 64, "inf", None)

        cut = http.post(
            f"/cloudkeep/backups/{backup}/sql",
            json={"query": "SELECT * FROM notes", "max_rows": 2},
        ).json()
        assert (len(cut["rows"]), cut["truncated"]) == (2, True)

        foreign = http.post(
            f"/cloudkeep/backups/{backup}/sql",
            json={"query": "SELECT 1"},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403


def test_refusals(start_server: StartServer) -> None:
    server = start_server(notes=["only"])
    (server.data_dir / "readme.txt").write_text("not a database")
    backup = BackupsApi(server.sdk()).backups_create_new_backup().id
    missing = backup[:-1] + ("1" if backup[-1] != "1" else "2")
    cases = [
        (backup, {"query": "SELEC 1"}, 400, 'near "SELEC": syntax error'),
        (backup, {"query": "DELETE FROM notes"}, 400, "only reading is allowed"),
        (backup, {"query": "ATTACH '/etc/passwd' AS p"}, 400, "only reading is allowed"),
        (backup, {"query": "SELECT 1; SELECT 2"}, 400, "one statement"),
        (
            backup,
            {"query": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
             "SELECT max(x) FROM n"},
            400,
            "longer than 10 seconds",
        ),
        (backup, {"database": "other.db", "query": "SELECT 1"}, 404, "no database 'other.db'"),
        (backup, {"database": "readme.txt", "query": "SELECT 1"}, 404, "not a SQLite database"),
        (missing, {"query": "SELECT 1"}, 404, "no backup"),
        ("not-an-id", {"query": "SELECT 1"}, 404, "no backup"),
        (backup, {"query": ""}, 422, "query"),
        (backup, {"query": "SELECT 1", "max_rows": -1}, 422, "max_rows"),
        (backup, {"query": "SELECT 1", "unknown": 1}, 422, "unknown"),
    ]  # fmt: skip
    with server.http() as http:
        for backup_id, body, status, text in cases:
            answer = http.post(f"/cloudkeep/backups/{backup_id}/sql", json=body)
            assert answer.status_code == status, (body, answer.text)
            assert answer.headers["content-type"].startswith("text/plain")
            assert text in answer.text, (body, answer.text)
        unknown = http.get(f"/cloudkeep/backups/{missing}/databases")
        assert unknown.status_code == 404 and "no backup" in unknown.text
    assert "Traceback" not in server.log()
