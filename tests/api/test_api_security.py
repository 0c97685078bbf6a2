"""DNS rebinding (Host), cross-site requests (Origin), application keys, for HTTP and WS."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest
from api_helpers import ApiServer, StartServer, cli_env, free_loopback_port
from pieces_os_client.api.backups_api import BackupsApi
from pieces_os_client.exceptions import ApiException
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from cloudkeep.api.appkeys import (
    AppKeyVerifier,
    create_app_key,
    key_file,
    list_app_keys,
    revoke_app_key,
)
from cloudkeep.api.security import GuardPolicy, is_loopback_name, split_host

NOTES = ["secret plans"]


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as-is (no client library fixing up the Host header)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@pytest.fixture
def server(start_server: StartServer) -> ApiServer:
    return start_server(notes=NOTES, args=("--allow-origin", "https://app.example"))


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "localhost.evil.example",
        "10.0.0.1:{port}",
        "127.0.0.1.nip.io",
        "[::2]:{port}",
        "localhost:notaport",
    ],
)
def test_foreign_host_is_403(server: ApiServer, host: str) -> None:
    with server.http() as http:
        response = http.get("/backups", headers={"Host": host.format(port=server.port)})
        assert response.status_code == 403
        assert response.headers["content-type"].startswith("text/plain")
        assert "DNS rebinding" in response.text
        created = http.post("/backups/create", headers={"Host": host.format(port=server.port)})
        assert created.status_code == 403
        assert http.get("/backups").json() == {"iterable": []}


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:{port}",
        "127.0.0.1:{port}",
        "127.9.8.7",
        "[::1]:{port}",
        "LOCALHOST:{port}",
    ],
)
def test_loopback_hosts_are_accepted(server: ApiServer, host: str) -> None:
    with server.http() as http:
        response = http.get("/backups", headers={"Host": host.format(port=server.port)})
    assert response.status_code == 200


def test_missing_host_is_403(server: ApiServer) -> None:
    answer = raw_request(server.port, b"GET /backups HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403")


def test_cross_origin_requests_are_403(server: ApiServer) -> None:
    with server.http() as http:
        for origin in (
            "http://evil.example",
            "null",
            f"http://localhost:{server.port + 1}",
            "http://127.0.0.1.nip.io",
        ):
            response = http.post("/backups/create", headers={"Origin": origin})
            assert response.status_code == 403, origin
            assert "cross-origin" in response.text
        assert http.get("/backups").json() == {"iterable": []}  # nothing was created


def test_same_origin_and_allow_listed_origins_pass(server: ApiServer) -> None:
    with server.http() as http:
        # Our own /docs page calling the API.
        own = http.get("/backups", headers={"Origin": f"http://127.0.0.1:{server.port}"})
        assert own.status_code == 200
        listed = http.get("/backups", headers={"Origin": "https://app.example"})
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == "https://app.example"
        preflight = http.options(
            "/backups/create",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-application-id",
            },
        )
        assert preflight.status_code == 200
        assert "x-application-id" in preflight.headers["access-control-allow-headers"].lower()
        refused = http.options(
            "/backups/create",
            headers={"Origin": "https://other.example", "Access-Control-Request-Method": "POST"},
        )
        assert refused.status_code == 403


def test_websockets_check_origin_and_host(server: ApiServer) -> None:
    url = f"ws://127.0.0.1:{server.port}/backups/streamed/progress"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin="http://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as creation:
        connect(
            f"ws://127.0.0.1:{server.port}/backups/create/streamed/websocket",
            origin="http://evil.example",
        )  # type: ignore[arg-type]
    assert creation.value.response.status_code == 403
    handshake = (
        b"GET /backups/streamed/progress HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert raw_request(server.port, handshake).startswith(b"HTTP/1.1 403")
    with connect(url, origin="https://app.example") as allowed:  # type: ignore[arg-type]
        assert '"backups":[]' in str(allowed.recv(timeout=10))
    with server.http() as http:
        assert http.get("/backups").json() == {"iterable": []}


def test_app_key_required(start_server: StartServer) -> None:
    server = start_server(notes=NOTES, args=("--require-app-key",))
    with server.http() as http:
        missing = http.get("/backups")
        assert missing.status_code == 401
        assert "app-key create" in missing.text
        assert http.get("/.well-known/health").status_code == 200  # discovery stays open
        assert http.get("/openapi.json").status_code == 200

    # Issued by the CLI while the server runs: picked up without a restart.
    issued = subprocess.run(
        [sys.executable, "-m", "cloudkeep", "app-key", "create"],
        env=cli_env(server),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = issued.stdout.strip().splitlines()[-1]
    assert key.startswith("ck_")
    assert key not in key_file(server.config_dir).read_text()

    created = BackupsApi(server.sdk(api_key=key)).backups_create_new_backup()
    listing = BackupsApi(server.sdk(api_key=key)).backups_snapshot()
    assert [b.id for b in listing.iterable] == [created.id]
    with pytest.raises(ApiException) as wrong:
        BackupsApi(server.sdk(api_key=key + "x")).backups_snapshot()
    assert wrong.value.status == 401
    with server.http() as http:
        assert http.get("/backups", headers={"X-Application-ID": ""}).status_code == 401
    url = f"ws://127.0.0.1:{server.port}/backups/streamed/progress"
    with pytest.raises(InvalidStatus) as refused:
        connect(url)
    assert refused.value.response.status_code == 401
    with connect(url, additional_headers={"X-Application-ID": key}) as feed:
        assert "backups" in str(feed.recv(timeout=10))
    assert key not in server.log()


def test_non_loopback_bind_needs_an_app_key(tmp_path: os.PathLike[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    env["CLOUDKEEP_CONFIG_DIR"] = str(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudkeep.api",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_loopback_port()),
            "--data",
            str(tmp_path),
            "--store",
            f"file://{tmp_path}/s",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "--require-app-key" in result.stderr


# ---- units ---------------------------------------------------------------------------


def test_split_host_and_loopback_names() -> None:
    assert split_host("localhost:1000") == ("localhost", 1000)
    assert split_host("[::1]:39300") == ("::1", 39300)
    assert split_host("[::1]") == ("::1", None)
    assert split_host("Example.COM.") == ("example.com", None)
    for bad in ("", "a:b:c", "[::1", "host:99999", "[::1]x"):
        assert split_host(bad) is None, bad
    assert is_loopback_name("localhost") and is_loopback_name("127.1.2.3")
    assert is_loopback_name("::1")
    assert not is_loopback_name("localhost.evil") and not is_loopback_name("0.0.0.0")


def test_origin_policy() -> None:
    policy = GuardPolicy(allowed_origins=GuardPolicy.normalize_origins(["https://App.example/"]))
    assert policy.origin_allowed("https://app.example", "localhost:1000")
    assert policy.origin_allowed("http://localhost:1000", "localhost:1000")
    assert policy.origin_allowed("http://localhost", "localhost:80")
    assert not policy.origin_allowed("http://localhost:1001", "localhost:1000")
    assert not policy.origin_allowed("https://localhost:1000", "localhost:1000")
    assert not policy.origin_allowed("http://evil.example:1000", "evil.example:1000")
    assert not policy.origin_allowed("null", "localhost:1000")
    assert not policy.origin_allowed("file://", "localhost:1000")


def test_app_key_storage(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    config = Path(tmp_path) / "config"
    verifier = AppKeyVerifier(config)
    assert not verifier.has_keys() and not verifier.verify("anything")
    first = create_app_key(config, label="laptop")
    second = create_app_key(config)
    path = key_file(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert first not in text and second not in text
    assert verifier.verify(first) and verifier.verify(second)
    assert not verifier.verify(first[:-1]) and not verifier.verify(None) and not verifier.verify("")
    listed = list_app_keys(config)
    assert [k["label"] for k in listed] == ["laptop", ""]
    assert all("sha256" not in k for k in listed)
    assert revoke_app_key(config, listed[0]["id"])
    assert not revoke_app_key(config, listed[0]["id"])
    assert not verifier.verify(first) and verifier.verify(second)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob(".*.tmp"))


def _app_key_cli(server: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudkeep", "app-key", *args],
        env=cli_env(server),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_app_key_list_and_revoke_on_a_running_server(start_server: StartServer) -> None:
    server = start_server(notes=NOTES, args=("--require-app-key",))
    laptop = _app_key_cli(server, "create", "--label", "laptop").stdout.strip().splitlines()[-1]
    phone = _app_key_cli(server, "create", "--label", "phone").stdout.strip().splitlines()[-1]
    assert laptop.startswith("ck_") and phone.startswith("ck_")
    with server.http() as http:
        for key in (laptop, phone):
            assert http.get("/backups", headers={"X-Application-ID": key}).status_code == 200

    listed = _app_key_cli(server, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert [line.split()[-1] for line in lines] == ["laptop", "phone"]
    assert all(line.split()[3] == "UTC" for line in lines)  # id, date, time, UTC, label
    document = json.loads(key_file(server.config_dir).read_text())
    stored = {entry["sha256"] for entry in document["keys"]}
    for secret in (laptop, phone, *stored):
        assert secret not in listed.stdout
    laptop_id = lines[0].split()[0]

    revoked = _app_key_cli(server, "revoke", laptop_id)
    assert revoked.returncode == 0 and laptop_id in revoked.stdout
    # The running server refuses the revoked key at its next request, and only that key.
    with server.http() as http:
        refused = http.get("/backups", headers={"X-Application-ID": laptop})
        assert refused.status_code == 401
        assert http.get("/backups", headers={"X-Application-ID": phone}).status_code == 200
    assert [line.split()[-1] for line in _app_key_cli(server, "list").stdout.splitlines()] == [
        "phone"
    ]

    unknown = _app_key_cli(server, "revoke", laptop_id)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        f"cloudkeep: error: no application key with id {laptop_id!r} (see 'cloudkeep app-key list')"
    ]
    assert "Traceback" not in unknown.stderr


def test_app_key_list_without_keys(tmp_path: os.PathLike[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    env["CLOUDKEEP_CONFIG_DIR"] = str(tmp_path)
    listed = subprocess.run(
        [sys.executable, "-m", "cloudkeep", "app-key", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0 and "no application keys" in listed.stdout


@pytest.mark.parametrize(
    "damage", [b"\xff\xfe not text", b'{"keys": ', b'{"keys": 5}'], ids=["binary", "json", "shape"]
)
def test_a_damaged_key_file_is_one_line_and_refuses_every_request(
    start_server: StartServer, damage: bytes
) -> None:
    server = start_server(notes=NOTES, args=("--require-app-key",))
    key = _app_key_cli(server, "create").stdout.strip().splitlines()[-1]
    path = key_file(server.config_dir)
    path.write_bytes(damage)
    for args in (("list",), ("revoke", "abcd1234"), ("create",)):
        result = _app_key_cli(server, *args)
        assert result.returncode == 1, result.stderr  # a user (configuration) error
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("cloudkeep: error: ") and str(path) in line
        assert "damaged" in line
    with server.http() as http:
        refused = http.get("/backups", headers={"X-Application-ID": key})
    assert refused.status_code == 511 and str(path) in refused.text
    assert "Traceback" not in server.log()
