"""Store URL parsing: good URLs open, bad ones say what is supported, no secret leaks."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.storage.base import ObjectNotFound, StoreRejected
from cloudkeep.storage.opendal_store import redact, summarize_error
from cloudkeep.storage.retrying import RetryingStorage, RetryPolicy
from cloudkeep.storage.url import (
    SUPPORTED_SCHEMES,
    describe_store_url,
    drop_memory_store,
    open_store,
    store_timeouts,
)

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, deadline_seconds=2)
SECRET = "Sup3r-S3cret-Value"
B64_SECRET = base64.b64encode(SECRET.encode()).decode()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_DEFAULT_REGION",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "CLOUDKEEP_WEBDAV_USER",
        "CLOUDKEEP_WEBDAV_PASSWORD",
        "CLOUDKEEP_STORE_TIMEOUT",
        "CLOUDKEEP_STORE_RETRIES",
        "CLOUDKEEP_STORE_RETRY_DEADLINE",
    ):
        monkeypatch.delenv(key, raising=False)


def config_error(url: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    return str(info.value)


def test_supported_schemes_cover_the_core_services() -> None:
    for scheme in ("file", "memory", "s3", "gcs", "azblob", "webdav", "webdavs"):
        assert scheme in SUPPORTED_SCHEMES


def test_file_url_creates_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = open_store(root.as_uri())
    assert root.is_dir()
    assert store.describe() == f"file://{root}"
    store.put("x", b"1")
    assert (root / "x").read_bytes() == b"1"


def test_plain_relative_path_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("rel/store")
    assert store.describe() == f"file://{tmp_path / 'rel' / 'store'}"
    store.put("k", b"v")
    assert (tmp_path / "rel" / "store" / "k").read_bytes() == b"v"


def test_file_url_must_be_absolute_and_local() -> None:
    assert "file:///absolute/path" in config_error("file://somehost/x")
    assert "take no options" in config_error("file:///tmp/x?sync=1")


def test_file_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "plain-file"
    target.write_bytes(b"")
    with pytest.raises(ConfigurationError):
        open_store(str(target))


def test_memory_urls() -> None:
    fresh_a, fresh_b = open_store("memory://"), open_store("memory://")
    fresh_a.put("x", b"1")
    with pytest.raises(ObjectNotFound):
        fresh_b.get("x")
    shared = open_store("memory://url-test")
    shared.put("x", b"shared")
    assert open_store("memory://url-test").get("x") == b"shared"
    drop_memory_store("memory://url-test")
    with pytest.raises(ObjectNotFound):
        open_store("memory://url-test").get("x")
    assert "memory://" in config_error("memory://name/with/path")


def test_unknown_scheme_lists_supported_schemes() -> None:
    message = config_error("ftp://user:" + SECRET + "@host/x")
    for scheme in SUPPORTED_SCHEMES:
        assert scheme in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("", "empty"),
        ("s3://", "s3://bucket"),
        ("s3://bkt/p?region=x&region=y", "twice"),
        ("s3://bkt/p?region=x&storage=fast", "unknown option"),
        ("s3://bkt/p?region=x&force_path_style=maybe", "true or false"),
        ("s3://bkt/p?endpoint=ftp://x", "http"),
        ("s3://bucket/p", "region"),
        ("webdav:///nohost", "webdav://"),
        ("webdav://host:notaport/x", "port"),
        ("azblob://container/p", "AZURE_STORAGE_ACCOUNT"),
        ("gcs://", "gcs://bucket"),
        ("gcs://bkt/p?anonymous=maybe", "anonymous must be true or false"),
        ("s3:bucket", "s3://"),
        ("s3://bkt/../p?region=x", "'..'"),
    ],
)
def test_malformed_urls(url: str, hint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    message = config_error(url)
    assert hint in message
    assert "supported schemes: file, memory" in message


@pytest.mark.parametrize(
    "url",
    [
        f"s3://bucket/p?region=x&access_key_id=AKIA&secret_access_key={SECRET}",
        f"s3://AKIA:{SECRET}@bucket/p?region=x",
        f"azblob://c/p?endpoint=http://127.0.0.1:1&account_key={SECRET}",
        f"gcs://b/p?token={SECRET}",
        f"s3://bucket/p?endpoint=http://me:{SECRET}@127.0.0.1:9",
    ],
)
def test_credentials_in_the_url_are_refused_without_echo(url: str) -> None:
    message = config_error(url)
    assert "credentials" in message
    assert SECRET not in message


def test_bad_endpoint_is_not_echoed_with_credentials() -> None:
    message = config_error(f"s3://bucket/p?endpoint=ftp://me:{SECRET}@127.0.0.1:9")
    assert "endpoint must be an http:// or https:// URL, not 'ftp://127.0.0.1:9'" in message
    assert SECRET not in message


def test_s3_description_has_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET + "-session")
    store = open_store("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9&region=eu-west-1")
    text = store.describe()
    assert text == "s3://bucket/some/prefix at http://127.0.0.1:9"
    assert SECRET not in repr(store)
    assert "AKIAEXAMPLEKEY" not in text


def test_s3_region_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert open_store("s3://bucket/p").describe() == "s3://bucket/p"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert open_store("s3://bucket").describe() == "s3://bucket at http://127.0.0.1:9"


def test_gcs_and_azblob_construct(monkeypatch: pytest.MonkeyPatch) -> None:
    assert open_store("gcs://bucket/pre").describe() == "gcs://bucket/pre"
    assert open_store("gs://bucket").describe() == "gcs://bucket"
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "acct")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "a2V5LXZhbHVl")
    store = open_store("azblob://container/pre")
    assert store.describe() == "azblob://container/pre at https://acct.blob.core.windows.net"
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT")
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={B64_SECRET};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1",
    )
    store = open_store("azblob://ctr")
    assert store.describe() == "azblob://ctr at http://127.0.0.1:10000/devstoreaccount1"
    assert B64_SECRET not in repr(store)


@pytest.mark.parametrize("scheme", ["gdrive", "onedrive", "dropbox"])
def test_drive_services(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if scheme not in SUPPORTED_SCHEMES:
        assert "unknown scheme" in config_error(f"{scheme}://Backups")
        return
    env = f"CLOUDKEEP_{scheme.upper()}_ACCESS_TOKEN"
    monkeypatch.delenv(env, raising=False)
    assert env in config_error(f"{scheme}://Backups/cloudkeep")
    monkeypatch.setenv(env, SECRET)
    store = open_store(f"{scheme}://Backups/cloudkeep")
    assert store.describe() == f"{scheme}://Backups/cloudkeep"
    assert open_store(f"{scheme}:///Backups").describe() == f"{scheme}://Backups"


def test_webdav_url_forms() -> None:
    store = open_store("webdav://me@dav.example:8443/remote/backups")
    assert store.describe() == "webdav://dav.example:8443/remote/backups"
    assert open_store("webdavs://dav.example/x").describe() == "webdavs://dav.example/x"


@pytest.mark.parametrize("userinfo", [f"me:{SECRET}@", "me:@", f":{SECRET}@"])
def test_webdav_password_in_the_url_is_refused(userinfo: str) -> None:
    """A password in --store shows in the process list: the environment only."""
    with pytest.raises(ConfigurationError) as refused:
        open_store(f"webdavs://{userinfo}dav.example/x")
    message = str(refused.value)
    assert "CLOUDKEEP_WEBDAV_PASSWORD" in message
    assert SECRET not in message
    assert "\n" not in message


def test_describe_store_url_strips_secrets() -> None:
    text = describe_store_url(f"webdav://me:{SECRET}@h:1/p?token={SECRET}&region=x")
    assert SECRET not in text
    assert "me" not in text.split("//", 1)[1].split("/")[0]
    assert "region=x" in text
    assert describe_store_url("/plain/path") == "/plain/path"


def test_redact_and_summarize() -> None:
    assert SECRET not in redact(f"GET http://u:{SECRET}@h/x?X-Amz-Signature={SECRET}")
    assert redact(f"boom {SECRET} boom", [SECRET]) == "boom *** boom"

    class FakeError(Exception):
        pass

    fake = FakeError(
        "Unexpected (temporary) at stat => send http request\n\nContext:\n   url: "
        f"http://u:{SECRET}@h/x\n\nSource:\n   connection refused\n\nBacktrace:\n   0: x\n"
    )
    assert summarize_error(fake) == "send http request (connection refused)"


def test_timeout_and_retry_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert store_timeouts({}) == (60.0, 300.0)
    assert store_timeouts({"CLOUDKEEP_STORE_TIMEOUT": "2"}) == (2.0, 10.0)
    for bad in ("abc", "0", "-1", "inf"):
        with pytest.raises(ConfigurationError):
            store_timeouts({"CLOUDKEEP_STORE_TIMEOUT": bad})
    monkeypatch.setenv("CLOUDKEEP_STORE_RETRIES", "3")
    monkeypatch.setenv("CLOUDKEEP_STORE_RETRY_DEADLINE", "7.5")
    store = open_store("memory://")
    assert isinstance(store, RetryingStorage)
    assert (store.policy.attempts, store.policy.deadline_seconds) == (3, 7.5)
    monkeypatch.setenv("CLOUDKEEP_STORE_RETRIES", "0")
    with pytest.raises(ConfigurationError, match="at least 1"):
        open_store("memory://")
    monkeypatch.setenv("CLOUDKEEP_STORE_RETRIES", "many")
    with pytest.raises(ConfigurationError, match="CLOUDKEEP_STORE_RETRIES"):
        open_store("memory://")


def test_webdav_basic_auth_from_env(
    webdav_auth_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = webdav_auth_server
    user, password, address = server.user, server.password, server.address
    monkeypatch.setenv("CLOUDKEEP_WEBDAV_PASSWORD", password)
    user_in_url = open_store(f"webdav://{user}@{address}/auth-url", retry=FAST)
    user_in_url.put("a/b", b"user in the url")
    assert user_in_url.get("a/b") == b"user in the url"
    assert password not in user_in_url.describe()
    monkeypatch.setenv("CLOUDKEEP_WEBDAV_USER", user)
    with_env = open_store(f"webdav://{address}/auth-url", retry=FAST)
    assert [i.name for i in with_env.list("")] == ["a/b"]


def test_webdav_wrong_password_is_rejected_fast(
    webdav_auth_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = webdav_auth_server.address
    monkeypatch.setenv("CLOUDKEEP_WEBDAV_PASSWORD", SECRET)
    store = open_store(f"webdav://keeper@{address}/x", retry=FAST)
    started = time.monotonic()
    for operation in (lambda: store.put("a", b"1"), lambda: store.stat("a")):
        with pytest.raises(StoreRejected) as info:
            operation()
        assert SECRET not in str(info.value)
        assert "Unauthorized" in str(info.value)
    assert time.monotonic() - started < 1.0  # not retried: credentials do not heal


def test_missing_bucket_is_rejected(s3_server: Any) -> None:
    endpoint = s3_server.endpoint
    store = open_store(f"s3://no-such-bucket/p?endpoint={endpoint}", retry=FAST)
    with pytest.raises(StoreRejected, match="the bucket/container does not exist: create it"):
        store.put("x", b"1")
    with pytest.raises(StoreRejected, match="the bucket/container does not exist: create it"):
        list(store.list(""))
