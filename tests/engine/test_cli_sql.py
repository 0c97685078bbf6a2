"""``cloudkeep sql`` through the real CLI: a query's table and JSON, the shell on a pipe,
the database chosen or asked for, and every refusal one line with exit code 1."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.conftest import PASSPHRASE, CliResult

ENV = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE}


@pytest.fixture
def sql(data_dir: Path, tmp_path: Path, cli):  # type: ignore[no-untyped-def]
    """``sql(*args)`` runs ``cloudkeep sql`` on a backup of ``data_dir``."""
    store = (tmp_path / "store").as_uri()
    with sqlite3.connect(data_dir / "snippets.db") as db:
        db.execute("UPDATE snippets SET tags = 'tag \x1b[2J\x1b]0;pwned\x07' WHERE id = 1")
    db.close()
    backed = cli("--data", str(data_dir), "--store", store, "backup", "--json", env=ENV)
    assert backed.code == 0, backed.stderr

    def run(*args: str) -> CliResult:
        result: CliResult = cli("--data", str(data_dir), "--store", store, "sql", *args, env=ENV)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    run.backup_id = json.loads(backed.stdout)["id"]  # type: ignore[attr-defined]
    return run


def test_a_query_prints_a_table_and_a_summary(sql) -> None:  # type: ignore[no-untyped-def]
    done = sql(
        "latest", "snippets.db", "SELECT id, tags, length(embedding) FROM snippets WHERE id <= 3"
    )
    assert done.code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["id", "tags", "length(embedding)"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout  # a backup's text, escaped
    assert "3 rows from snippets.db" in done.stderr and "bytes fetched" in done.stderr


def test_json_output_and_the_only_database_chosen(sql) -> None:  # type: ignore[no-untyped-def]
    prefix = sql.backup_id[:-3]
    done = sql(prefix, "SELECT id, embedding, NULL FROM snippets WHERE id = 7", "--json")
    assert done.code == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["backup"] == sql.backup_id and answer["database"] == "snippets.db"
    assert answer["columns"] == ["id", "embedding", "NULL"]
    ((row_id, blob, null),) = answer["rows"]
    assert (row_id, blob["blob"], len(blob["hex"]), null) == (7, 1536, 64, None)
    assert answer["truncated"] is False
    assert answer["fetched_bytes"] > 0 and answer["elapsed_ms"] >= 0


def test_max_rows_cuts_the_result(sql) -> None:  # type: ignore[no-untyped-def]
    done = sql("latest", "SELECT id FROM snippets", "--max-rows", "5", "--json")
    answer = json.loads(done.stdout)
    assert (len(answer["rows"]), answer["truncated"]) == (5, True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("latest", "SELEC 1"), 'near "SELEC": syntax error'),
        (("latest", "DELETE FROM snippets"), "only reading is allowed"),
        (("latest", "ATTACH 'x.db' AS x"), "only reading is allowed"),
        (("latest", "SELECT 1; SELECT 2"), "one statement at a time"),
        (("latest", "config/app.json", "SELECT 1"), "is not a SQLite database"),
        (("latest", "other.db", "SELECT 1"), "no database 'other.db'"),
        (("latest", "snipets.db"), "no database 'snipets.db'"),  # a typo: not taken for SQL
        (("nope", "SELECT 1"), "no backup"),
    ],
)
def test_refusals_are_one_line_and_exit_1(sql, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    done = sql(*args)
    assert done.code == 1, (done.stdout, done.stderr)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_several_databases_are_listed_for_the_user_to_choose(
    data_dir: Path, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    with sqlite3.connect(data_dir / "second.db") as db:
        db.execute("CREATE TABLE t(a)")
    db.close()
    store = (tmp_path / "store").as_uri()
    assert cli("--data", str(data_dir), "--store", store, "backup", env=ENV).code == 0
    done = cli("--data", str(data_dir), "--store", store, "sql", "latest", "SELECT 1", env=ENV)
    assert done.code == 1
    assert "holds 2 databases; name one: 'snippets.db', 'second.db'" in done.stderr


def shell(data_dir: Path, tmp_path: Path, script: str) -> CliResult:
    """The shell with ``script`` on its standard input (a pipe, not a terminal)."""
    env = {**os.environ, **ENV}
    done = subprocess.run(
        [sys.executable, "-m", "cloudkeep", "--data", str(data_dir), "--store",
         (tmp_path / "store").as_uri(), "sql", "latest", "snippets.db"],
        input=script, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    return CliResult(done.returncode, done.stdout, done.stderr)


def test_the_shell_reads_statements_and_dot_commands_from_a_pipe(
    sql, data_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    script = (
        "SELECT count(*)\n  FROM snippets;\n"
        ".tables\n"
        ".schema snippets\n"
        ".databases\n"
        "SELECT 'a;b' AS x; SELECT 40 + 2 AS answer;\n"
        ".help\n"
    )
    done = shell(data_dir, tmp_path, script)
    assert done.code == 0, done.stderr
    out = done.stdout
    assert "300" in out
    assert "\nsnippets\n" in out
    assert "CREATE TABLE snippets(id INTEGER PRIMARY KEY" in out
    # .databases as 'ls' prints sizes (human, aligned), the open one marked
    assert re.search(r"^\* +\d[\d.]* (B|KiB|MiB)  snippets\.db$", out, re.MULTILINE), out
    assert "a;b" in out and "42" in out
    assert ".schema [TABLE]" in out
    assert not done.stderr.strip()


def test_the_shell_reports_errors_and_goes_on(sql, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    done = shell(
        data_dir,
        tmp_path,
        "SELEC 1;\nINSERT INTO snippets(body) VALUES ('x');\n.frobnicate\nSELECT 7;\nSELECT 'open",
    )
    assert done.code == 1
    assert "7" in done.stdout and "open" not in done.stdout
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 4, errors
    assert "syntax error" in errors[0] and "only reading" in errors[1]
    assert "unknown command .frobnicate" in errors[2] and "incomplete" in errors[3]


def test_a_last_statement_without_its_semicolon_runs(sql, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``echo "SELECT ..." | cloudkeep sql`` answers, as sqlite3 does; blank lines are ignored."""
    done = shell(data_dir, tmp_path, "\n\nSELECT 6 * 7 AS answer\n\n")
    assert done.code == 0, done.stderr
    assert done.stdout.split() == ["answer", "42"] and not done.stderr.strip()


def test_a_dot_command_after_blank_lines_is_a_dot_command(
    sql, data_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """An empty line at the prompt starts no statement: '.tables' after it was sent to
    SQLite as SQL ('near ".": syntax error')."""
    done = shell(data_dir, tmp_path, "\n  \n.tables\n\n.quit\n")
    assert done.code == 0, done.stderr
    assert "snippets" in done.stdout.split() and not done.stderr.strip()


def test_quit_ends_the_shell(sql, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    done = shell(data_dir, tmp_path, "SELECT 1;\n.quit\nSELEC 2;\n")
    assert done.code == 0 and not done.stderr.strip()
