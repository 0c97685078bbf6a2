"""Generate a realistic, deterministic local-first app data folder for the backup benchmark.

The folder looks like a desktop app's ``production/`` directory: a large SQLite database
of code snippets in WAL mode (the -wal file is left in place, as a running app leaves it),
a small settings database, a few JSON config files and a cache of incompressible files.
A "day of use" mutation then updates 1% of the snippets, like an app would.

Row ``i`` depends only on ``(seed, i)``, so two folders made with the same seed and size
hold the same rows (files need not be byte-identical). Usable as a CLI or as a library::

    python bench/generate.py OUT_DIR --size-mib 600 --seed 1
    python bench/generate.py OUT_DIR --mutate --seed 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:  # apsw can close a connection without checkpointing, so the -wal survives as in a live app
    import apsw
except ImportError:  # pragma: no cover - fallback keeps the generator usable without apsw
    apsw = None

MIB = 1024 * 1024
EMBEDDING_DIM = 384
BATCH_ROWS = 2_000
MUTATION_TXN_ROWS = 100
BASE_EPOCH = 1_700_000_000.0  # fixed origin so timestamps are deterministic too
CACHE_FRACTION = 0.10
APP_DIR = "production"
SNIPPETS_DB = f"{APP_DIR}/snippets.db"
SETTINGS_DB = f"{APP_DIR}/settings.db"

SNIPPETS_SCHEMA = """
CREATE TABLE IF NOT EXISTS snippets(
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    language TEXT NOT NULL,
    body TEXT NOT NULL,
    tags TEXT NOT NULL,
    embedding BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS snippets_updated ON snippets(updated);
CREATE INDEX IF NOT EXISTS snippets_language ON snippets(language);
"""

_WORD_TEXT = (
    "user account session token cache buffer request response client server config value "
    "index count total item items list map entry key name path file dir stream reader writer "
    "parse format render build load save open close read write fetch send handle process "
    "event state store query result error status code message data payload header body "
    "snippet asset format tag embedding vector score rank search match filter sort limit "
    "offset page size length width height color theme window panel view model schema field "
    "record row column table database conn cursor txn lock mutex queue worker task job "
    "timer retry backoff delay timeout deadline context scope module package import export "
    "node edge graph tree root child parent left right prev next head tail first last "
    "min max sum avg mean ratio rate delta step epoch batch chunk block hash digest seed "
    "random bytes text line word char token lexer parser ast visitor emit compile run exec "
    "init setup teardown reset update delete insert create remove add get set has is to "
    "from with into by on off enable disable visible hidden active pending done failed ok"
)
_WORDS = _WORD_TEXT.split()

_LANG_WEIGHTS = {
    "python": 30, "typescript": 18, "javascript": 14, "go": 8, "rust": 8,
    "sql": 7, "bash": 6, "java": 5, "c": 4,
}

_TEMPLATES: dict[str, Sequence[str]] = {
    "python": (
        "def {a}_{b}({c}, {d}={n}):", "{I}{a} = {b}.{c}({d}, {n})", "{I}if {a} is None:",
        "{I}return {a}_{b}", "{I}for {a} in {b}.{c}():", "{I}{a}.{b}[{s}] = {c}",
        "{I}raise {A}Error({s})", "class {A}{B}({C}):", '{I}"""{w} the {a} {b} {c}."""',
        "{I}# {w} {a} before {b} so {c} stays {d}", "import {a}", "from {a}.{b} import {A}{B}",
        "{I}with open({a}_path, {s}) as {b}:", "{I}{a} += {n}", "{I}self.{a}_{b} = {c}",
        "{I}try:", "{I}except {A}Error as exc:", "{I}log.{a}({s}, {b})",
        "@{a}.{b}", "{I}yield {a}",
    ),
    "typescript": (
        "export function {a}{B}({c}: {T}, {d}: {T}): {T} {{", "{I}const {a} = await {b}.{c}({d});",
        "{I}if (!{a}) {{", "{I}return {a}.{b}({n});", "}}", "{I}}}",
        "export interface {A}{B} {{", "{I}{a}: {T};", "{I}{a}?: {T} | null;",
        "import {{ {A}, {B} }} from '{s0}';", "{I}// {w} {a} so {b} {c}",
        "{I}for (const {a} of {b}) {{", "{I}this.{a} = {b} ?? {n};",
        "{I}throw new Error(`{w} ${{{a}}}`);", "{I}let {a}: {T}[] = [];",
    ),
    "javascript": (
        "function {a}{B}({c}, {d}) {{", "{I}const {a} = {b}.{c}({d});", "{I}if ({a} === {n}) {{",
        "{I}return {a}.map(({b}) => {b}.{c});", "}}", "{I}}}", "{I}// {w} {a} {b}",
        "module.exports = {{ {a}, {b} }};", "{I}{a}.{b} = {s};", "{I}await {a}({b}, {n});",
        "const {a} = require('{s0}');", "{I}console.log({s}, {a});",
    ),
    "go": (
        "func ({a} *{A}) {B}{C}({d} {T}) ({T}, error) {{", "{I}{a}, err := {b}.{C}({d})",
        "{I}if err != nil {{", "{I}{I}return nil, fmt.Errorf(\"{w} {a}: %w\", err)", "{I}}}",
        "}}", "type {A}{B} struct {{", "{I}{A} {T} `json:\"{a}\"`", "{I}// {w} {a} {b}",
        "{I}for _, {a} := range {b} {{", "{I}{a} = append({a}, {b})", "{I}return {a}, nil",
    ),
    "rust": (
        "pub fn {a}_{b}(&self, {c}: &{T}) -> Result<{T}> {{", "{I}let {a} = self.{b}.{c}()?;",
        "{I}if {a}.is_empty() {{", "{I}{I}return Err(Error::{A}({s}));", "{I}}}", "}}",
        "impl {A}{B} {{", "{I}/// {w} the {a} {b}", "{I}match {a} {{",
        "{I}{I}Some({a}) => {b}.{c}({a}),", "{I}{I}None => {n},", "use crate::{a}::{A};",
        "{I}let mut {a} = Vec::with_capacity({n});",
    ),
    "sql": (
        "SELECT {a}, {b}, count(*) FROM {c} WHERE {d} > {n}", "{I}AND {a}_{b} = {s}",
        "{I}GROUP BY {a} ORDER BY {b} DESC LIMIT {n};", "CREATE INDEX {a}_{b} ON {c}({d});",
        "UPDATE {a} SET {b} = {s} WHERE {c} = {n};", "-- {w} {a} {b}",
        "INSERT INTO {a}({b}, {c}) VALUES ({s}, {n});", "{I}LEFT JOIN {a} ON {a}.{b} = {c}.{b}",
    ),
    "bash": (
        "{a}_{b}() {{", '{I}local {a}="${{1:-{n}}}"', '{I}if [ -z "${a}" ]; then',
        '{I}{I}echo "{w} {a}" >&2', "{I}fi", "}}", "# {w} {a} {b}",
        '{I}for {a} in "${{{b}[@]}}"; do', "{I}done", "{a}_{b} --{c} {n} | grep {s}",
    ),
    "java": (
        "public {T} {a}{B}({T} {c}) {{", "{I}final {T} {a} = {b}.{c}({d});",
        "{I}if ({a} == null) {{", "{I}{I}throw new {A}Exception({s});", "{I}}}", "}}",
        "{I}return {a}.{b}();", "public class {A}{B} implements {C} {{", "{I}// {w} {a} {b}",
        "{I}private final {T} {a};", "import com.{a}.{b}.{A};",
    ),
    "c": (
        "static int {a}_{b}(struct {c} *{d}, size_t {a})", "{{", "}}", "{I}if ({a} == NULL)",
        "{I}{I}return -{n};", "{I}{a}->{b} = {c}({d}, {n});", "/* {w} {a} {b} */",
        "{I}for (size_t i = 0; i < {a}; i++) {{", "{I}memcpy({a}, {b}, {n});",
        "#include <{a}.h>", "{I}{I}{a}[i] = {b}[i] ^ {n};",
    ),
}
_TYPES = ("string", "number", "int64", "bool", "Vec<u8>", "String", "Map", "List", "usize",
          "User", "Asset", "Record", "Options", "Config", "[]byte", "void")
_TAGS = tuple(f"{w}" for w in _WORDS[:80])


@dataclass
class GenerateStats:
    """What was generated, so callers can size/verify things without re-reading the files."""

    out_dir: str
    seed: int
    rows: int
    total_bytes: int
    db_bytes: int
    cache_bytes: int
    seconds: float
    files: dict[str, int] = field(default_factory=dict)


@dataclass
class MutateStats:
    """What the day-of-use mutation touched."""

    out_dir: str
    seed: int
    rows_updated: int
    transactions: int
    seconds: float
    files: dict[str, int] = field(default_factory=dict)


class CodeText:
    """Code-like text from a per-language pool of template lines.

    A pool keeps generation fast (bodies are joins of pooled lines) while identifiers drawn
    Zipf-like from a small vocabulary make the text compress like real source (~3-4x zstd).
    """

    def __init__(self, seed: int, pool_lines: int = 40_000) -> None:
        rnd = random.Random(f"codetext-{seed}")
        zipf = [1.0 / (i + 1) ** 0.8 for i in range(len(_WORDS))]
        words = rnd.sample(_WORDS, len(_WORDS))  # seed-dependent word ranks
        self.languages = list(_LANG_WEIGHTS)
        self.lang_weights = [_LANG_WEIGHTS[lang] for lang in self.languages]
        self.pools: dict[str, list[str]] = {}
        self.pool_len: dict[str, float] = {}
        for lang in self.languages:
            templates = _TEMPLATES[lang]
            n = max(2_000, pool_lines * _LANG_WEIGHTS[lang] // 100)
            ws = rnd.choices(words, weights=zipf, k=n * 8)
            nums = [rnd.choice((0, 1, 2, 8, 16, 32, 64, 100, 256, 1024, rnd.randrange(10_000)))
                    for _ in range(n)]
            lines = []
            for i in range(n):
                w = ws[i * 8 : i * 8 + 8]
                lines.append(rnd.choice(templates).format(
                    a=w[0], b=w[1], c=w[2], d=w[3], A=w[4].capitalize(), B=w[5].capitalize(),
                    C=w[6].capitalize(), T=rnd.choice(_TYPES), n=nums[i],
                    s=f'"{w[7]}_{w[0]}"', s0=f"./{w[7]}", w=w[7].capitalize(),
                    I="    " * rnd.choice((1, 1, 1, 2, 2, 3)),
                ))
            self.pools[lang] = lines
            self.pool_len[lang] = sum(map(len, lines)) / n + 1

    def language(self, rnd: random.Random) -> str:
        """Pick a language with app-like popularity weights."""
        return rnd.choices(self.languages, weights=self.lang_weights)[0]

    def body(self, rnd: random.Random, lang: str, length: int) -> str:
        """A body of roughly ``length`` characters in ``lang``."""
        k = max(3, round(length / self.pool_len[lang]))
        return "\n".join(rnd.choices(self.pools[lang], k=k)) + "\n"

    def title(self, rnd: random.Random, lang: str) -> str:
        """A short human title."""
        return " ".join(rnd.choices(_WORDS, k=rnd.randint(2, 6))).capitalize() + f" ({lang})"


def body_length(rnd: random.Random) -> int:
    """Body size 0.5-6 KB, skewed to the small end like real snippets (mean ~2.6 KB)."""
    return int(min(6144, max(512, rnd.lognormvariate(7.7, 0.6))))


def embeddings(rng: np.random.Generator, n: int) -> list[bytes]:
    """``n`` unit-norm float32 vectors as raw blobs (incompressible, like real embeddings)."""
    v = rng.standard_normal((n, EMBEDDING_DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [row.tobytes() for row in v]


def _batch_rows(seed: int, text: CodeText, batch: int) -> Iterator[tuple[Any, ...]]:
    """Rows of one batch; depend only on (seed, batch) so generation is reproducible."""
    rnd = random.Random(f"rows-{seed}-{batch}")
    rng = np.random.default_rng([seed, batch])
    embs = embeddings(rng, BATCH_ROWS)
    first = batch * BATCH_ROWS + 1
    for j in range(BATCH_ROWS):
        rid = first + j
        lang = text.language(rnd)
        created = BASE_EPOCH + rid * 30.0 + rnd.random() * 30.0
        updated = created + rnd.random() * 86_400 * rnd.choice((0, 0, 1, 7, 30))
        tags = json.dumps(rnd.sample(_TAGS, rnd.randint(1, 5)))
        yield (rid, text.title(rnd, lang), lang, text.body(rnd, lang, body_length(rnd)),
               tags, embs[j], created, updated)


def _connect(path: Path, keep_wal: bool = True) -> Any:
    """Open a DB; with apsw, closing will not checkpoint, leaving the -wal like a live app."""
    if apsw is not None:
        con = apsw.Connection(str(path))
        if keep_wal:
            con.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        return con
    con = sqlite3.connect(str(path), isolation_level=None)
    return con


def _exec(con: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on either apsw or sqlite3 and return all rows."""
    return list(con.execute(sql, params))


def _script(con: Any, sql: str) -> None:
    if apsw is not None:
        list(con.execute(sql))  # apsw runs later statements lazily; drain them
    else:
        con.executescript(sql)


def _file_sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file()}


