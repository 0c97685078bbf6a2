"""A bad bucket or container name, missing credentials or refused access: every store says
so in one line that names the store and what to fix, and never retries it."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.storage.base import Storage, StoreRejected
from cloudkeep.storage.retrying import RetryPolicy
from cloudkeep.storage.url import open_store
from tests.conftest import (
    AZURITE_KEY,
    AzuriteServer,
    GCSServer,
    S3Server,
    WebDAVServer,
    start_server,
)

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, deadline_seconds=5)
SECRET = "Sup3r-S3cret-Value"
AWS_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
AZURE_HINT = "set AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY"
GCS_HINT = "set GOOGLE_OAUTH_ACCESS_TOKEN (gcloud auth print-access-token)"
WEBDAV_HINT = "CLOUDKEEP_WEBDAV_PASSWORD"


@pytest.fixture(autouse=True)
def _no_home_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """OpenDAL also looks in ~/.aws and ~/.config/gcloud: never the real HOME's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key in ("CLOUDSDK_CONFIG", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_OAUTH_ACCESS_TOKEN"):
        monkeypatch.delenv(key, raising=False)


def rejected(store: Storage, *, write: bool = False) -> str:
    """The one-line message of the refusal of a stat (or a put), checked to be one."""
    with pytest.raises(StoreRejected) as info:
        if write:
            store.put("config", b"c")
        else:
            store.stat("config")
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert SECRET not in message and AZURITE_KEY not in message
    return message


def refused_url(url: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("s3://ab/p?region=us-east-1", "s3 bucket names are 3 to 63"),
        ("s3://no*star/p?region=us-east-1", "s3 bucket names"),
        ("gcs://ab/p", "gcs bucket names are 3 to 63"),
        ("gcs://Upper-Case/p", "gcs bucket names"),
        ("gcs://-dash-first/p", "gcs bucket names"),
        (f"gcs://{'x' * 64}/p", "gcs bucket names"),
        ("azblob://ab/p?endpoint=http://127.0.0.1:9/acct", "azblob container names are 3 to 63"),
        ("azblob://double--hyphen/p?endpoint=http://127.0.0.1:9/a", "single hyphens"),
        ("azblob://Upper/p?endpoint=http://127.0.0.1:9/acct", "azblob container names"),
        ("azblob://under_score/p?endpoint=http://127.0.0.1:9/acct", "azblob container names"),
    ],
)
def test_bad_bucket_and_container_names_are_named_before_any_request(url: str, rule: str) -> None:
    message = refused_url(url)
    assert rule in message and "not '" in message


def test_valid_names_pass_the_checks() -> None:
    for url in (
        "gcs://my_bucket.example.com/p",
        "gcs://abc",
        "azblob://a-b-c/p?endpoint=http://127.0.0.1:9/acct",
        "azblob://$web?endpoint=http://127.0.0.1:9/acct",
        "s3://Legacy_Bucket/p?region=us-east-1",
    ):
        assert open_store(url).describe()


# -- S3 (moto) --------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_enforcing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto server that checks every request's access key (it knows none)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
        server = start_server(
            "moto-auth",
            lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            tmp_path_factory.mktemp("moto-auth-log"),
        )
    try:
        yield S3Server(f"http://127.0.0.1:{server.port}", "forbidden-bucket")
    finally:
        server.stop()


def test_s3_missing_bucket(s3_server: S3Server) -> None:
    url = s3_server.url_for("p").replace(s3_server.bucket, "no-such-bucket")
    message = rejected(open_store(url, retry=FAST), write=True)
    assert message.startswith("put 'config' on s3://no-such-bucket/p at http://127.0.0.1:")
    assert "the bucket/container does not exist: create it" in message


