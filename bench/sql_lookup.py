"""A point lookup in a backed-up database, queried in place on an S3 store (issue 14, item 3).

The benchmark's data folder (``generate.py``; its largest database is
``snippets.db``) is backed up with the real CLI to a moto S3 server on loopback;
then each lookup is ``cloudkeep sql latest snippets.db "SELECT ... WHERE id = N"``
in a NEW process (``--json``): its wall time, the command's own time from start to
answer, the query's time and the bytes it fetched from the store.

What a cold lookup has locally: the repository's local cache as any earlier command
leaves it (the index files and the backup's manifest, under CLOUDKEEP_CACHE_DIR),
nothing else; no page, chunk list or frame is kept between processes. The first
command on a fresh machine also downloads those: measured once too, with an empty
cache folder, and the store's index and manifest sizes are reported.

    .venv/bin/python bench/sql_lookup.py --size-mib 600            # needs numpy (generate.py)
    .venv/bin/python bench/sql_lookup.py --size-mib 600 --restore  # also time a full restore
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate

BENCH = Path(__file__).resolve().parent
MIB = 1024 * 1024
BUCKET = "cloudkeep-bench"
PASSPHRASE = "sql lookup bench passphrase"
AWS = {
    "AWS_ACCESS_KEY_ID": "AKIACLOUDKEEPBENCH",
    "AWS_SECRET_ACCESS_KEY": "cloudkeep-bench-secret",
    "AWS_REGION": "us-east-1",
}
QUERY = "SELECT id, title, language, length(body), updated FROM snippets WHERE id = {id}"


def log(message: str) -> None:
    print(f"[sql_lookup] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
            with urllib.request.urlopen(request, timeout=5):
                return process, endpoint
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"moto did not start; see {log_path}") from None
            time.sleep(0.2)


def prepare_data(root: Path, size_mib: float, seed: int) -> Path:
    """The generated folder (reused across runs, as bench/run.py does), copied to a
    working folder so the backup never changes the generated one."""
    base, marker = root / "base", root / "base.json"
    info = json.loads(marker.read_text()) if marker.exists() else {}
    if not (base.exists() and info.get("seed") == seed and info.get("size_mib") == size_mib):
        shutil.rmtree(base, ignore_errors=True)
        log(f"generating {size_mib:g} MiB (seed {seed}) in {base}")
        stats = generate.generate(base, size_mib=size_mib, seed=seed)
        marker.write_text(
            json.dumps({"seed": seed, "size_mib": size_mib, "rows": stats.rows}, indent=2)
        )
    data = root / "sql-lookup-data"
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(data)], check=True)
    return data / generate.APP_DIR


class Cli:
    def __init__(self, data: Path, store: str, home: Path) -> None:
        self.data, self.store, self.home = data, store, home
        (home / "config").mkdir(parents=True, exist_ok=True)
        passphrase = home / "passphrase"
        passphrase.write_text(PASSPHRASE + "\n")
        passphrase.chmod(0o600)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
        self.env.update(AWS, HOME=str(home), CLOUDKEEP_CONFIG_DIR=str(home / "config"))
        self.env["CLOUDKEEP_PASSPHRASE_FILE"] = str(passphrase)

    def run(self, *args: str, cache: Path) -> tuple[subprocess.CompletedProcess[str], float]:
        env = {**self.env, "CLOUDKEEP_CACHE_DIR": str(cache)}
        command = [sys.executable, "-m", "cloudkeep", "--data", str(self.data)]
        started = time.perf_counter()
        done = subprocess.run(
            [*command, "--store", self.store, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"cloudkeep {' '.join(args)} failed: {done.stderr}")
        return done, wall


def store_sizes(endpoint: str, prefix: str) -> dict[str, int]:
    """Bytes per top-level folder of the store (index, snapshots, data...)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    sizes: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            kind = item["Key"][len(prefix) :].split("/", 1)[0]
            sizes[kind] = sizes.get(kind, 0) + item["Size"]
    return sizes


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_REGION"],
    }


def lookup(cli: Cli, row_id: int, cache: Path) -> dict[str, Any]:
    done, wall = cli.run(
        "sql", "latest", "snippets.db", QUERY.format(id=row_id), "--json", cache=cache
    )
    answer = json.loads(done.stdout)
    assert len(answer["rows"]) == 1 and answer["rows"][0][0] == row_id, answer
    return {
        "id": row_id,
        "wall_s": wall,
        "command_s": answer["total_ms"] / 1000,
        "query_s": answer["elapsed_ms"] / 1000,
        "fetched_bytes": answer["fetched_bytes"],
    }


