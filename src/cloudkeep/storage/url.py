"""Store URLs: one string names a store; ``open_store`` turns it into a ``Storage``.

Credentials never come from the URL's query string (URLs end up in logs, shell
history and process lists); they come from the environment each service
documents. A WebDAV URL may name the user (``webdav://user@host/path``) but never
the password: a password in ``--store`` is visible to every local user in the
process list; it comes from ``CLOUDKEEP_WEBDAV_PASSWORD``.

Every store is built as: OpenDAL operator + ``TimeoutLayer`` (so no single call
hangs forever) -> ``OpenDALStorage`` -> ``RetryingStorage``. OpenDAL's own
``RetryLayer`` is deliberately not used: one retry loop keeps the total time
bounded and the attempt count honest.

Environment:

``CLOUDKEEP_STORE_TIMEOUT``
    seconds allowed for one control call (stat, list page, delete; default 60).
    Data transfers get five times as much per read/write call (default 300 s,
    enough for a 32 MiB object at 1 Mbit/s).
``CLOUDKEEP_STORE_RETRIES`` / ``CLOUDKEEP_STORE_RETRY_DEADLINE``
    attempts per operation and total retry time, see ``retrying.py``.

``memory://`` gives a fresh, empty in-process store on every call; ``memory://NAME``
returns the same process-wide store for the same NAME (tests that reopen a store).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PureWindowsPath
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import opendal
from opendal.layers import TimeoutLayer

from cloudkeep.errors import ConfigurationError
from cloudkeep.storage.base import Storage
from cloudkeep.storage.local import LocalStorage
from cloudkeep.storage.opendal_store import OpenDALStorage, redact, summarize_error
from cloudkeep.storage.retrying import RetryingStorage, RetryPolicy

ENV_TIMEOUT = "CLOUDKEEP_STORE_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
IO_TIMEOUT_FACTOR = 5.0

#: OpenDAL "drive" services we can offer when the installed build compiles them in.
_DRIVE_SERVICES = ("gdrive", "onedrive", "dropbox")
_BASE_SCHEMES = ("file", "memory", "s3", "gcs", "gs", "azblob", "webdav", "webdavs")
_CREDENTIAL_PARAMS = re.compile(
    r"(?i)(access_?key|secret|session_?token|token|password|passwd|account_?key|sas|credential)"
)


@functools.cache
def _available_drives() -> tuple[str, ...]:
    """Drive services that construct in this OpenDAL build (no network involved)."""
    available = []
    for service in _DRIVE_SERVICES:
        try:
            opendal.Operator(service, access_token="probe", root="/")
        except Exception:  # any failure means the service is unusable here
            continue
        available.append(service)
    return tuple(available)


def supported_schemes() -> tuple[str, ...]:
    """Every scheme ``open_store`` accepts here (probing the drives on first use)."""
    return _BASE_SCHEMES + _available_drives()


def __getattr__(name: str) -> tuple[str, ...]:
    # SUPPORTED_SCHEMES is computed on first access: only bad URLs and drive URLs
    # need the drive probe.
    if name == "SUPPORTED_SCHEMES":
        return supported_schemes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class _Spec:
    """What ``open_store`` needs to build one store."""

    service: str
    options: dict[str, str]
    description: str
    atomic_rename: bool = False
    secrets: list[str] = field(default_factory=list)
    #: Where the credentials come from, said when they are missing or refused.
    credentials_hint: str = ""


def _error(url: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"unusable store URL {describe_store_url(url)!r}: {why}; "
        f"supported schemes: {', '.join(supported_schemes())} (or a plain folder path)"
    )


def describe_store_url(url: str) -> str:
    """The URL without userinfo or secret-looking query values, safe for logs."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return redact(url)
    query = [
        (key, "***" if _CREDENTIAL_PARAMS.search(key) else redact(value))
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    text = f"{parts.scheme}://{host}{port}{parts.path}"
    if query:
        text += "?" + urlencode(query, safe=":/@*,")
    return redact(text)


def _params(url: str, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if _CREDENTIAL_PARAMS.search(key):
            why = f"credentials are not accepted in the URL ({key}=); set them in the environment"
            raise _error(url, why)
        if key not in allowed:
            accepted = ", ".join(allowed) or "none"
            raise _error(url, f"unknown option {key!r} (accepted: {accepted})")
        if key in params:
            raise _error(url, f"option {key!r} given twice")
        params[key] = value
    return params


def _flag(url: str, value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _error(url, f"{name} must be true or false, not {value!r}")


def _root(path: str) -> str:
    cleaned = "/".join(part for part in unquote(path).split("/") if part)
    if any(part in (".", "..") for part in cleaned.split("/")):
        raise ValueError("'.' and '..' are not allowed in store paths")
    return "/" + cleaned + ("/" if cleaned else "")


def _endpoint(url: str, value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        shown = describe_store_url(value)
        raise _error(url, f"endpoint must be an http:// or https:// URL, not {shown!r}")
    if "@" in urlsplit(value).netloc:
        raise _error(url, "credentials are not accepted in the endpoint; use the environment")
    return value.rstrip("/")


def _host_in(endpoint: str, domain: str) -> bool:
    """Whether the endpoint's host is ``domain`` or below it."""
    host = (urlsplit(endpoint).hostname or "").lower()
    return host == domain or host.endswith("." + domain)


def _no_userinfo(url: str, netloc: str) -> None:
    if "@" in netloc:
        raise _error(url, "credentials are not accepted in the URL; use the environment")


_WINDOWS = os.name == "nt"
_DRIVE_PATH = re.compile(r"^/(?P<drive>[A-Za-z]):(?P<rest>/.*)?$")


def file_url_path(url: str, *, windows: bool = _WINDOWS) -> str:
    """The local path a ``file:`` URL names (``ValueError`` if it names none).

    POSIX: ``file:///abs/path``. Windows: ``file:///C:/Users/a`` is
    ``C:\\Users\\a`` and ``file://server/share/x`` the UNC path
    ``\\\\server\\share\\x``; percent-escapes are decoded on both.
    """
    parts = urlsplit(url)
    if parts.query:
        raise ValueError("file URLs take no options")
    path = unquote(parts.path)
    host = parts.netloc
    if not windows:
        if host not in ("", "localhost") or not path.startswith("/"):
            raise ValueError("file URLs look like file:///absolute/path")
        return path
    if host not in ("", "localhost"):
        segments = [segment for segment in path.split("/") if segment]
        if not segments:
            raise ValueError("UNC file URLs look like file://server/share/folder")
        return str(PureWindowsPath("\\\\" + host + "\\" + "\\".join(segments)))
    drive = _DRIVE_PATH.match(path)
    if drive is None:
        raise ValueError("file URLs look like file:///C:/folder")
    rest = (drive["rest"] or "/").replace("/", "\\")
    return str(PureWindowsPath(f"{drive['drive']}:{rest}"))


def file_url(path: str, *, windows: bool = _WINDOWS) -> str:
    """The ``file:`` URL of an absolute local path (``file_url_path`` reverses it).

    POSIX paths are written unquoted, as they always were (a store's description
    names its cache folder); Windows paths as ``PureWindowsPath.as_uri`` writes them.
    """
    if windows:
        return PureWindowsPath(path).as_uri()
    return f"file://{path}"


def _file_spec(path: str) -> _Spec:
    root = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the store folder {root!r}: {exc.strerror or exc}"
        ) from None
    if not os.path.isdir(root):
        raise ConfigurationError(f"the store path {root!r} is not a folder")
    return _Spec("fs", {"root": root}, file_url(root), atomic_rename=True)


def _parse_file(url: str, env: Mapping[str, str]) -> _Spec:
    try:
        path = file_url_path(url)
    except ValueError as exc:
        raise _error(url, str(exc)) from None
    return _file_spec(path)


def _parse_s3(url: str, env: Mapping[str, str]) -> _Spec:
    parts = urlsplit(url)
    _no_userinfo(url, parts.netloc)
    bucket = parts.netloc
    if not bucket:
        raise _error(url, "s3 URLs look like s3://bucket/prefix?region=…")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}", bucket):
        # AWS's rules for new buckets are stricter (3 to 63, lowercase); older buckets and
        # look-alikes allow these.
        raise _error(
            url,
            "s3 bucket names are 3 to 63 lowercase letters, digits, '.' and '-', "
            f"starting with a letter or digit, not {bucket!r}",
        )
    params = _params(url, parts.query, ("endpoint", "region", "force_path_style"))
    endpoint = (
        params.get("endpoint") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    )
    options: dict[str, str] = {"bucket": bucket, "root": _root(parts.path)}
    if endpoint:
        options["endpoint"] = _endpoint(url, endpoint)
        if not _host_in(options["endpoint"], "amazonaws.com"):
            # EC2's metadata service hands out AWS credentials: a look-alike never takes them.
            options["disable_ec2_metadata"] = "true"
    region = params.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region and endpoint:
        region = "us-east-1"  # MinIO and most S3 look-alikes accept any signing region
    if not region:
        raise _error(url, "no region: add ?region=… or set AWS_REGION")
    options["region"] = region
    if "force_path_style" in params:
        path_style = _flag(url, params["force_path_style"], "force_path_style")
    else:
        # Look-alikes (MinIO, moto, Ceph) need path style; AWS prefers virtual
        # hosts, except for dotted bucket names, which break its TLS wildcard.
        path_style = bool(endpoint) or "." in bucket
    options["enable_virtual_host_style"] = "false" if path_style else "true"
    secrets = []
    for key, option in (
        ("AWS_ACCESS_KEY_ID", "access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
        ("AWS_SESSION_TOKEN", "session_token"),
    ):
        if env.get(key):
            options[option] = env[key]
            secrets.append(env[key])
    description = f"s3://{bucket}{options['root'].rstrip('/')}"
    if endpoint:
        description += f" at {describe_store_url(options['endpoint'])}"
    hint = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for "
    hint += "temporary ones) to a key that may read and write this bucket"
    return _Spec("s3", options, description, secrets=secrets, credentials_hint=hint)


_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]*[a-z0-9]")
_AZURE_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


def _check_gcs_bucket(url: str, bucket: str) -> None:
    """Google's bucket naming rules, so a typo is named here rather than as a 404."""
    longest = 222 if "." in bucket else 63
    if (
        not _GCS_BUCKET.fullmatch(bucket)
        or not 3 <= len(bucket) <= longest
        or any(len(part) > 63 for part in bucket.split("."))
    ):
        raise _error(
            url,
            f"gcs bucket names are 3 to 63 lowercase letters, digits, '-', '_' and '.', "
            f"starting and ending with a letter or digit, not {bucket!r}",
        )


def _parse_gcs(url: str, env: Mapping[str, str]) -> _Spec:
    """Credentials, first found: ``GOOGLE_OAUTH_ACCESS_TOKEN`` (a static token, as
    ``gcloud auth print-access-token`` prints), ``GOOGLE_APPLICATION_CREDENTIALS`` (a
    service account's key file), then what OpenDAL finds itself (gcloud's application
    default credentials, the VM metadata server on Google Cloud). ``?anonymous=true``
    sends unsigned requests (emulators, public buckets). An ``?endpoint=`` off
    googleapis.com never gets a token from the VM metadata server (it is Google's)."""
    parts = urlsplit(url)
    _no_userinfo(url, parts.netloc)
    if not parts.netloc:
        raise _error(url, "gcs URLs look like gcs://bucket/prefix")
    params = _params(url, parts.query, ("endpoint", "anonymous"))
    _check_gcs_bucket(url, parts.netloc)
    options = {"bucket": parts.netloc, "root": _root(parts.path)}
    if params.get("endpoint"):
        options["endpoint"] = _endpoint(url, params["endpoint"])
        if not _host_in(options["endpoint"], "googleapis.com"):
            options["disable_vm_metadata"] = "true"
    secrets = []
    if _flag(url, params.get("anonymous", "false"), "anonymous"):
        options.update(allow_anonymous="true", disable_vm_metadata="true")
        options["disable_config_load"] = "true"
    elif env.get("GOOGLE_OAUTH_ACCESS_TOKEN"):
        options["token"] = env["GOOGLE_OAUTH_ACCESS_TOKEN"]
        secrets.append(options["token"])
    elif env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        options["credential_path"] = env["GOOGLE_APPLICATION_CREDENTIALS"]
    description = f"gcs://{parts.netloc}{options['root'].rstrip('/')}"
    if "endpoint" in options:
        description += f" at {describe_store_url(options['endpoint'])}"
    hint = (
        "set GOOGLE_OAUTH_ACCESS_TOKEN (gcloud auth print-access-token) or "
        "GOOGLE_APPLICATION_CREDENTIALS (a service account key file) for an account "
        "that may read and write this bucket, or add ?anonymous=true for an emulator"
    )
    return _Spec("gcs", options, description, secrets=secrets, credentials_hint=hint)


def _azure_connection_string(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _parse_azblob(url: str, env: Mapping[str, str]) -> _Spec:
    parts = urlsplit(url)
    _no_userinfo(url, parts.netloc)
    if not parts.netloc:
        raise _error(url, "azblob URLs look like azblob://container/prefix")
    params = _params(url, parts.query, ("endpoint",))
    if not _AZURE_CONTAINER.fullmatch(parts.netloc) and parts.netloc not in ("$root", "$web"):
        raise _error(
            url,
            "azblob container names are 3 to 63 lowercase letters, digits and single "
            f"hyphens, starting and ending with a letter or digit, not {parts.netloc!r}",
        )
    conn = _azure_connection_string(env.get("AZURE_STORAGE_CONNECTION_STRING", ""))
    account = (
        conn.get("AccountName")
        or env.get("AZURE_STORAGE_ACCOUNT")
        or env.get("AZURE_STORAGE_ACCOUNT_NAME")
    )
    key = (
        conn.get("AccountKey")
        or env.get("AZURE_STORAGE_KEY")
        or env.get("AZURE_STORAGE_ACCOUNT_KEY")
    )
    sas = conn.get("SharedAccessSignature") or env.get("AZURE_STORAGE_SAS_TOKEN")
    endpoint = params.get("endpoint") or conn.get("BlobEndpoint")
    if not endpoint and account:
        protocol = conn.get("DefaultEndpointsProtocol", "https")
        suffix = conn.get("EndpointSuffix", "core.windows.net")
        endpoint = f"{protocol}://{account}.blob.{suffix}"
    if not endpoint:
        raise _error(
            url,
            "no account: set AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, "
            "AZURE_STORAGE_CONNECTION_STRING, or add ?endpoint=…",
        )
    options = {"container": parts.netloc, "root": _root(parts.path)}
    options["endpoint"] = _endpoint(url, endpoint)
    secrets = []
    if account:
        options["account_name"] = account
    if key:
        options["account_key"] = key
        secrets.append(key)
    if sas:
        options["sas_token"] = sas
        secrets.append(sas)
    description = f"azblob://{parts.netloc}{options['root'].rstrip('/')} at {options['endpoint']}"
    hint = (
        "set AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY (or AZURE_STORAGE_SAS_TOKEN, or "
        "AZURE_STORAGE_CONNECTION_STRING) for an account that may read and write this container"
    )
    return _Spec("azblob", options, description, secrets=secrets, credentials_hint=hint)


def _parse_webdav(url: str, env: Mapping[str, str]) -> _Spec:
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise _error(url, "invalid port") from None
    if not host:
        raise _error(url, "webdav URLs look like webdav://[user@]host[:port]/path")
    if parts.password is not None:
        raise ConfigurationError(
            f"a password in the store URL {describe_store_url(url)!r} is visible to every "
            "local user (process list, shell history): remove it and set "
            "CLOUDKEEP_WEBDAV_PASSWORD instead"
        )
    _params(url, parts.query, ())
    http = "https" if parts.scheme.lower() == "webdavs" else "http"
    netloc = f"[{host}]" if ":" in host else host
    endpoint = f"{http}://{netloc}" + (f":{port}" if port else "")
    options = {"endpoint": endpoint, "root": _root(parts.path)}
    user = unquote(parts.username) if parts.username else env.get("CLOUDKEEP_WEBDAV_USER")
    password = env.get("CLOUDKEEP_WEBDAV_PASSWORD")
    secrets = []
    if user:
        options["username"] = user
    if password:
        options["password"] = password
        secrets.append(password)
    description = f"{parts.scheme.lower()}://{netloc}" + (f":{port}" if port else "")
    description += options["root"].rstrip("/")
    hint = "check the user (CLOUDKEEP_WEBDAV_USER or user@ in the URL), "
    hint += "CLOUDKEEP_WEBDAV_PASSWORD, and that this user may write the folder"
    return _Spec(
        "webdav", options, description, atomic_rename=True, secrets=secrets, credentials_hint=hint
    )


def _parse_drive(url: str, env: Mapping[str, str]) -> _Spec:
    parts = urlsplit(url)
    service = parts.scheme.lower()
    _no_userinfo(url, parts.netloc)
    _params(url, parts.query, ())
    root = _root(f"/{unquote(parts.netloc)}/{parts.path}")
    prefix = f"CLOUDKEEP_{service.upper()}_"
    options = {"root": root}
    secrets = []
    for name in ("ACCESS_TOKEN", "REFRESH_TOKEN", "CLIENT_ID", "CLIENT_SECRET"):
        value = env.get(prefix + name)
        if value:
            options[name.lower()] = value
            secrets.append(value)
    if "access_token" not in options and "refresh_token" not in options:
        raise _error(
            url,
            f"set {prefix}ACCESS_TOKEN, or {prefix}REFRESH_TOKEN with "
            f"{prefix}CLIENT_ID and {prefix}CLIENT_SECRET",
        )
    return _Spec(service, options, f"{service}://{root.strip('/')}", secrets=secrets)


_PARSERS: dict[str, Callable[[str, Mapping[str, str]], _Spec]] = {
    "file": _parse_file,
    "s3": _parse_s3,
    "gcs": _parse_gcs,
    "gs": _parse_gcs,
    "azblob": _parse_azblob,
    "webdav": _parse_webdav,
    "webdavs": _parse_webdav,
}

_memory_lock = threading.Lock()
_memory_stores: dict[str, OpenDALStorage] = {}


def _memory_store(url: str) -> OpenDALStorage:
    parts = urlsplit(url)
    if parts.path.strip("/") or parts.query or "@" in parts.netloc:
        raise _error(url, "memory URLs look like memory:// or memory://name")
    name = parts.netloc
    if not name:
        return OpenDALStorage(opendal.Operator("memory"), "memory://")
    with _memory_lock:
        store = _memory_stores.get(name)
        if store is None:
            store = OpenDALStorage(opendal.Operator("memory"), f"memory://{name}")
            _memory_stores[name] = store
        return store


def drop_memory_store(url: str) -> None:
    """Forget the named in-process store of ``memory://NAME`` (frees its memory)."""
    with _memory_lock:
        _memory_stores.pop(urlsplit(url).netloc, None)


def store_timeouts(environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """(control, io) timeouts in seconds, from CLOUDKEEP_STORE_TIMEOUT or the defaults."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_TIMEOUT, "").strip()
    try:
        timeout = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ConfigurationError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds") from None
    if not timeout > 0 or timeout == float("inf"):
        raise ConfigurationError(f"{ENV_TIMEOUT} must be a positive number of seconds")
    return timeout, timeout * IO_TIMEOUT_FACTOR


def _spec(url: str, env: Mapping[str, str]) -> _Spec:
    if not url or not url.strip():
        raise _error(url, "empty store URL")
    url = url.strip()
    if "://" not in url:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\\]", url) and not os.path.exists(url):
            scheme = url.split(":", 1)[0]
            if scheme.lower() in supported_schemes():
                raise _error(url, f"write {scheme}://…")
        return _file_spec(url)
    scheme = url.split("://", 1)[0].lower()
    parser = _PARSERS.get(scheme)
    if parser is None and scheme in _available_drives():
        parser = _parse_drive
    if parser is None:
        raise _error(url, f"unknown scheme {scheme!r}")
    try:
        return parser(url, env)
    except ValueError as exc:
        raise _error(url, str(exc)) from None


def open_store(
    url: str,
    *,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Storage:
    """Open the store named by ``url``, wrapped with timeouts and retries.

    ``retry`` and ``timeout`` (control-call seconds; data calls get 5x) override
    the environment. Raises ``ConfigurationError`` for a bad URL or settings;
    nothing is contacted until the first operation.
    """
    policy = retry if retry is not None else RetryPolicy.from_env()
    if timeout is None:
        control, io = store_timeouts()
    elif timeout > 0:
        control, io = timeout, timeout * IO_TIMEOUT_FACTOR
    else:
        raise ConfigurationError("the store timeout must be positive")
    if url.strip().lower().startswith("memory:"):
        return RetryingStorage.with_policy(_memory_store(url.strip()), policy)
    spec = _spec(url, os.environ)
    try:
        operator = opendal.Operator(spec.service, **spec.options)
    except Exception as exc:
        reason = summarize_error(exc, spec.secrets)
        raise _error(url, f"{spec.service}: {reason}") from None
    operator = operator.layer(TimeoutLayer(timeout=control, io_timeout=io))
    raw: OpenDALStorage
    if spec.service == "fs":
        raw = LocalStorage(operator, spec.description, spec.options["root"], secrets=spec.secrets)
    else:
        raw = OpenDALStorage(
            operator,
            spec.description,
            atomic_rename=spec.atomic_rename,
            secrets=spec.secrets,
            credentials_hint=spec.credentials_hint,
        )
    return RetryingStorage.with_policy(raw, policy)