def _db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def _write_settings(app: Path, seed: int) -> None:
    rnd = random.Random(f"settings-{seed}")
    con = _connect(app / "settings.db")
    _script(con, """
        PRAGMA journal_mode=WAL;
        CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS recent_searches(id INTEGER PRIMARY KEY, q TEXT, at REAL);
    """)
    _exec(con, "BEGIN")
    for i in range(400):
        key = f"{rnd.choice(_WORDS)}.{rnd.choice(_WORDS)}.{i}"
        _exec(con, "INSERT OR REPLACE INTO settings VALUES(?, ?)",
              (key, json.dumps({"v": rnd.random(), "on": rnd.random() < 0.5})))
    for i in range(2_000):
        _exec(con, "INSERT INTO recent_searches VALUES(?, ?, ?)",
              (i + 1, " ".join(rnd.choices(_WORDS, k=3)), BASE_EPOCH + i * 60.0))
    _exec(con, "COMMIT")
    con.close()


def _write_config(app: Path, seed: int, day: int = 0) -> None:
    rnd = random.Random(f"config-{seed}-{day}")
    cfg = app / "config"
    cfg.mkdir(parents=True, exist_ok=True)
    docs: dict[str, Any] = {
        "app.json": {"version": "3.2.1", "telemetry": False, "channel": "stable",
                     "data_dir": "production", "features": rnd.sample(_WORDS, 12)},
        "window_state.json": {"x": rnd.randint(0, 800), "y": rnd.randint(0, 400),
                              "w": 1280, "h": 800, "day": day,
                              "open_tabs": [rnd.randint(1, 10_000) for _ in range(8)]},
        "feature_flags.json": {w: rnd.random() < 0.5 for w in rnd.sample(_WORDS, 60)},
        "plugins.json": [{"name": f"{a}-{b}", "enabled": rnd.random() < 0.7,
                          "version": f"1.{rnd.randint(0, 20)}.{rnd.randint(0, 9)}"}
                         for a, b in zip(rnd.sample(_WORDS, 20), rnd.sample(_WORDS, 20),
                                         strict=True)],
        "accounts.json": {"user": {"id": f"u-{seed:04d}", "name": "Bench User"},
                          "sync": {"enabled": False, "last": BASE_EPOCH + day * 86_400}},
    }
    for name, doc in docs.items():
        if day and name not in ("window_state.json", "accounts.json"):
            continue  # a day of use only rewrites the volatile ones
        (cfg / name).write_text(json.dumps(doc, indent=2) + "\n")