def test_s3_missing_credentials(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    message = rejected(open_store(s3_server.url_for("p"), retry=FAST))
    assert "on s3://cloudkeep-test/p at " in message
    assert f"no credentials found: {AWS_HINT}" in message


def test_s3_forbidden_bucket(s3_enforcing: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNTOMOTO")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    store = open_store(s3_enforcing.url_for("p"), retry=FAST)
    for write in (False, True):
        message = rejected(store, write=write)
        assert "on s3://forbidden-bucket/p at " in message
        assert "access denied (" in message and AWS_HINT in message


# -- Azure (Azurite) ----------------------------------------------------------


def test_azure_missing_container(azurite_server: AzuriteServer) -> None:
    store = open_store(azurite_server.url_for("p", container="no-such-container"), retry=FAST)
    for write in (False, True):
        message = rejected(store, write=write)
        assert "on azblob://no-such-container/p at http://127.0.0.1:" in message
        assert "the bucket/container does not exist: create it" in message


def test_azure_missing_credentials(
    azurite_server: AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    message = rejected(open_store(azurite_server.url_for("p"), retry=FAST))
    assert "on azblob://cloudkeep-test/p at " in message
    assert f"no credentials found: {AZURE_HINT}" in message


def test_azure_wrong_key_is_access_denied(
    azurite_server: AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_KEY", "A" * 86 + "==")
    store = open_store(azurite_server.url_for("p"), retry=FAST)
    for write in (False, True):
        message = rejected(store, write=write)
        assert "access denied (AuthorizationFailure" in message and AZURE_HINT in message


# -- WebDAV (rclone) ----------------------------------------------------------


@pytest.mark.parametrize("password", [None, SECRET])
def test_webdav_missing_or_wrong_password(
    webdav_auth_server: WebDAVServer, monkeypatch: pytest.MonkeyPatch, password: str | None
) -> None:
    monkeypatch.setenv("CLOUDKEEP_WEBDAV_USER", str(webdav_auth_server.user))
    if password is None:
        monkeypatch.delenv("CLOUDKEEP_WEBDAV_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("CLOUDKEEP_WEBDAV_PASSWORD", password)
    store = open_store(webdav_auth_server.url_for("repo"), retry=FAST)
    message = rejected(store, write=True)
    assert f"on webdav://{webdav_auth_server.address}/repo: access denied (" in message
    assert WEBDAV_HINT in message


# -- GCS (fake-gcs-server; a local stand-in where it cannot refuse) ----------------


def test_gcs_missing_bucket(gcs_server: GCSServer) -> None:
    store = open_store(gcs_server.url_for("p", bucket="no-such-bucket"), retry=FAST)
    message = rejected(store, write=True)
    assert "on gcs://no-such-bucket/p at http://127.0.0.1:" in message
    assert "the bucket/container does not exist: create it" in message


def test_gcs_missing_credentials(gcs_server: GCSServer) -> None:
    url = gcs_server.url_for("p").replace("&anonymous=true", "")
    message = rejected(open_store(url, retry=FAST))
    assert "on gcs://cloudkeep-test/p at " in message
    assert f"no credentials found: {GCS_HINT}" in message and "?anonymous=true" in message


def test_gcs_access_token_is_sent_as_a_bearer_token(
    gcs_server: GCSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", SECRET)
    url = gcs_server.url_for("token").replace("&anonymous=true", "")
    store = open_store(url, retry=FAST)
    store.put("data/x", b"with a token")
    assert open_store(url).get("data/x") == b"with a token"
    assert SECRET not in repr(store)


class _Refusing(BaseHTTPRequestHandler):
    """Answers every request with ``answer`` (status, content type, body), recording the
    Authorization headers sent: a service refusing what no emulator here refuses."""

    seen: list[str] = []  # noqa: RUF012 - one server per test, reset by it
    answer: tuple[int, str, bytes] = (500, "text/plain", b"")

    def _refuse(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        status, content_type, body = self.answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _refuse

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[str]:
    """A loopback endpoint answering ``_Refusing.answer`` to everything."""
    _Refusing.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_s3_bucket_name_refused_by_the_service(
    refusing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS refuses some names older rules allowed (moto accepts any name)."""
    error = b"<Error><Code>InvalidBucketName</Code><Message>The specified bucket is not valid."
    error += b"</Message></Error>"
    monkeypatch.setattr(_Refusing, "answer", (400, "application/xml", error))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACLOUDKEEPTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    store = open_store(f"s3://Old_Style/p?endpoint={refusing}&region=us-east-1", retry=FAST)
    message = rejected(store, write=True)
    assert "on s3://Old_Style/p at " in message
    assert "the service refuses the bucket/container name (InvalidBucketName" in message
    assert message.endswith("fix it in the store URL")


def test_gcs_forbidden_bucket(refusing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fake-gcs-server checks no credentials: a stand-in answers as GCS does."""
    error = {"error": {"code": 403, "message": "caller does not have storage.objects.get access"}}
    monkeypatch.setattr(_Refusing, "answer", (403, "application/json", json.dumps(error).encode()))
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", SECRET)
    store = open_store(f"gcs://private-bucket/p?endpoint={refusing}", retry=FAST)
    for write in (False, True):
        message = rejected(store, write=write)
        assert f"on gcs://private-bucket/p at {refusing}: access denied (HTTP 403: " in message
        assert "caller does not have storage.objects.get access" in message
        assert GCS_HINT in message
    assert _Refusing.seen and set(_Refusing.seen) == {f"Bearer {SECRET}"}
