"""The dashboard: its page and assets (types, CSP, open without the key, no traversal),
the application key as a WebSocket subprotocol, and ``GET /cloudkeep/backups``."""

from __future__ import annotations

import re
import socket
from importlib.resources import files

import pytest
from api_helpers import ApiServer, StartServer
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from cloudkeep.api.appkeys import create_app_key
from cloudkeep.api.security import GuardPolicy

NOTES = ["first note", "second note"]
ASSETS = {
    "/": "text/html",
    "/dashboard/dashboard.js": "text/javascript",
    "/dashboard/dashboard.css": "text/css",
    "/dashboard/favicon.svg": "image/svg+xml",
}


def raw_get(port: int, target: str, host: str | None = None) -> tuple[int, bytes]:
    """A GET sent verbatim (clients normalize dot segments and the Host header)."""
    host = host or f"127.0.0.1:{port}"
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode("latin-1"))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    answer = b"".join(chunks)
    return int(answer.split(b" ", 2)[1]), answer


@pytest.fixture
def keyed(start_server: StartServer) -> tuple[ApiServer, str]:
    server = start_server(notes=NOTES, args=("--require-app-key",))
    return server, create_app_key(server.config_dir)


def test_page_and_assets_are_served_with_their_types_and_a_strict_policy(
    start_server: StartServer,
) -> None:
    server = start_server(notes=NOTES)
    with server.http() as http:
        for path, media in ASSETS.items():
            response = http.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(media), path
            assert response.headers["x-content-type-options"] == "nosniff"
            policy = response.headers["content-security-policy"]
            assert "default-src 'self'" in policy
            assert "script-src 'self';" in policy and "style-src 'self';" in policy
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
            assert "frame-ancestors 'none'" in policy
            assert f"connect-src 'self' ws://127.0.0.1:{server.port};" in policy
            # Revalidated, not refetched: the ETag answers a 304.
            again = http.get(path, headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        assert http.head("/").status_code == 200
        page = http.get("/").text
        for missing in ("/dashboard/index.html", "/dashboard/nothing.js", "/dashboard/"):
            assert http.get(missing).status_code == 404, missing
    # Only this origin: no inline script or style, nothing from elsewhere.
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "style=" not in page and "<style" not in page
    assert re.search(r"(src|href)=\"(https?:)?//", page) is None
    for heading in (
        "Status",
        "Backups",
        "Files",
        "Compare backups",
        "Query a database",
        "Charts",
        "Settings",
    ):
        assert re.search(rf"<h2 id=\"[a-z-]+\">{heading}</h2>", page), heading
    assert ">Back up now</button>" in page
    assert 'aria-label="Backup progress"' in page and 'aria-label="Restore progress"' in page


def test_the_script_never_inserts_markup() -> None:
    """Store text (file names, SQL results, errors) goes in as text only."""
    script = (files("cloudkeep.api") / "dashboard" / "dashboard.js").read_text("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "new Function" not in script


def test_the_policy_names_the_socket_from_the_parsed_host(start_server: StartServer) -> None:
    """Rebuilt from the parsed Host (never copied), so nothing can be injected."""
    server = start_server(notes=NOTES)
    port = server.port
    for host, expected in (
        (f"LocalHost.:{port}", f"ws://localhost:{port};"),
        (f"[::1]:{port}", f"ws://[::1]:{port};"),
        ("127.0.0.1", "ws://127.0.0.1;"),
    ):
        status, answer = raw_get(port, "/", host=host)
        head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        assert status == 200 and f"connect-src 'self' {expected}" in head, host
    status, _ = raw_get(port, "/", host=f"127.0.0.1:{port}; script-src *")
    assert status == 403


def test_page_is_open_but_the_api_still_needs_the_key(keyed: tuple[ApiServer, str]) -> None:
    server, key = keyed
    with server.http() as http:
        for path in ASSETS:
            assert http.get(path).status_code == 200, path
        assert http.get("/cloudkeep/backups").status_code == 401
        assert http.get("/cloudkeep/status").status_code == 401
        answer = http.get("/cloudkeep/backups", headers={"X-Application-ID": key})
        assert answer.status_code == 200 and answer.json() == {"backups": []}
    # Dot segments and folders under /dashboard/ are not open: the API stays guarded.
    for target in (
        "/dashboard/../cloudkeep/backups",
        "/dashboard/%2e%2e/cloudkeep/backups",
        "/dashboard/..%2fcloudkeep%2fbackups",
        "/dashboard/a/../../backups",
        "/dashboard/.hidden.js",
        "/dashboard/x/dashboard.js",
    ):
        status, _ = raw_get(server.port, target)
        assert status == 401, target


@pytest.mark.parametrize(
    ("path", "open_"),
    [
        ("/", True),
        ("/dashboard/dashboard.js", True),
        ("/dashboard/dashboard.css", True),
        ("/dashboard/favicon.svg", True),
        ("/dashboard/", False),
        ("/dashboard", False),
        ("/dashboard/../backups", False),
        ("/dashboard/..", False),
        ("/dashboard/a/b.js", False),
        ("/dashboard/.env", False),
        ("/dashboard/x..y.js", False),
        ("/dashboard/dashboard.js/", False),
        ("//", False),
        ("/backups", False),
        ("/cloudkeep/backups", False),
    ],
)
def test_open_paths(path: str, open_: bool) -> None:
    assert GuardPolicy().is_open(path) is open_


def test_websocket_key_as_a_subprotocol(keyed: tuple[ApiServer, str]) -> None:
    server, key = keyed
    url = f"ws://127.0.0.1:{server.port}/backups/streamed/progress"
    origin = f"http://127.0.0.1:{server.port}"
    with connect(
        url,
        origin=origin,  # type: ignore[arg-type]
        subprotocols=["cloudkeep", f"cloudkeep.key.{key}"],  # type: ignore[list-item]
    ) as feed:
        assert feed.subprotocol == "cloudkeep"  # the key is not echoed
        assert "backups" in str(feed.recv(timeout=10))
    # Offered alone, the key protocol is the one answered (a browser needs an answer).
    with connect(url, subprotocols=[f"cloudkeep.key.{key}"]) as feed:  # type: ignore[list-item]
        assert feed.subprotocol == f"cloudkeep.key.{key}"
        assert "backups" in str(feed.recv(timeout=10))
    for offered in (["cloudkeep", f"cloudkeep.key.{key}x"], ["cloudkeep"], ["cloudkeep.key."]):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=origin, subprotocols=offered)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 401, offered
    # The HTTP API takes the key from the header only.
    with server.http() as http:
        answer = http.get("/backups", headers={"Sec-WebSocket-Protocol": f"cloudkeep.key.{key}"})
        assert answer.status_code == 401
    assert key not in server.log()


def test_websocket_subprotocol_without_a_required_key(start_server: StartServer) -> None:
    """The page offers ``cloudkeep`` whether or not the server wants a key."""
    server = start_server(notes=NOTES)
    url = f"ws://127.0.0.1:{server.port}/backups/streamed/progress"
    with connect(url, subprotocols=["cloudkeep"]) as feed:  # type: ignore[list-item]
        assert feed.subprotocol == "cloudkeep"
        assert "backups" in str(feed.recv(timeout=10))
    with connect(url) as feed:  # no subprotocol offered: none answered
        assert feed.subprotocol is None


def test_timeline_lists_every_backup_with_its_figures(start_server: StartServer) -> None:
    server = start_server(notes=NOTES)
    with server.http() as http:
        assert http.get("/cloudkeep/backups").json() == {"backups": []}
        first = http.post("/backups/create").json()
        second = http.post("/backups/create").json()
        listed = http.get("/cloudkeep/backups").json()["backups"]
        assert [b["id"] for b in listed] == [second["id"], first["id"]]  # newest first
        newest, oldest = listed
        assert set(newest) == {
            "id",
            "device_name",
            "created",
            "bytes",
            "added_bytes",
            "platform",
            "source",
            "files",
            "warnings",
        }
        assert oldest["device_name"] == "api-test-device"
        assert oldest["bytes"] == first["bytes"] > 0
        assert oldest["added_bytes"] > 0
        assert newest["added_bytes"] < oldest["added_bytes"]  # nothing new: dedup
        assert oldest["files"] >= 1 and oldest["warnings"] == 0
        assert oldest["source"] == str(server.data_dir)
        assert oldest["platform"] == first["platform"]
        assert http.post(f"/backups/{first['id']}/delete").status_code == 204
        listed = http.get("/cloudkeep/backups").json()["backups"]
        assert [b["id"] for b in listed] == [second["id"]]
        assert "/cloudkeep/backups" in http.get("/openapi.json").json()["paths"]


def test_timeline_of_a_store_listed_at_start(start_server: StartServer) -> None:
    """Backups the server did not make come from its listing of the store."""
    first = start_server(notes=NOTES)
    with first.http() as http:
        made = http.post("/backups/create").json()
    first.stop()
    again = start_server(root=first.root)
    with again.http() as http:
        listed = http.get("/cloudkeep/backups").json()["backups"]
    assert [b["id"] for b in listed] == [made["id"]]
    assert listed[0]["added_bytes"] > 0 and listed[0]["files"] >= 1