def _write_cache(app: Path, seed: int, total: int) -> int:
    """Incompressible cached files (1-8 MiB each) adding up to ``total`` bytes."""
    cache = app / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(f"cache-{seed}")
    rng = np.random.default_rng([seed, 0xCAC4E])
    written, i = 0, 0
    while written < total:
        n = min(total - written, rnd.randint(1 * MIB, 8 * MIB))
        (cache / f"{rnd.getrandbits(64):016x}.bin").write_bytes(rng.bytes(n))
        written += n
        i += 1
    return written


def generate(out_dir: str | os.PathLike[str], size_mib: float = 600, seed: int = 1,
             quiet: bool = True) -> GenerateStats:
    """Create the data folder under ``out_dir`` (must not already hold a snippets DB)."""
    t0 = time.perf_counter()
    root = Path(out_dir)
    app = root / APP_DIR
    app.mkdir(parents=True, exist_ok=True)
    db = root / SNIPPETS_DB
    if db.exists():
        raise FileExistsError(f"{db} already exists; generate into an empty folder")
    total = int(size_mib * MIB)
    cache_target = int(total * CACHE_FRACTION)
    db_target = total - cache_target - 2 * MIB  # settings + config are ~1-2 MiB

    _write_config(app, seed)
    _write_settings(app, seed)
    cache_bytes = _write_cache(app, seed, cache_target)

    text = CodeText(seed)
    con = _connect(db)
    # bulk load without a journal, then switch to WAL like the app runs
    _script(con, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536;")
    _script(con, SNIPPETS_SCHEMA)
    batch, rows = 0, 0
    while _db_bytes(db) < db_target:
        _exec(con, "BEGIN")
        con.executemany("INSERT INTO snippets VALUES(?,?,?,?,?,?,?,?)",
                        _batch_rows(seed, text, batch))
        _exec(con, "COMMIT")
        batch += 1
        rows += BATCH_ROWS
        if not quiet:
            print(f"\r  snippets.db {_db_bytes(db) / MIB:7.1f} / {db_target / MIB:.0f} MiB",
                  end="", file=sys.stderr, flush=True)
    if not quiet:
        print(file=sys.stderr)
    _exec(con, "PRAGMA journal_mode=WAL")
    _exec(con, "PRAGMA synchronous=NORMAL")
    con.close()
    _recent_activity(db, seed)

    files = _file_sizes(root)
    return GenerateStats(
        out_dir=str(root), seed=seed, rows=rows, total_bytes=sum(files.values()),
        db_bytes=_db_bytes(db), cache_bytes=cache_bytes,
        seconds=round(time.perf_counter() - t0, 3), files=files,
    )


def generate_tiny(out_dir: str | os.PathLike[str], seed: int = 1) -> dict[str, int]:
    """A ~200 KB folder with the same layout (settings DB + config), for seeding many backups."""
    app = Path(out_dir) / APP_DIR
    app.mkdir(parents=True, exist_ok=True)
    _write_config(app, seed)
    _write_settings(app, seed)
    return _file_sizes(Path(out_dir))


def _recent_activity(db: Path, seed: int) -> None:
    """A few small app writes after the bulk load so a live-looking -wal is left behind."""
    rnd = random.Random(f"recent-{seed}")
    con = _connect(db)
    _exec(con, "PRAGMA synchronous=NORMAL")
    (max_id,) = _exec(con, "SELECT max(id) FROM snippets")[0]
    ts = BASE_EPOCH + (max_id + 1) * 30.0
    for _ in range(5):
        _exec(con, "BEGIN")
        for rid in rnd.sample(range(1, max_id + 1), 20):
            _exec(con, "UPDATE snippets SET tags = ?, updated = ? WHERE id = ?",
                  (json.dumps(rnd.sample(_TAGS, 3)), ts, rid))
        _exec(con, "COMMIT")
    con.close()


def mutate(out_dir: str | os.PathLike[str], seed: int = 2, fraction: float = 0.01,
           now: float | None = None) -> MutateStats:
    """A day of use: rewrite ``fraction`` of the snippets (body, embedding, updated).

    Rows are picked at random from ``seed`` and written in ordinary ~100-row transactions
    with the app's WAL settings. ``now`` defaults to one day after the newest row, so the
    same seed applied to identical copies yields identical content.
    """
    t0 = time.perf_counter()
    root = Path(out_dir)
    db = root / SNIPPETS_DB
    if not db.exists():
        raise FileNotFoundError(f"{db} not found; run generate() first")
    con = _connect(db)
    _exec(con, "PRAGMA synchronous=NORMAL")  # app setting; wal_autocheckpoint stays default
    (max_id, max_updated) = _exec(con, "SELECT max(id), max(updated) FROM snippets")[0]
    when = float(now) if now is not None else float(max_updated) + 86_400.0
    rnd = random.Random(f"mutate-{seed}")
    rng = np.random.default_rng([seed, 0x0DA7])
    n = max(1, round(max_id * fraction))
    ids = sorted(rnd.sample(range(1, max_id + 1), n))
    rnd.shuffle(ids)  # random order, like edits over a day
    text = CodeText(seed)
    embs = embeddings(rng, n)
    txns = 0
    for start in range(0, n, MUTATION_TXN_ROWS):
        chunk = ids[start : start + MUTATION_TXN_ROWS]
        _exec(con, "BEGIN")
        for k, rid in enumerate(chunk, start):
            (lang, old_len) = _exec(
                con, "SELECT language, length(body) FROM snippets WHERE id = ?", (rid,))[0]
            new_len = max(512, int(old_len * rnd.uniform(0.9, 1.1)))
            _exec(con, "UPDATE snippets SET body = ?, embedding = ?, updated = ? WHERE id = ?",
                  (text.body(rnd, lang, new_len), embs[k], when + k, rid))
        _exec(con, "COMMIT")
        txns += 1
    con.close()

    settings = _connect(root / SETTINGS_DB)
    _exec(settings, "INSERT OR REPLACE INTO settings VALUES('app.last_opened', ?)",
          (json.dumps(when),))
    settings.close()
    _write_config(root / APP_DIR, seed, day=1)
    return MutateStats(out_dir=str(root), seed=seed, rows_updated=n, transactions=txns,
                       seconds=round(time.perf_counter() - t0, 3), files=_file_sizes(root))


def db_fingerprint(db_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Logical content summary of a DB (reads WAL too, never checkpoints or modifies it).

    Used to verify restores: a consistent SQLite image need not be byte-identical.
    """
    con = _connect(Path(db_path))
    try:
        out: dict[str, Any] = {}
        tables = [r[0] for r in _exec(
            con, "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for t in tables:
            out[f"{t}.count"] = _exec(con, f'SELECT count(*) FROM "{t}"')[0][0]
        if "snippets" in tables:
            s, m, e = _exec(con, "SELECT sum(length(body)), max(updated), "
                                    "total(unicode(substr(body, 100, 1))) FROM snippets")[0]
            out.update({"snippets.sum_body_len": s, "snippets.max_updated": m,
                        "snippets.body_probe": e})
        if "settings" in tables:
            out["settings.last_opened"] = (_exec(
                con, "SELECT value FROM settings WHERE key='app.last_opened'") or [(None,)])[0][0]
        return out
    finally:
        con.close()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--size-mib", type=float, default=600.0, help="total folder size")
    ap.add_argument("--seed", type=int, default=None, help="default 1 (generate), 2 (mutate)")
    ap.add_argument("--mutate", action="store_true", help="apply a day-of-use update instead")
    ap.add_argument("--fraction", type=float, default=0.01, help="rows updated by --mutate")
    args = ap.parse_args(argv)
    if apsw is None:
        print("warning: apsw not installed; the -wal file will be checkpointed away on close "
              "(pip install apsw for a live-looking WAL)", file=sys.stderr)
    if args.mutate:
        ms = mutate(args.out_dir, seed=2 if args.seed is None else args.seed,
                    fraction=args.fraction)
        print(json.dumps({k: v for k, v in asdict(ms).items() if k != "files"}))
    else:
        gs = generate(args.out_dir, size_mib=args.size_mib,
                      seed=1 if args.seed is None else args.seed, quiet=False)
        print(json.dumps({k: v for k, v in asdict(gs).items() if k != "files"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
