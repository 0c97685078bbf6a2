"""Run the API with uvicorn: pick the address, enforce the bind policy, announce the URL.

The SDKs expect ``http://localhost:1000``; port 1000 is privileged on most systems, so
without an explicit ``--port`` the server falls back to the first free port of
39300-39333, the range the SDK wrapper scans with ``HEAD /.well-known/health``.
The socket is bound here (not by uvicorn) so the chosen port is known and printed
before serving, with no window where another process could take it.

Connections are read by ``protocol.GuardedHttpProtocol`` (a deadline and a size cap on
every request, against slow clients); the descriptor limit is raised so that many
such clients cannot keep real ones out. With ``--tls-cert``/``--tls-key`` the server
speaks HTTPS, which is what an off-loopback server needs: the application key
travels in every request.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Literal

import uvicorn

from cloudkeep.api.app import create_app
from cloudkeep.api.appkeys import AppKeyVerifier
from cloudkeep.api.jobs import DEFAULT_MAX_QUEUED
from cloudkeep.api.protocol import DEFAULT_REQUEST_TIMEOUT, protocol_for
from cloudkeep.api.security import DEFAULT_MAX_BODY, is_loopback_name
from cloudkeep.config import Schedule
from cloudkeep.errors import ConfigurationError
from cloudkeep.platform import raise_descriptor_limit
from cloudkeep.settings import Settings, warn_if_exposed

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FALLBACK_PORTS",
    "bind_listening_socket",
    "raise_descriptor_limit",
    "serve",
    "url_for",
]

log = logging.getLogger("cloudkeep.api")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1000
FALLBACK_PORTS = range(39300, 39334)
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


class _Server(uvicorn.Server):
    """Cancels the jobs as soon as a stop is requested.

    Uvicorn's graceful shutdown waits for open connections, and a streamed creation
    stays open until its job ends: canceling first lets them end within seconds.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # In a thread: the signal arrives on the event loop's thread, which may be
        # inside the job manager's lock at that moment.
        threading.Thread(target=self._on_exit, name="cloudkeep-stop", daemon=True).start()
        super().handle_exit(sig, frame)


