"""``cloudkeep demo``: the whole story on made-up data, in a folder of its own.

Two parts. **The data** (``build_app_folder``, ``LiveWriter``, ``change_rows``,
``compare_folders``), made with the standard library only: a folder shaped like a
Pieces OS ``production/`` folder (several SQLite databases in WAL mode: assets with
code-like text, JSON metadata, blobs of many sizes and indexes; embeddings; a
workstream of events; conversations; settings; then JSON settings, logs and a few
binary files), a writer process that keeps committing to one database as the app
does, an update of 1% of the rows, and a comparison of two folders.

**The story** (``run_demo``): back up while the writer commits, check that
backup's image of the live database, change 1% of the rows, back up again,
restore the latest backup as a new machine would (everything fetched from the
store) and verify it, timing each step. It drives the engine through
``operations.run`` and ``Workspace`` with settings of its own (config, cache, key
file and store inside the demo folder): the user's configuration, trust records,
key and store are never read or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cloudkeep.errors import CloudkeepError, UserError

if TYPE_CHECKING:
    from cloudkeep.settings import Settings
    from cloudkeep.workspace import Workspace

__all__ = [
    "DEFAULT_SIZE_MIB",
    "AppFolder",
    "Comparison",
    "DemoReport",
    "FinishedFn",
    "LiveCapture",
    "LiveWriter",
    "StartedFn",
    "Step",
    "build_app_folder",
    "change_rows",
    "check_size",
    "compare_folders",
    "demo_folder",
    "run_demo",
]

MIB = 1024 * 1024
#: Big enough to show dedup and compression, small enough for well under a minute.
DEFAULT_SIZE_MIB = 200
MIN_SIZE_MIB = 1
MAX_SIZE_MIB = 4096
EMBEDDING_BYTES = 1536  # 384 float32 values: incompressible, as real embeddings are
#: The database the live writer commits to.
LIVE_DATABASE = "LTM/workstream.db"
_SIDE_FILES = ("-wal", "-shm", "-journal")
_BATCH = 2000

# ====================================================================== the data
_WORD_TEXT = (
    "user account session token cache buffer request response client server config value "
    "index count total item list map entry key name path file stream reader writer parse "
    "format render build load save open close read write fetch send handle process event "
    "state store query result error status code message data payload header body snippet "
    "asset tag embedding vector score rank search match filter sort limit offset page size "
    "window panel view model schema field record row column table database cursor lock "
    "queue worker task job timer retry backoff delay timeout context scope module package"
)
_WORDS = _WORD_TEXT.split()
_TEMPLATES = (
    "def {a}_{b}({c}, {d}={n}):",
    "    {a} = {b}.{c}({d}, {n})",
    "    if {a} is None:",
    "        return {a}_{b}",
    "    for {a} in {b}.{c}():",
    '        raise {A}Error("{w} {a}")',
    "class {A}{B}({C}):",
    "    # {w} {a} before {b} so {c} stays {d}",
    "from {a}.{b} import {A}{B}",
    "export function {a}{B}({c}: {A}): {B} {{",
    "  const {a} = await {b}.{c}({d});",
    "  return {a}.map(({b}) => {b}.{c});",
    "}}",
    "func ({a} *{A}) {B}({c} {C}) error {{",
    '    return fmt.Errorf("{w} {a}: %w", err)',
    "SELECT {a}, {b}, count(*) FROM {c} WHERE {d} > {n};",
    "UPDATE {a} SET {b} = '{w}' WHERE {c} = {n};",
)
_LANGUAGES = ("python", "typescript", "go", "sql", "rust", "bash", "java")
_APPLICATIONS = ("Visual Studio Code", "Chrome", "Terminal", "Slack", "IntelliJ IDEA", "Notion")
_EPOCH = 1_750_000_000.0


class _Text:
    """Code-like text from a pool of lines: quick to make, compresses like source code."""

    def __init__(self, rnd: random.Random, pool_lines: int = 4000) -> None:
        self.rnd = rnd
        self.lines = [self._line() for _ in range(pool_lines)]

    def _line(self) -> str:
        rnd = self.rnd
        a, b, c, d, e, f, g, w = rnd.choices(_WORDS, k=8)
        return rnd.choice(_TEMPLATES).format(
            a=a,
            b=b,
            c=c,
            d=d,
            A=e.capitalize(),
            B=f.capitalize(),
            C=g.capitalize(),
            w=w.capitalize(),
            n=rnd.choice((0, 1, 8, 64, 1024, rnd.randrange(10_000))),
        )

    def body(self, mean_chars: int) -> str:
        """About ``mean_chars`` characters on average, skewed small like real snippets."""
        chars = max(120, int(self.rnd.lognormvariate(0, 0.6) * mean_chars * 0.84))
        return "\n".join(self.rnd.choices(self.lines, k=max(3, chars // 38))) + "\n"

    def words(self, low: int, high: int) -> str:
        return " ".join(self.rnd.choices(_WORDS, k=self.rnd.randint(low, high)))


class _Inserts:
    """Rows waiting to be inserted, per statement, and the bytes of the values added."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.pending: dict[str, list[tuple[Any, ...]]] = {}
        self.bytes = 0
        self.rows = 0

    def add(self, sql: str, row: tuple[Any, ...]) -> None:
        rows = self.pending.setdefault(sql, [])
        rows.append(row)
        self.bytes += sum(len(v) if isinstance(v, str | bytes) else 8 for v in row)
        self.rows += 1
        if len(rows) >= _BATCH:
            self.db.executemany(sql, rows)
            rows.clear()

    def flush(self) -> None:
        for sql, rows in self.pending.items():
            self.db.executemany(sql, rows)
            rows.clear()


