"""Run the API with uvicorn: pick the address, enforce the bind policy, announce the URL.

The SDKs expect ``http://localhost:1000``; port 1000 is privileged on most systems, so
without an explicit ``--port`` the server falls back to the first free port of
39300-39333, the range the SDK wrapper scans with ``HEAD /.well-known/health``.
The socket is bound here (not by uvicorn) so the chosen port is known and printed
before serving, with no window where another process could take it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from cloudkeep.api.app import create_app
from cloudkeep.api.appkeys import AppKeyVerifier
from cloudkeep.api.security import DEFAULT_MAX_BODY, is_loopback_name
from cloudkeep.errors import ConfigurationError
from cloudkeep.settings import Settings

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FALLBACK_PORTS",
    "bind_listening_socket",
    "serve",
    "url_for",
]

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


def url_for(host: str, port: int) -> str:
    """The URL to print: loopback shown as ``localhost`` (what the SDKs default to)."""
    if host in ("127.0.0.1", "localhost") or host in _WILDCARDS:
        name = "localhost"
    elif ":" in host:
        name = f"[{host}]"
    else:
        name = host
    return f"http://{name}:{port}"


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
    announce: Callable[[str], None] = _announce,
) -> None:
    """Serve until interrupted (Ctrl-C cancels running jobs; nothing partial is left).

    Binding anything but loopback requires ``require_app_key``: the key, not the
    network, is then what authenticates clients.
    """
    host = (host or DEFAULT_HOST).strip("[]")
    loopback = _is_loopback(host)
    if not loopback and not require_app_key:
        raise ConfigurationError(
            f"listening on {host} (not loopback) exposes your backups to the network; add "
            "--require-app-key and give clients a key from `cloudkeep app-key create`"
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
    )
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        ws_max_size=max_body,
        timeout_graceful_shutdown=10,
    )
    server = _Server(config, on_exit=app.state.service.jobs.cancel_all)
    # Keep the event loop responsive while a backup's Python code holds the GIL.
    sys.setswitchinterval(0.001)
    url = url_for(host, bound_port)
    announce(f"cloudkeep API listening on {url} (docs: {url}/docs)")
    logging.getLogger("cloudkeep.api").info("serving %s from %s", settings.data, url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