def _announce(message: str) -> None:
    """Flushed: whoever started the server may be waiting on a pipe for the URL."""
    print(message, flush=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host = "127.0.0.1"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def bind_listening_socket(
    host: str,
    port: int | None,
    *,
    default_port: int = DEFAULT_PORT,
    fallback: Iterable[int] = FALLBACK_PORTS,
    notice: Callable[[str], None] = _announce,
) -> socket.socket:
    """Bind ``port`` exactly when given; otherwise the default, then the fallback range."""
    if port is not None:
        try:
            return _bind(host, port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
            ) from None
    try:
        return _bind(host, default_port)
    except OSError as exc:
        first_error = exc.strerror or str(exc)
    for candidate in fallback:
        try:
            sock = _bind(host, candidate)
        except OSError:
            continue
        notice(f"port {default_port} is not available ({first_error}); using {candidate}")
        return sock
    raise ConfigurationError(
        f"cannot listen on {host}: port {default_port} ({first_error}) and every port of "
        "39300-39333 are taken; pass --port"
    )


def url_for(host: str, port: int, tls: bool = False) -> str:
    """The URL to print: loopback shown as ``localhost`` (what the SDKs default to)."""
    if host in ("127.0.0.1", "localhost") or host in _WILDCARDS:
        name = "localhost"
    elif ":" in host:
        name = f"[{host}]"
    else:
        name = host
    return f"{'https' if tls else 'http'}://{name}:{port}"


# Enough for thousands of connections; more than a per-user server ever needs.
_WANTED_DESCRIPTORS = 65536


def _check_tls(cert: str | None, key: str | None) -> bool:
    """Whether TLS is on; a certificate or key that cannot be loaded is refused now."""
    if cert is None:
        if key is not None:
            raise ConfigurationError("--tls-key needs --tls-cert (the certificate chain)")
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigurationError(f"TLS file not found: {exc.filename or cert}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"cannot use the TLS certificate {cert}"
            + (f" and key {key}" if key else "")
            + f": {getattr(exc, 'reason', None) or exc}; give a PEM certificate chain "
            "(--tls-cert) and its unencrypted private key (--tls-key)"
        ) from None
    return True


def _warn(message: str) -> None:
    """One line on stderr, where the server's log goes."""
    print(message, file=sys.stderr, flush=True)


def _is_loopback(host: str) -> bool:
    try:
        return is_loopback_name(host) or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    require_app_key: bool = False,
    *,
    allowed_origins: Sequence[str] = (),
    app_key_dir: Path | None = None,
    log_level: str = "info",
    max_body: int = DEFAULT_MAX_BODY,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_queued_jobs: int = DEFAULT_MAX_QUEUED,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    schedule: str | None = None,
    announce: Callable[[str], None] = _announce,
) -> None:
    """Serve until interrupted (Ctrl-C cancels running jobs; nothing partial is left).

    Binding anything but loopback requires ``require_app_key``: the key, not the
    network, is then what authenticates clients, and without TLS it crosses the
    network in clear (a warning says so).
    """
    host = (host or DEFAULT_HOST).strip("[]")
    loopback = _is_loopback(host)
    if not loopback and not require_app_key:
        raise ConfigurationError(
            f"listening on {host} (not loopback) exposes your backups to the network; add "
            "--require-app-key and give clients a key from `cloudkeep app-key create`"
        )
    if not (request_timeout > 0 and math.isfinite(request_timeout)):
        raise ConfigurationError("--request-timeout must be a positive number of seconds")
    if max_queued_jobs < 1:
        raise ConfigurationError("--max-queued-jobs must be at least 1")
    tls = _check_tls(tls_cert, tls_key)
    chosen: Schedule | Literal["config"] | None = "config"
    if schedule is not None:
        chosen = Schedule.parse(schedule)  # ConfigurationError: one line, exit 1
    if not loopback and not tls:
        _warn(
            f"warning: serving on {host} over plain HTTP: the application key (X-Application-ID) "
            "and your backups' metadata travel in clear and can be read on the network; "
            "give --tls-cert and --tls-key to serve HTTPS"
        )
    key_file = settings.passphrase_file if settings.passphrase else settings.default_key_file
    if key_file is not None:
        warn_if_exposed(key_file, _warn)
    raise_descriptor_limit(_WANTED_DESCRIPTORS)
    if settings.data is None:
        announce(f"warning: {settings.no_data()}; backups fail (503) until there is one")
    elif settings.data_found_at:
        announce(
            f"backing up the Pieces OS data folder {settings.data} "
            f"(found at {settings.data_found_at})"
        )
    key_dir = app_key_dir or settings.config_dir
    if require_app_key and not AppKeyVerifier(key_dir).has_keys():
        announce(
            "warning: no application key issued yet; every request will be refused "
            "until you run `cloudkeep app-key create`"
        )
    sock = bind_listening_socket(host, port, notice=announce)
    bound_port = sock.getsockname()[1]
    app = create_app(
        settings,
        require_app_key=require_app_key,
        allowed_origins=list(allowed_origins),
        extra_hosts=[] if loopback or host in _WILDCARDS else [host],
        any_host=host in _WILDCARDS,
        app_key_dir=key_dir,
        max_body=max_body,
        max_queued_jobs=max_queued_jobs,
        tls=tls,
        schedule=chosen,
    )
    config = uvicorn.Config(
        app,
        http=protocol_for(request_timeout),
        log_level=log_level,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        ws_max_size=max_body,
        timeout_graceful_shutdown=10,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )

    def on_exit() -> None:
        app.state.scheduler.halt()  # before the jobs: no new scheduled job after this
        app.state.service.jobs.cancel_all()

    server = _Server(config, on_exit=on_exit)
    # Keep the event loop responsive while a backup's Python code holds the GIL.
    sys.setswitchinterval(0.001)
    url = url_for(host, bound_port, tls)
    announce(f"cloudkeep API listening on {url} (dashboard: {url}/, docs: {url}/docs)")
    active = app.state.scheduler.schedule
    announce(
        f"scheduled backups of {settings.data}: {active}" if active else "no scheduled backups"
    )
    log.info("serving %s from %s", settings.data, url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
