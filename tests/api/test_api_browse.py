"""Browsing and partial restores over HTTP (issue 14): /cloudkeep/backups/{id}/files,
/cloudkeep/find, /cloudkeep/backups/{id}/restore, /cloudkeep/restore/undo, against a real
server process, store and SQLite data."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
from api_helpers import ApiServer, StartServer, make_notes_db, read_notes


def _backed_up(start_server: StartServer) -> tuple[ApiServer, str]:
    server = start_server(notes=["one", "two"])
    (server.data_dir / "docs" / "deep").mkdir(parents=True)
    (server.data_dir / "docs" / "a.txt").write_text("a as backed up")
    (server.data_dir / "docs" / "deep" / "b.txt").write_text("b as backed up")
    with server.http() as http:
        created = http.post("/backups/create")
        assert created.status_code == 200, created.text
    return server, created.json()["id"]


def _restoration(http: httpx.Client, backup_id: str) -> dict[str, Any]:
    """The final status of the backup's latest restoration."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = http.get(f"/backup/{backup_id}/restoration/status").json()
        if status["value"] in ("COMPLETED", "FAILED", "CANCELED"):
            return status  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("the restore did not end")


def test_files_and_find(start_server: StartServer) -> None:
    server, backup_id = _backed_up(start_server)
    with server.http() as http:
        top = http.get(f"/cloudkeep/backups/{backup_id}/files")
        assert top.status_code == 200, top.text
        document = top.json()
        assert document["backup"] == backup_id and document["path"] == ""
        by_name = {entry["name"]: entry for entry in document["entries"]}
        assert set(by_name) == {"docs", "notes.db"}
        assert by_name["notes.db"]["sqlite"] is True and by_name["notes.db"]["type"] == "file"
        assert by_name["docs"]["mode"].startswith("d") and by_name["docs"]["target"] is None
        assert by_name["notes.db"]["mtime"].endswith("+00:00")

        docs = http.get(f"/cloudkeep/backups/{backup_id}/files", params={"path": "docs"}).json()
        assert [e["path"] for e in docs["entries"]] == ["docs/a.txt", "docs/deep"]
        assert docs["entries"][0]["size"] == len("a as backed up")

        missing = http.get(f"/cloudkeep/backups/{backup_id}/files", params={"path": "nope"})
        assert missing.status_code == 404 and "not in backup" in missing.text
        assert missing.headers["content-type"].startswith("text/plain")
        bad = http.get(f"/cloudkeep/backups/{backup_id}/files", params={"path": "../etc"})
        assert bad.status_code == 400 and "'..' segment" in bad.text
        unknown = http.get("/cloudkeep/backups/0.1.0_1/files")
        assert unknown.status_code == 404

        found = http.get("/cloudkeep/find", params={"pattern": "*.txt"}).json()
        assert [m["path"] for m in found["matches"]] == ["docs/a.txt", "docs/deep/b.txt"]
        assert found["matches"][0]["backup"] == backup_id
        assert found["matches"][0]["device_name"] == "api-test-device"
        assert found["truncated"] is False
        by_path = http.get("/cloudkeep/find", params={"pattern": "docs/*"}).json()
        assert [m["path"] for m in by_path["matches"]] == ["docs/a.txt", "docs/deep"]
        folders = http.get("/cloudkeep/find", params={"pattern": "*", "type": "dir"}).json()
        assert {m["path"] for m in folders["matches"]} == {"docs", "docs/deep"}
        limited = http.get("/cloudkeep/find", params={"pattern": "*", "limit": 1}).json()
        assert len(limited["matches"]) == 1 and limited["truncated"] is True
        other = http.get("/cloudkeep/find", params={"pattern": "*", "device": "elsewhere"})
        assert other.status_code == 404  # a mistyped device is said, not an empty answer
        assert other.text.strip() == "no backup of device 'elsewhere' (devices: 'api-test-device')"
        assert http.get("/cloudkeep/find", params={"pattern": "*", "type": "x"}).status_code == 422


def test_restore_chosen_paths_in_place_then_undo(start_server: StartServer) -> None:
    server, backup_id = _backed_up(start_server)
    make_notes_db(server.db_path, ["changed"])
    (server.data_dir / "docs" / "a.txt").write_text("a changed")
    with server.http() as http:
        assert http.get("/cloudkeep/restore/undo").json()["undo_path"] is None
        queued = http.post(f"/cloudkeep/backups/{backup_id}/restore", json={"paths": ["notes.db"]})
        assert queued.status_code == 202, queued.text
        assert queued.json()["backup"] == backup_id and queued.json()["status"] == "QUEUED"
        assert _restoration(http, backup_id)["value"] == "COMPLETED"
        assert read_notes(server.db_path) == ["one", "two"]
        assert (server.data_dir / "docs" / "a.txt").read_text() == "a changed"
        state = http.get("/cloudkeep/restore/undo").json()
        assert state["kind"] == "paths" and state["state"] == "restored"
        undone = http.post("/cloudkeep/restore/undo")
        assert undone.status_code == 200, undone.text
        assert undone.json()["state"] == "undone"
        assert read_notes(server.db_path) == ["changed"]

        # Into a new folder: only the chosen subtree.
        target = server.root / "picked"
        queued = http.post(
            f"/cloudkeep/backups/{backup_id}/restore",
            json={"paths": ["docs/deep"], "target": str(target)},
        )
        assert queued.status_code == 202, queued.text
        assert _restoration(http, backup_id)["value"] == "COMPLETED"
        assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
            "docs",
            "docs/deep",
            "docs/deep/b.txt",
        ]


