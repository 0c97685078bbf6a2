"""``python -m cloudkeep.api``: run the HTTP service without the full CLI.

Same options as ``cloudkeep serve``; the tests start the server this way so they do
not depend on the CLI package.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

from cloudkeep.api.jobs import DEFAULT_MAX_QUEUED
from cloudkeep.api.protocol import DEFAULT_REQUEST_TIMEOUT
from cloudkeep.api.server import serve
from cloudkeep.cli.errors import exit_code_for
from cloudkeep.errors import CloudkeepError
from cloudkeep.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cloudkeep.api", description="Serve the Pieces OS Backups API."
    )
    parser.add_argument("--data", help="database folder to back up (CLOUDKEEP_DATA)")
    parser.add_argument("--store", help="store URL (CLOUDKEEP_STORE)")
    parser.add_argument("--passphrase-file", help="file holding the repository passphrase")
    parser.add_argument("--device-name", help="device name recorded in backups")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 1000, else 39300-39333)")
    parser.add_argument(
        "--require-app-key",
        action="store_true",
        help="require X-Application-ID (mandatory off loopback)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        help="browser origin allowed to call the API (repeatable)",
    )
    parser.add_argument(
        "--tls-cert", help="PEM certificate chain: serve HTTPS (needed off loopback)"
    )
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT,
        help="seconds a client has to send a whole request (default %(default)g)",
    )
    parser.add_argument(
        "--max-queued-jobs",
        type=int,
        default=DEFAULT_MAX_QUEUED,
        help="backups and restores allowed to wait; more are refused with 429 "
        "(default %(default)d)",
    )
    parser.add_argument(
        "--schedule",
        help="back up on this schedule instead of the configuration file's: hourly, "
        "daily, 'every 30m', 'at 02:00,14:30' or off",
    )
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.resolve(
            data=args.data,
            store=args.store,
            passphrase_file=args.passphrase_file,
            device_name=args.device_name,
        )
        serve(
            settings,
            args.host,
            args.port,
            args.require_app_key,
            allowed_origins=args.allow_origin,
            log_level=args.log_level,
            request_timeout=args.request_timeout,
            max_queued_jobs=args.max_queued_jobs,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            schedule=args.schedule,
            announce=partial(print, flush=True),
        )
    except CloudkeepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