@contextlib.contextmanager
def _building(path: Path, schema: str) -> Iterator[_Inserts]:
    """A new database filled without a journal (quick), then put in WAL mode, as the
    app runs it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(schema)
        db.execute("BEGIN")
        inserts = _Inserts(db)
        yield inserts
        inserts.flush()
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()


_ASSETS_SCHEMA = """
CREATE TABLE assets(id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE formats(id INTEGER PRIMARY KEY, asset_id INTEGER NOT NULL REFERENCES assets(id),
    classification TEXT NOT NULL, text TEXT, file BLOB, updated REAL NOT NULL);
CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE asset_tags(asset_id INTEGER NOT NULL, tag_id INTEGER NOT NULL);
CREATE INDEX assets_updated ON assets(updated);
CREATE INDEX formats_asset ON formats(asset_id);
CREATE UNIQUE INDEX asset_tags_pair ON asset_tags(asset_id, tag_id);
"""
_VECTORS_SCHEMA = """
CREATE TABLE embeddings(id INTEGER PRIMARY KEY, asset_id INTEGER NOT NULL,
    model TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX embeddings_asset ON embeddings(asset_id);
"""
_WORKSTREAM_SCHEMA = """
CREATE TABLE events(id INTEGER PRIMARY KEY, created REAL NOT NULL, application TEXT NOT NULL,
    window_title TEXT NOT NULL, text TEXT NOT NULL, embedding BLOB NOT NULL);
CREATE INDEX events_created ON events(created);
CREATE TABLE summary(id INTEGER PRIMARY KEY CHECK (id = 1), events INTEGER NOT NULL);
"""
_CONVERSATIONS_SCHEMA = """
CREATE TABLE conversations(id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE messages(id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL,
    role TEXT NOT NULL, text TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX messages_conversation ON messages(conversation_id, created);
"""
_SETTINGS_SCHEMA = "CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
_INSERT_EVENT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)"


def _event(rnd: random.Random, text: _Text, number: int) -> tuple[Any, ...]:
    """Event ``number`` of the workstream: what the user looked at, and when."""
    return (
        number,
        _EPOCH + number * 7.0,
        rnd.choice(_APPLICATIONS),
        text.words(3, 8).capitalize(),
        text.body(900),
        rnd.randbytes(EMBEDDING_BYTES),
    )


def _build_assets(path: Path, rnd: random.Random, text: _Text, budget: int) -> tuple[int, int]:
    """Assets, each with a code format, some with a file (4 KiB to 4 MiB), and tags;
    returns (rows, assets)."""
    with _building(path, _ASSETS_SCHEMA) as inserts:
        for number, word in enumerate(_WORDS, 1):
            inserts.add("INSERT INTO tags VALUES (?, ?)", (number, word))
        asset = 0
        while inserts.bytes < budget:
            asset += 1
            created = _EPOCH + asset * 60.0
            updated = created + rnd.random() * 86_400
            metadata = {
                "language": rnd.choice(_LANGUAGES),
                "origin": {"application": rnd.choice(_APPLICATIONS), "line": rnd.randrange(400)},
                "tags": rnd.sample(_WORDS, rnd.randint(1, 4)),
                "sensitive": rnd.random() < 0.02,
                "score": {"priority": rnd.randint(0, 5), "reuse": rnd.randint(0, 40)},
            }
            inserts.add(
                "INSERT INTO assets VALUES (?, ?, ?, ?, ?, ?)",
                (
                    asset,
                    f"{rnd.getrandbits(128):032x}",
                    text.words(2, 6).capitalize(),
                    created,
                    updated,
                    json.dumps(metadata),
                ),
            )
            formats = "INSERT INTO formats(asset_id, classification, text, file, updated) "
            inserts.add(
                formats + "VALUES (?, 'code', ?, NULL, ?)", (asset, text.body(2400), updated)
            )
            if rnd.random() < 0.12:  # a screenshot or a file
                size = max(4096, min(4 * MIB, int(rnd.lognormvariate(10.6, 1.1))))
                inserts.add(
                    formats + "VALUES (?, 'file', NULL, ?, ?)",
                    (asset, rnd.randbytes(size), updated),
                )
            for tag in rnd.sample(range(1, len(_WORDS) + 1), rnd.randint(1, 4)):
                inserts.add("INSERT INTO asset_tags VALUES (?, ?)", (asset, tag))
        return inserts.rows, asset


def _build_vectors(path: Path, rnd: random.Random, assets: int, budget: int) -> int:
    with _building(path, _VECTORS_SCHEMA) as inserts:
        number = 0
        while inserts.bytes < budget:
            number += 1
            inserts.add(
                "INSERT INTO embeddings VALUES (?, ?, 'all-MiniLM-L6-v2', ?)",
                (number, (number - 1) % max(1, assets) + 1, rnd.randbytes(EMBEDDING_BYTES)),
            )
        return inserts.rows


def _build_workstream(path: Path, rnd: random.Random, text: _Text, budget: int) -> int:
    """Events and their count in ``summary``: the live writer keeps both in step."""
    with _building(path, _WORKSTREAM_SCHEMA) as inserts:
        number = 0
        while inserts.bytes < budget:
            number += 1
            inserts.add(_INSERT_EVENT, _event(rnd, text, number))
        inserts.add("INSERT INTO summary VALUES (1, ?)", (number,))
        return inserts.rows


def _build_conversations(path: Path, rnd: random.Random, text: _Text, budget: int) -> int:
    with _building(path, _CONVERSATIONS_SCHEMA) as inserts:
        conversation = message = 0
        while inserts.bytes < budget:
            conversation += 1
            created = _EPOCH + conversation * 3600.0
            inserts.add(
                "INSERT INTO conversations VALUES (?, ?, ?)",
                (conversation, text.words(2, 5).capitalize(), created),
            )
            for turn in range(rnd.randint(2, 12)):
                message += 1
                role = "user" if turn % 2 == 0 else "assistant"
                body = text.words(5, 40) if role == "user" else text.body(1500)
                inserts.add(
                    "INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
                    (message, conversation, role, body, created + turn * 20.0),
                )
        return inserts.rows


def _build_settings(path: Path, rnd: random.Random) -> int:
    with _building(path, _SETTINGS_SCHEMA) as inserts:
        for number in range(200):
            key = f"{rnd.choice(_WORDS)}.{rnd.choice(_WORDS)}.{number}"
            value = json.dumps({"value": rnd.randrange(1000), "enabled": rnd.random() < 0.5})
            inserts.add("INSERT INTO settings VALUES (?, ?)", (key, value))
        return inserts.rows


def _write_files(root: Path, rnd: random.Random, text: _Text, budget: int) -> list[str]:
    """JSON settings, a log, and binary files (a model shard, previews) filling ``budget``."""
    files: dict[str, bytes] = {
        "config/user.json": json.dumps(
            {"theme": "dark", "telemetry": False, "last_opened": _EPOCH, "os": sys.platform},
            indent=2,
        ).encode(),
        "config/models.json": json.dumps(
            {"models": [{"name": f"model-{n}", "enabled": n == 0} for n in range(8)]}, indent=2
        ).encode(),
        "config/connections.json": json.dumps(
            {
                "applications": [
                    {"name": name, "port": 39300 + n} for n, name in enumerate(_APPLICATIONS)
                ]
            },
            indent=2,
        ).encode(),
        "Support/logs/log-01.txt": text.body(max(4096, budget // 12)).encode(),
    }
    binary = max(0, budget - sum(len(v) for v in files.values()))
    files["Models/embedding-model.onnx"] = rnd.randbytes(binary // 2)
    for number, share in enumerate((4, 3, 2, 1)):
        files[f"Cache/previews/preview-{number}.png"] = rnd.randbytes(binary // 2 * share // 10)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return sorted(files)


@dataclass(frozen=True)
class AppFolder:
    """A made-up app data folder: where it is, its databases and its other files."""

    root: Path
    #: The SQLite databases, '/'-separated paths relative to ``root``.
    databases: tuple[str, ...]
    #: The other files, relative to ``root``.
    files: tuple[str, ...]
    #: Rows over every table of every database, as built.
    rows: int

    @property
    def live_database(self) -> Path:
        return self.root / LIVE_DATABASE

    def size(self) -> int:
        """Bytes of every file in the folder now (each database's -wal included)."""
        return _folder_size(self.root)


def _folder_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def build_app_folder(root: Path, size_mib: int = DEFAULT_SIZE_MIB, seed: int = 1) -> AppFolder:
    """Make a folder like a Pieces OS ``production/`` folder of about ``size_mib`` MiB
    in ``root`` (created; it must not hold anything yet)."""
    root.mkdir(parents=True, exist_ok=True)
    budget = size_mib * MIB
    rnd = random.Random(seed)
    text = _Text(rnd)
    # Shares of the values' bytes: pages, indexes and rows that do not fill a page
    # add 8% (assets) to 60% (events), so the folder ends close to ``size_mib``.
    rows, assets = _build_assets(root / "Assets/assets.db", rnd, text, budget * 45 // 100)
    rows += _build_vectors(root / "Search/vectors.db", rnd, assets, budget * 7 // 100)
    rows += _build_workstream(root / LIVE_DATABASE, rnd, text, budget * 13 // 100)
    rows += _build_conversations(root / "Conversations/copilot.db", rnd, text, budget * 6 // 100)
    rows += _build_settings(root / "Settings/settings.db", rnd)
    files = _write_files(root, rnd, text, budget * 12 // 100)
    databases = (
        "Assets/assets.db",
        "Search/vectors.db",
        LIVE_DATABASE,
        "Conversations/copilot.db",
        "Settings/settings.db",
    )
    return AppFolder(root, databases, tuple(files), rows)


# ------------------------------------------------------------- the live writer
class LiveWriter:
    """Another process that keeps committing to the workstream database, as the app
    does: each transaction adds an event and counts it in ``summary``, so a torn
    image of the database would show (``workstream_state``)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> LiveWriter:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "cloudkeep.demo", "--live-writer", str(self.database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "committing":  # its first commit is done
            self._fail()
        return self

    def committed(self) -> int:
        """How many events the database holds now (what the writer has committed)."""
        return workstream_state(self.database)[0]

    def stop(self) -> int:
        """Stop the writer after its current transaction; how many it committed."""
        process = self._process
        if process is None:
            return 0
        self._process = None
        out, err = process.communicate(timeout=60)  # closes its stdin: the signal to stop
        if process.returncode != 0 or not out.strip().isdigit():
            raise CloudkeepError(f"the demo's live writer failed: {_last_line(err)}")
        return int(out)

    def _fail(self) -> None:
        process = self._process
        self._process = None
        assert process is not None
        process.kill()
        _, err = process.communicate()
        raise CloudkeepError(f"the demo's live writer did not start: {_last_line(err)}")

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is not None:  # left early: no figures wanted
            self._process = None
            process.kill()
            process.communicate()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _write_live(database: Path, stop: IO[str], out: IO[str]) -> None:
    """The writer's loop (``python -m cloudkeep.demo --live-writer DB``): commit until
    ``stop`` (its stdin) closes, then print how many transactions it committed."""
    rnd = random.Random(os.getpid())
    text = _Text(rnd, pool_lines=500)
    db = sqlite3.connect(database, timeout=30, isolation_level=None)
    db.execute("PRAGMA synchronous=NORMAL")
    stopping = threading.Event()

    def wait_for_stop() -> None:
        stop.read()  # returns when the demo closes our stdin (or dies)
        stopping.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    committed = 0
    while not stopping.is_set():
        db.execute("BEGIN IMMEDIATE")
        (number,) = db.execute("SELECT events + 1 FROM summary").fetchone()
        db.execute(_INSERT_EVENT, _event(rnd, text, number))
        db.execute("UPDATE summary SET events = ?", (number,))
        db.execute("COMMIT")
        committed += 1
        if committed == 1:
            out.write("committing\n")
            out.flush()
        time.sleep(0.002)  # an app commits in bursts, not flat out
    db.close()
    out.write(f"{committed}\n")


def workstream_state(database: Path) -> tuple[int, bool]:
    """(events, consistent) of a workstream database: consistent when the events
    are numbered 1..n without a gap and ``summary`` counts n of them."""
    db = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
    try:
        count, top = db.execute("SELECT count(*), coalesce(max(id), 0) FROM events").fetchone()
        (counted,) = db.execute("SELECT events FROM summary").fetchone()
    finally:
        db.close()
    return int(count), count == top == counted


# ------------------------------------------------------------------ a change
#: (database, table, which rows, column, kind of new value) of what a day of use changes.
_CHANGES = (
    ("Assets/assets.db", "assets", "1", "metadata", "json"),
    ("Assets/assets.db", "formats", "classification = 'code'", "text", "code"),
    ("Search/vectors.db", "embeddings", "1", "vector", "vector"),
    (LIVE_DATABASE, "events", "1", "text", "code"),
    ("Conversations/copilot.db", "messages", "1", "text", "code"),
    ("Settings/settings.db", "settings", "1", "value", "json"),
)


def change_rows(folder: AppFolder, fraction: float = 0.01, seed: int = 3) -> int:
    """Update ``fraction`` of the rows of the main tables, picked all over each one, in
    transactions of 100 rows as an app would; rewrite one JSON file. Returns the rows
    changed."""
    rnd = random.Random(seed)
    text = _Text(rnd, pool_lines=1000)
    changed = 0
    for database, table, which, column, kind in _CHANGES:
        db = sqlite3.connect(folder.root / database, isolation_level=None)
        try:
            ids = [row[0] for row in db.execute(f"SELECT rowid FROM {table} WHERE {which}")]
            picked = rnd.sample(ids, max(1, round(len(ids) * fraction)))
            for start in range(0, len(picked), 100):
                db.execute("BEGIN")
                for rowid in picked[start : start + 100]:
                    db.execute(
                        f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                        (_new_value(rnd, text, kind, column), rowid),
                    )
                db.execute("COMMIT")
            changed += len(picked)
        finally:
            db.close()
    settings = folder.root / "config/user.json"
    values = json.loads(settings.read_text(encoding="utf-8"))
    values["last_opened"] = time.time()
    settings.write_text(json.dumps(values, indent=2), encoding="utf-8")
    return changed


def _new_value(rnd: random.Random, text: _Text, kind: str, column: str) -> str | bytes:
    if kind == "vector":
        return rnd.randbytes(EMBEDDING_BYTES)
    if kind == "json":
        return json.dumps({"edited": True, "value": rnd.randrange(10_000), "by": column})
    return text.body(1200)


# ----------------------------------------------------------------- comparing
@dataclass(frozen=True)
class Comparison:
    """What ``compare_folders`` found: equal when ``problems`` is empty."""

    databases: int
    rows: int
    files: int
    problems: tuple[str, ...]

    @property
    def equal(self) -> bool:
        return not self.problems


def _table_digests(path: Path) -> dict[str, tuple[int, str]]:
    """Per table (schema included): row count and a digest of every value, in rowid order."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        digests: dict[str, tuple[int, str]] = {}
        schema = hashlib.sha256()
        for (sql,) in db.execute("SELECT sql FROM sqlite_schema ORDER BY name"):
            schema.update(repr(sql).encode())
        digests["(schema)"] = (0, schema.hexdigest())
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"
            )
        ]
        for table in tables:
            digest = hashlib.sha256()
            rows = 0
            for row in db.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                rows += 1
                for value in row:
                    raw = value if isinstance(value, bytes) else repr(value).encode()
                    digest.update(len(raw).to_bytes(8, "little"))
                    digest.update(raw)
            digests[table] = (rows, digest.hexdigest())
        return digests
    finally:
        db.close()


def _integrity(path: Path) -> str:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return " ".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def compare_folders(source: AppFolder, restored: Path) -> Comparison:
    """Whether ``restored`` holds ``source`` as it is now: every database passes
    ``PRAGMA integrity_check`` and has the same schema, row counts and values, every
    other file is byte-equal, and nothing is missing or extra."""
    problems: list[str] = []
    rows = 0
    present = [name for name in source.databases if (restored / name).is_file()]
    problems += [f"{name} is missing" for name in source.databases if name not in present]
    # SQLite and hashing release the GIL: every core reads.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        checks = [
            (
                name,
                pool.submit(_integrity, restored / name),
                pool.submit(_table_digests, source.root / name),
                pool.submit(_table_digests, restored / name),
            )
            for name in present
        ]
        for name, integrity, expected, found in checks:
            if integrity.result() != "ok":
                problems.append(f"{name}: integrity_check says {integrity.result()[:200]}")
                continue
            for table, (count, digest) in expected.result().items():
                if found.result().get(table) != (count, digest):
                    problems.append(f"{name}: table {table} differs from the source")
                rows += count
    for name in source.files:
        path = restored / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif not _same_bytes(source.root / name, path):
            problems.append(f"{name} differs from the source")
    expected_names = set(source.databases) | set(source.files)
    for path in restored.rglob("*"):
        name = path.relative_to(restored).as_posix()
        if path.is_file() and name not in expected_names and not name.endswith(_SIDE_FILES):
            problems.append(f"{name} is not in the source")
    return Comparison(len(source.databases), rows, len(source.files), tuple(problems))


def _same_bytes(left: Path, right: Path) -> bool:
    if left.stat().st_size != right.stat().st_size:
        return False
    with left.open("rb") as a, right.open("rb") as b:
        while True:
            block = a.read(MIB)
            if block != b.read(MIB):
                return False
            if not block:
                return True


# ===================================================================== the story
@dataclass(frozen=True)
class Step:
    """One step of the demo: what it did, how long it took and what it stored."""

    name: str
    title: str
    seconds: float
    detail: str
    #: The data folder's size at this step (0 where no folder is involved).
    folder_bytes: int = 0
    #: Backups: bytes this backup added to the store, and the store's size after it.
    added_bytes: int = 0
    store_bytes: int = 0
    #: Backups: bytes of every backup in the store over the store's size.
    ratio: float = 0.0


@dataclass(frozen=True)
class LiveCapture:
    """What the writer did during the first backup, and what that backup holds."""

    #: Events in the live database when the backup started and when it ended.
    events_before: int
    events_after: int
    #: Transactions the writer committed in all (before, during and after the backup).
    transactions: int
    #: Events in the backup's image of the database.
    events_in_backup: int
    #: Integrity check passed, the events have no gap and their count matches.
    consistent: bool


@dataclass(frozen=True)
class DemoReport:
    """Every figure of one demo run."""

    folder: str
    size_mib: int
    steps: tuple[Step, ...]
    backups: tuple[str, ...]
    databases: int
    files: int
    rows: int
    changed_rows: int
    live: LiveCapture
    #: The restore: bytes fetched from the store (all of them: a new machine has no
    #: local data to reuse).
    fetched_bytes: int
    verified: bool
    problems: tuple[str, ...]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``started(number, total, title)``: a step begins.
StartedFn = Callable[[int, int, str], None]
#: ``finished(number, step)``: a step is done.
FinishedFn = Callable[[int, Step], None]
_TOTAL_STEPS = 7


class _Timer:
    """Numbers the steps, times them and tells the caller."""

    def __init__(self, started: StartedFn | None, finished: FinishedFn | None) -> None:
        self.started = started
        self.finished = finished
        self.steps: list[Step] = []

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Callable[[], float]]:
        if self.started is not None:
            self.started(len(self.steps) + 1, _TOTAL_STEPS, title)
        began = time.perf_counter()
        yield lambda: time.perf_counter() - began

    def done(self, step: Step) -> None:
        self.steps.append(step)
        if self.finished is not None:
            self.finished(len(self.steps), step)


def _settings(root: Path, machine: str, data: Path, store: str) -> Settings:
    """Settings of one demo machine: its config (key file, trust records) and cache
    folders are inside the demo folder."""
    from cloudkeep.settings import Settings

    return Settings(
        data=data,
        store=store,
        device_name=f"demo-{machine}",
        config_dir=root / machine / "config",
        cache_dir=root / machine / "cache",
    )


def _write_key(settings: Settings) -> None:
    """A random repository key in the machine's key file (0600), as on first use."""
    key_file = settings.default_key_file
    key_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")


def _store_bytes(workspace: Workspace) -> int:
    return sum(info.size for info in workspace.storage.list(""))


def check_size(size_mib: int) -> None:
    """``UserError`` unless ``size_mib`` is a size the demo makes."""
    if not MIN_SIZE_MIB <= size_mib <= MAX_SIZE_MIB:
        raise UserError(f"--size-mib must be between {MIN_SIZE_MIB} and {MAX_SIZE_MIB}")


def run_demo(
    root: Path,
    size_mib: int = DEFAULT_SIZE_MIB,
    started: StartedFn | None = None,
    finished: FinishedFn | None = None,
    notice: Callable[[str], None] | None = None,
) -> DemoReport:
    """The demo in ``root`` (an empty folder): a machine backs up its app folder
    twice, a new machine restores the latest backup; every step timed.

    ``started`` is called as each step begins, ``finished`` as it ends; ``notice``
    gets the engine's warnings.
    """
    from cloudkeep.operations import Backup, Restore, run
    from cloudkeep.workspace import Workspace

    check_size(size_mib)
    began = time.perf_counter()
    timer = _Timer(started, finished)
    store = (root / "store").as_uri()
    data = root / "laptop" / "production"
    laptop = _settings(root, "laptop", data, store)
    _write_key(laptop)
    workspace = Workspace(laptop, notice=notice)

    with timer.step("make an app folder") as took:
        folder = build_app_folder(data, size_mib)
        timer.done(
            Step(
                "build",
                "make an app folder",
                took(),
                f"{len(folder.databases)} SQLite databases in WAL mode, "
                f"{len(folder.files)} other files, {folder.rows:,} rows",
                folder_bytes=folder.size(),
            )
        )

    with (
        timer.step("back up while the app writes") as took,
        LiveWriter(folder.live_database) as app,
    ):
        before = app.committed()
        first = run(Backup(), workspace).info
        seconds = took()
        after = app.committed()
        transactions = app.stop()
        store_bytes = _store_bytes(workspace)
        timer.done(
            Step(
                "backup",
                "back up while the app writes",
                seconds,
                f"the app committed {after - before:,} transactions meanwhile",
                folder_bytes=first.bytes,
                added_bytes=first.added_bytes,
                store_bytes=store_bytes,
                ratio=first.bytes / max(1, store_bytes),
            )
        )

    with timer.step("check its live database") as took:
        image = root / "laptop" / "first-backup"
        run(Restore(first.id, target=image), workspace)
        in_backup, consistent = workstream_state(image / LIVE_DATABASE)
        consistent = consistent and _integrity(image / LIVE_DATABASE) == "ok"
        consistent = consistent and before <= in_backup <= after
        shutil.rmtree(image)
        live = LiveCapture(before, after, transactions, in_backup, consistent)
        timer.done(
            Step(
                "check-live",
                "check its live database",
                took(),
                f"it holds the database as of event {in_backup:,} "
                f"({before:,} to {after:,} while it ran): "
                + ("consistent" if consistent else "NOT CONSISTENT"),
            )
        )

    with timer.step("change 1% of the rows") as took:
        changed = change_rows(folder)
        timer.done(
            Step(
                "change",
                "change 1% of the rows",
                took(),
                f"{changed:,} rows updated all over {len(_CHANGES)} tables, one JSON file",
                folder_bytes=folder.size(),
            )
        )

    with timer.step("back up again") as took:
        second = run(Backup(), workspace).info
        seconds = took()
        store_bytes = _store_bytes(workspace)
        timer.done(
            Step(
                "backup-again",
                "back up again",
                seconds,
                f"added {second.added_bytes / max(1, second.bytes):.1%} of the folder's size",
                folder_bytes=second.bytes,
                added_bytes=second.added_bytes,
                store_bytes=store_bytes,
                ratio=(first.bytes + second.bytes) / max(1, store_bytes),
            )
        )

    with timer.step("restore on a new machine") as took:
        # A new machine: its own config and cache, the key kept safe, nothing local.
        restored_data = root / "new-machine" / "production"
        new_machine = _settings(root, "new-machine", restored_data, store)
        new_machine.default_key_file.parent.mkdir(parents=True)
        shutil.copy2(laptop.default_key_file, new_machine.default_key_file)
        fresh = Workspace(new_machine, notice=notice)
        latest = fresh.list()[0]
        restored = run(Restore(latest.id, reuse_local=False), fresh).info
        timer.done(
            Step(
                "restore",
                "restore on a new machine",
                took(),
                f"the latest backup, all {restored.fetched_bytes / MIB:,.1f} MiB fetched "
                "from the store",
                folder_bytes=restored.bytes,
            )
        )

    with timer.step("verify the restore") as took:
        comparison = compare_folders(folder, restored_data)
        rows = f"{comparison.rows:,} rows and {comparison.files} files"
        timer.done(
            Step(
                "verify",
                "verify the restore",
                took(),
                f"{comparison.databases} databases pass integrity_check; {rows} equal the source"
                if comparison.equal
                else f"{len(comparison.problems)} problems found",
            )
        )

    problems = list(comparison.problems)
    if not consistent:
        problems.insert(0, f"the first backup's {LIVE_DATABASE} is not a consistent image")
    if latest.id != second.id:
        problems.append(f"the new machine saw {latest.id} as the latest, not {second.id}")
    return DemoReport(
        folder=str(root),
        size_mib=size_mib,
        steps=tuple(timer.steps),
        backups=(first.id, second.id),
        databases=comparison.databases,
        files=comparison.files,
        rows=comparison.rows,
        changed_rows=changed,
        live=live,
        fetched_bytes=restored.fetched_bytes,
        verified=not problems,
        problems=tuple(problems),
        seconds=time.perf_counter() - began,
    )


@contextlib.contextmanager
def demo_folder(path: Path | None, keep: bool = False) -> Iterator[Path]:
    """The folder a demo runs in: ``path`` (new or empty; kept), else a temporary
    folder removed at the end unless ``keep``."""
    if path is None:
        root = Path(tempfile.mkdtemp(prefix="cloudkeep-demo-"))
        try:
            yield root
        finally:
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
        return
    root = path.expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise UserError(f"--path {root} is a file: give a new or empty folder")
    if root.is_dir() and any(root.iterdir()):
        raise UserError(f"--path {root} is not empty: give a new or empty folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --path {root}: {exc.strerror or exc}") from None
    yield root


if __name__ == "__main__":  # the live writer's process, which LiveWriter starts
    if len(sys.argv) != 3 or sys.argv[1] != "--live-writer":
        sys.exit("usage: python -m cloudkeep.demo --live-writer DATABASE (see 'cloudkeep demo')")
    _write_live(Path(sys.argv[2]), sys.stdin, sys.stdout)
