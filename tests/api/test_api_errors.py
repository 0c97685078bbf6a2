"""Status codes produced for real: 511, 505, 404, 400/415/422, 413, and text/plain bodies."""

from __future__ import annotations

import json

import httpx
import pytest
from api_helpers import ApiServer, StartServer
from pieces_os_client.exceptions import ApiException

from cloudkeep import errors
from cloudkeep.api.errors import status_for
from cloudkeep.storage import base as storage_base

NOTES = ["one", "two"]


def assert_text(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/plain")
    for fragment in fragments:
        assert fragment in response.text, response.text


def test_wrong_passphrase_is_511(start_server: StartServer) -> None:
    first = start_server(notes=NOTES)
    first.backups_api().backups_create_new_backup()
    first.stop()
    server = start_server(root=first.root, passphrase="not the passphrase")
    with server.http() as http:
        assert_text(http.get("/backups"), 511, "passphrase", "CLOUDKEEP_PASSPHRASE")
        assert_text(http.post("/backups/create"), 511, "passphrase")
        streamed = http.post("/backups/create/streamed").json()
        assert streamed["status"] == "FAILED" and "passphrase" in streamed["reason"]
    with pytest.raises(ApiException) as error:
        server.backups_api().backups_snapshot()
    assert error.value.status == 511
    assert "passphrase" in (error.value.body or "")
    assert "not the passphrase" not in server.log()  # secrets never logged


def test_missing_key_is_511(start_server: StartServer) -> None:
    first = start_server(notes=NOTES)
    first.backups_api().backups_create_new_backup()
    first.stop()
    server = start_server(root=first.root, passphrase=None)
    with server.http() as http:
        assert_text(http.get("/backups"), 511, "no passphrase")


@pytest.mark.parametrize("store", ["nosuch://bucket/x", "file-as-store"])
def test_unusable_store_is_511(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory, store: str
) -> None:
    if store == "file-as-store":
        blocker = tmp_path_factory.mktemp("blocker") / "not-a-folder"
        blocker.write_text("x")
        store = blocker.as_uri()
    server = start_server(notes=NOTES, store_url=store)
    with server.http() as http:
        assert_text(http.get("/backups"), 511, "store", "restart")
        assert_text(http.post("/backups/create"), 511, "store")
        assert http.get("/.well-known/health").status_code == 200  # the server itself runs


def test_newer_repository_format_is_505(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("newer")
    (root / "store").mkdir()
    (root / "store" / "config").write_text(json.dumps({"version": 99, "id": "future"}))
    server = start_server(root=root, notes=NOTES)
    with server.http() as http:
        assert_text(http.get("/backups"), 505, "format 99", "update cloudkeep")
        assert_text(http.post("/backups/create"), 505, "format 99")
        assert_text(http.get("/backup/0.1.0_1/creation/status"), 505)
    with pytest.raises(ApiException) as error:
        server.backups_api().backups_create_new_backup()
    assert error.value.status == 505


@pytest.fixture
def server(start_server: StartServer) -> ApiServer:
    return start_server(notes=NOTES)


@pytest.mark.parametrize(
    "path",
    [
        "/backup/not%20an%20id",
        "/backup/..%2F..%2Fconfig",
        "/backup/%2e%2e",
        "/backup/" + "9" * 200,
        "/backup/0.1.0_123/creation/status",
        "/backup/job-0123456789abcdef/creation/status",
        "/backup/-rf/restoration/status",
    ],
)
def test_bad_or_unknown_ids_are_404(server: ApiServer, path: str) -> None:
    with server.http() as http:
        response = http.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")


def test_bad_ids_never_reach_storage(server: ApiServer) -> None:
    with server.http() as http:
        http.post("/backups/create").raise_for_status()
        for path in ("/backups/..%2Fconfig/delete", "/backup/..%2Fkeys/restore"):
            assert http.post(path).status_code == 404
        assert http.get("/backups").json()["iterable"]  # the repository is intact
    assert (server.store_dir / "config").exists()


def test_empty_and_trivial_bodies_are_accepted(server: ApiServer) -> None:
    json_type = {"Content-Type": "application/json"}
    with server.http() as http:
        assert http.post("/backups/create", headers=json_type).status_code == 200
        assert http.post("/backups/create", headers=json_type, content=b"null").status_code == 200
        assert http.post("/backups/create", headers=json_type, content=b"{}").status_code == 200
        seeded = {"schema": {"migration": 0, "semantic": "MAJOR_0_MINOR_0_PATCH_1"}}
        assert http.post("/backups/create", json=seeded).status_code == 200
        backup = http.get("/backups").json()["iterable"][0]
        assert (
            http.post(
                f"/backup/{backup['id']}/restore", headers=json_type, content=b"{}"
            ).status_code
            == 200
        )
        assert http.post(f"/backup/{backup['id']}/restore", json=backup).status_code == 200


def test_malformed_bodies_are_explained(server: ApiServer) -> None:
    json_type = {"Content-Type": "application/json"}
    with server.http() as http:
        assert_text(
            http.post("/backups/create", headers=json_type, content=b"{oops"), 400, "Malformed JSON"
        )
        assert_text(http.post("/backups/create", json=[1, 2]), 422, "JSON object")
        assert_text(
            http.post("/backups/create", json={"schema": {"migration": "x"}}), 422, "schema"
        )
        assert_text(
            http.post("/backups/create", headers={"Content-Type": "text/plain"}, content=b"hello"),
            415,
            "application/json",
        )
        created = http.post("/backups/create").json()
        other = {**created, "id": "0.1.0_1"}
        assert_text(http.post(f"/backups/{created['id']}/delete", json=other), 400, "same id")
        assert http.get(f"/backup/{created['id']}").status_code == 200  # not deleted


def test_oversized_body_is_413(server: ApiServer) -> None:
    big = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    with server.http() as http:
        assert_text(
            http.post("/backups/create", headers={"Content-Type": "application/json"}, content=big),
            413,
            "too large",
        )

        def chunks() -> object:
            for _ in range(40):
                yield b"x" * 65536

        chunked = http.post(
            "/backups/create", headers={"Content-Type": "application/json"}, content=chunks()
        )  # type: ignore[arg-type]
        assert_text(chunked, 413, "too large")
        assert http.get("/backups").json() == {"iterable": []}  # nothing was started


# ---- units ---------------------------------------------------------------------------

STATUSES = {
    errors.CloudkeepError: 400,
    errors.UserError: 400,
    errors.DataSourceError: 400,
    errors.ConfigurationError: 511,
    errors.RepositoryNotFound: 511,
    errors.WrongPassphrase: 511,
    errors.KeyMissing: 511,
    errors.RepositoryExists: 409,
    errors.RepositoryChanged: 409,
    errors.DataInUse: 409,
    errors.Busy: 409,
    errors.Canceled: 409,
    errors.TooManyJobs: 429,
    errors.BackupNotFound: 404,
    errors.InvalidBackupId: 404,
    errors.FormatTooNew: 505,
    errors.RepositoryDamaged: 500,
    errors.UnsafeBackup: 500,
    errors.StoreUnreachable: 503,
    storage_base.StorageError: 400,
    storage_base.ObjectNotFound: 400,
    storage_base.ObjectExists: 400,
    storage_base.StorageUnavailable: 503,  # a StorageError and a StoreUnreachable
    storage_base.StoreRejected: 503,
}


@pytest.mark.parametrize("kind", list(STATUSES), ids=lambda kind: kind.__name__)
def test_status_of_every_error_class(kind: type[errors.CloudkeepError]) -> None:
    assert status_for(kind("x")) == STATUSES[kind]


def test_a_new_subclass_answers_its_nearest_mapped_base() -> None:
    class Stale(errors.RepositoryChanged):
        pass

    assert status_for(Stale("x")) == 409
    assert not hasattr(errors.RepositoryChanged, "http_status")  # the engine knows no statuses
