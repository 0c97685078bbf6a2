"""Deletes as jobs of the server's queue, through the real API and engine process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from api_helpers import ApiServer, StartServer, make_big_db

WAIT = 120.0  # seconds; only ever reached when something is broken


@pytest.fixture
def server(start_server: StartServer) -> ApiServer:
    return start_server(notes=["one", "two"])


def _stored_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "data").rglob("*") if p.is_file())


def test_a_delete_is_a_queued_job_that_reclaims_space(server: ApiServer) -> None:
    with server.http() as http:
        kept = http.post("/backups/create").json()
        make_big_db(server.data_dir / "big.db", 4)
        doomed = http.post("/backups/create").json()
        (server.data_dir / "big.db").unlink()
        before = _stored_bytes(server.store_dir)

        assert http.post(f"/backups/{doomed['id']}/delete").status_code == 204
        assert [b["id"] for b in http.get("/backups").json()["iterable"]] == [kept["id"]]
        assert http.get(f"/backup/{doomed['id']}").status_code == 404
        # The job goes on to reclaim the space only the deleted backup used.
        deadline = time.monotonic() + WAIT
        while _stored_bytes(server.store_dir) > before - 4 * 1024 * 1024:
            assert time.monotonic() < deadline, "the delete job reclaimed nothing"
            time.sleep(0.1)
        # A delete is neither a creation nor a restoration on the wire.
        progress = http.get("/backups/streamed/progress").json()
        assert not progress.get("backups") and not progress.get("restorations")
        assert http.post(f"/backups/{doomed['id']}/delete").status_code == 404
        # The kept backup still restores.
        assert http.post(f"/backup/{kept['id']}/restore").status_code == 200
