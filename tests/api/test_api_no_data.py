"""A server started without a data folder: it serves, a backup answers 503 saying where it
looked, and once Pieces OS makes its folder the next backup finds it (no restart)."""

from __future__ import annotations

from api_helpers import StartServer, make_notes_db


def test_a_server_without_data_refuses_backups_until_pieces_os_makes_its_folder(
    start_server: StartServer,
) -> None:
    server = start_server(with_data=False)
    pieces = server.root / "home" / ".local" / "share" / "com.pieces.os" / "production"
    assert "no Pieces OS data folder exists at" in server.log()
    with server.http() as http:
        listed = http.get("/backups")
        assert listed.status_code == 200 and listed.json()["iterable"] == []
        refused = http.post("/backups/create")
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("text/plain")
        assert str(pieces) in refused.text and "--data" in refused.text
        streamed = http.post("/backups/create/streamed").json()
        assert streamed["status"] == "FAILED" and str(pieces) in streamed["reason"]
        assert not pieces.exists()  # nothing made up

        make_notes_db(pieces / "notes.db", ["one", "two"])
        made = http.post("/backups/create")
        assert made.status_code == 200, made.text
        assert made.json()["bytes"] > 0
        assert [b["id"] for b in http.get("/backups").json()["iterable"]] == [made.json()["id"]]