def test_restore_requests_are_checked_before_queuing(start_server: StartServer) -> None:
    server, backup_id = _backed_up(start_server)
    (server.root / "taken").mkdir()
    (server.root / "taken" / "x").write_text("x")
    url = f"/cloudkeep/backups/{backup_id}/restore"
    with server.http() as http:
        cases = [
            ({"paths": ["nope"]}, 404, "not in backup"),
            ({"paths": ["../x"]}, 400, "not a path inside a backup"),
            ({"paths": ["a\u0000b"]}, 400, "NUL"),
            ({"paths": ["docs/a.txt/x"]}, 404, "is a file there"),
            ({"target": "relative/folder"}, 400, "absolute path"),
            ({"target": str(server.root / "taken")}, 400, "not empty"),
            ({"paths": "notes.db"}, 422, "paths"),
            ({"unknown": 1}, 422, "unknown"),
        ]
        for body, status, text in cases:
            answer = http.post(url, json=body)
            assert answer.status_code == status, (body, answer.text)
            assert text in answer.text, (body, answer.text)
        assert http.post("/cloudkeep/backups/0.1.0_1/restore", json={}).status_code == 404
        nothing = http.post("/cloudkeep/restore/undo")
        assert nothing.status_code == 400 and "nothing to undo" in nothing.text


def test_download_a_file(start_server: StartServer) -> None:
    server = start_server(notes=["one"])
    weird = 'we"ird;\u00e9t\u00e9\r\nname.bin'
    content = os.urandom(3 * 1024 * 1024 + 17)
    (server.data_dir / weird).write_bytes(content)
    with server.http() as http:
        backup_id = http.post("/backups/create").json()["id"]
        url = f"/cloudkeep/backups/{backup_id}/file"
        with http.stream("GET", url, params={"path": weird}) as answer:
            assert answer.status_code == 200
            body = b"".join(answer.iter_bytes())
            headers = answer.headers
        assert body == content
        assert headers["content-type"] == "application/octet-stream"
        assert headers["content-length"] == str(len(content))
        disposition = headers["content-disposition"]
        assert disposition.startswith('attachment; filename="we_ird__t___name.bin"')
        assert "filename*=UTF-8''we%22ird%3B%C3%A9t%C3%A9%0D%0Aname.bin" in disposition
        db = http.get(url, params={"path": "notes.db"})
        assert db.status_code == 200 and db.content == server.db_path.read_bytes()

        for path, status, text in (
            ("../notes.db", 400, "'..' segment"),
            ("a/../../notes.db", 400, "'..' segment"),
            ("/", 400, "is a folder"),
            ("nope.bin", 404, "not in backup"),
        ):
            refused = http.get(url, params={"path": path})
            assert refused.status_code == status, (path, refused.text)
            assert text in refused.text and refused.headers["content-type"].startswith("text/")
            assert "--archive" not in refused.text  # the CLI's option means nothing here


def test_a_store_without_backups_answers_as_an_empty_one(start_server: StartServer) -> None:
    """Before the first backup the store holds no repository: as GET /backups answers an
    empty list, find finds nothing and a named backup is unknown (not 511, which says the
    server is misconfigured)."""
    server = start_server(notes=["one"])
    with server.http() as http:
        found = http.get("/cloudkeep/find", params={"pattern": "*"})
        assert found.status_code == 200, found.text
        assert found.json() == {"matches": [], "truncated": False}
        named = http.get("/cloudkeep/find", params={"pattern": "*", "backup": "0.1.0_1"})
        assert named.status_code == 404 and "0.1.0_1" in named.text
        for path in (
            "/cloudkeep/backups/0.1.0_1/files",
            "/cloudkeep/backups/0.1.0_1/file?path=notes.db",
            "/cloudkeep/backups/0.1.0_1/databases",
            "/cloudkeep/diff?a=0.1.0_1&b=0.1.0_2",
        ):
            answer = http.get(path)
            assert answer.status_code == 404, (path, answer.status_code, answer.text)
        for path, body in (
            ("/cloudkeep/backups/0.1.0_1/restore", {"paths": ["notes.db"]}),
            ("/cloudkeep/backups/0.1.0_1/sql", {"query": "SELECT 1"}),
        ):
            answer = http.post(path, json=body)
            assert answer.status_code == 404, (path, answer.status_code, answer.text)