def phases(cli: Cli, row_id: int, cache: Path) -> dict[str, float]:
    """Where a cold lookup's time goes, measured in this process (a fresh Workspace:
    the key derived again, nothing of the repository in memory); then a second lookup
    as a server answers it (``Workspace.database`` again: its lock, the manifest, the
    chunk lists and pages fetched again; the key and the index kept)."""
    saved = dict(os.environ)
    os.environ.update(cli.env, CLOUDKEEP_CACHE_DIR=str(cache))
    try:
        from cloudkeep.settings import Settings
        from cloudkeep.workspace import Workspace

        ws = Workspace(Settings.resolve(data=str(cli.data), store=cli.store))
        marks = [("start", time.perf_counter())]
        ws.repository()  # the passphrase's key derived (Argon2id), the config read
        marks.append(("unlock_s", time.perf_counter()))
        backup_id = ws.resolve("latest")
        marks.append(("resolve_latest_s", time.perf_counter()))
        with ws.reader() as reader:
            marks.append(("lock_and_index_s", time.perf_counter()))
            entries = ws.manifest(backup_id).files
            (entry,) = [e for e in entries if e.path == "snippets.db"]
            from cloudkeep.backups.sql import Database

            database = Database(reader, entry)
            marks.append(("chunk_lists_and_header_s", time.perf_counter()))
            database.query(QUERY.format(id=row_id))
            marks.append(("query_s", time.perf_counter()))
            database.close()
        # As a server answers its next query: repository open, index in memory.
        with ws.database(backup_id, "snippets.db") as database:
            database.query(QUERY.format(id=row_id // 2 + 1))
        marks.append(("next_query_in_a_server_s", time.perf_counter()))
        return {name: at - marks[n][1] for n, (name, at) in enumerate(marks[1:])}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=float, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lookups", type=int, default=7, help="cold lookups (new processes)")
    parser.add_argument("--workdir", type=Path, default=BENCH / "work")
    parser.add_argument("--restore", action="store_true", help="also time a full restore")
    args = parser.parse_args(argv)

    root = (args.workdir / f"{args.size_mib:g}mib").resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = prepare_data(root, args.size_mib, args.seed)
    database = data / "snippets.db"
    home = root / "sql-lookup-home"
    shutil.rmtree(home, ignore_errors=True)
    moto, endpoint = start_moto(root / "moto.log")
    prefix = f"sql-lookup-{int(time.time())}"
    store = f"s3://{BUCKET}/{prefix}?endpoint={endpoint}&region=us-east-1"
    try:
        cli = Cli(data, store, home)
        cache = home / "cache"
        log(f"backing up {data} to moto S3 ({endpoint})")
        _, backup_s = cli.run("backup", "--json", cache=cache)
        sizes = store_sizes(endpoint, prefix + "/")
        rows = json.loads(
            cli.run("sql", "latest", "snippets.db", "SELECT max(id) FROM snippets", "--json",
                    cache=cache)[0].stdout
        )["rows"][0][0]  # fmt: skip
        ids = random.Random(args.seed).sample(range(1, rows + 1), args.lookups)
        log(f"{args.lookups} cold lookups among {rows:,} rows")
        cold = [lookup(cli, row_id, cache) for row_id in ids]
        breakdown = phases(cli, ids[-1], cache)
        fresh_cache = home / "fresh-cache"
        first = lookup(cli, ids[0], fresh_cache)
        restore = None
        if args.restore:
            target = root / "sql-lookup-restore"
            shutil.rmtree(target, ignore_errors=True)
            _, restore_s = cli.run(
                "restore", "latest", "--target", str(target), "--fetch-all", cache=cache
            )
            restore = {"wall_s": restore_s}
            shutil.rmtree(target, ignore_errors=True)
    finally:
        moto.terminate()
        moto.wait(timeout=10)
    report = {
        "size_mib": args.size_mib,
        "database_bytes": database.stat().st_size,
        "rows": rows,
        "backup_wall_s": backup_s,
        "store_bytes": sizes,
        "query": QUERY,
        "cold": cold,
        "median": {
            key: statistics.median(item[key] for item in cold)
            for key in ("wall_s", "command_s", "query_s", "fetched_bytes")
        },
        "max": {
            key: max(item[key] for item in cold)
            for key in ("wall_s", "command_s", "query_s", "fetched_bytes")
        },
        "phases": breakdown,
        "fresh_cache": first,
        "restore": restore,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    median = report["median"]
    log(
        f"database {report['database_bytes'] / MIB:.0f} MiB; cold lookup median: "
        f"{median['wall_s']:.2f} s wall (process), {median['command_s']:.3f} s command, "
        f"{median['query_s'] * 1000:.1f} ms query, {median['fetched_bytes'] / MIB:.2f} MiB fetched"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
