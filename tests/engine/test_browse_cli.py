"""cloudkeep ls, find, dump and restore --include through the real CLI (issue 14, item 1)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cloudkeep.backups.dump import file_entry, write_file
from tests.engine.conftest import PASSPHRASE, workspace

ENV = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE}


@pytest.fixture
def two_backups(data_dir: Path, tmp_path: Path, cli) -> tuple[list[str], str, list[str]]:  # type: ignore[no-untyped-def]
    """Two backups of ``data_dir`` (laptop), one of another folder (desktop); the args."""
    store = (tmp_path / "store").as_uri()
    args = ["--data", str(data_dir), "--store", store, "--device-name", "laptop"]
    (data_dir / "config" / "deep").mkdir()
    (data_dir / "config" / "deep" / "more.json").write_text("{}")
    os.symlink("app.json", data_dir / "config" / "link")
    first = json.loads(cli(*args, "backup", "--json", env=ENV).stdout)["id"]
    (data_dir / "config" / "app.json").write_text('{"theme": "light"}')
    second = json.loads(cli(*args, "backup", "--json", env=ENV).stdout)["id"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "app.json").write_text("{}")
    desktop = ["--data", str(other), "--store", store, "--device-name", "desktop"]
    assert cli(*desktop, "backup", env=ENV).code == 0
    return args, store, [first, second]


def test_ls(two_backups: tuple[list[str], str, list[str]], cli) -> None:  # type: ignore[no-untyped-def]
    args, _, (first, second) = two_backups
    top = cli(*args, "ls", "latest", "--device", "laptop", env=ENV)
    assert top.code == 0, top.stderr
    lines = top.stdout.splitlines()
    assert [line.split()[-1] for line in lines] == [
        "cache/",
        "config/",
        "empty.txt",
        "snippets.db",
    ]
    assert lines[1].startswith("drwx") and lines[2].startswith("-rw-")
    assert " 0 B " in lines[2]

    config = cli(*args, "ls", first, "/config/", env=ENV).stdout.splitlines()
    assert config[0].endswith("config/app.json") and " 17 B " in config[0]
    assert config[2].startswith("lrwx") and config[2].endswith("config/link -> app.json")
    recursive = cli(*args, "ls", second[:-3], "config", "-R", env=ENV).stdout
    assert "config/deep/more.json" in recursive

    listed = json.loads(cli(*args, "ls", second, "config", "--json", env=ENV).stdout)
    assert listed["backup"] == second and listed["path"] == "config"
    app = listed["entries"][0]
    assert app == {
        "name": "app.json",
        "path": "config/app.json",
        "type": "file",
        "size": len('{"theme": "light"}'),
        "mode": app["mode"],
        "mtime": app["mtime"],
        "sqlite": False,
        "target": None,
    }
    db = json.loads(cli(*args, "ls", second, "snippets.db", "--json", env=ENV).stdout)
    assert db["entries"][0]["sqlite"] is True and db["entries"][0]["size"] > 100_000

    for path, message in (
        ("nope", "'nope' is not in backup"),
        ("config/link/x", "'config/link' is a symlink there"),
        ("../etc", "not a path inside a backup"),
    ):
        missing = cli(*args, "ls", second, path, env=ENV)
        assert missing.code == 1 and missing.stdout == ""
        assert message in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_find(two_backups: tuple[list[str], str, list[str]], cli) -> None:  # type: ignore[no-untyped-def]
    args, _, (first, second) = two_backups
    found = cli(*args, "find", "*.json", env=ENV)
    assert found.code == 0, found.stderr
    headers = [line for line in found.stdout.splitlines() if line.startswith("backup ")]
    assert len(headers) == 3 and "device desktop" in headers[0]  # newest first
    assert headers[1].startswith(f"backup {second} (") and headers[2].startswith(f"backup {first}")

    only = json.loads(cli(*args, "find", "*.json", "--device", "laptop", "--json", env=ENV).stdout)
    assert {m["backup"] for m in only["matches"]} == {first, second}
    assert [m["path"] for m in only["matches"] if m["backup"] == second] == [
        "config/app.json",
        "config/deep/more.json",
    ]
    by_path = json.loads(
        cli(*args, "find", "config/*", "--backup", first, "--json", env=ENV).stdout
    )
    assert [m["path"] for m in by_path["matches"]] == [
        "config/app.json",
        "config/deep",
        "config/link",
    ]
    spanning = json.loads(
        cli(*args, "find", "**/*.json", "--backup", first, "--json", env=ENV).stdout
    )
    assert [m["path"] for m in spanning["matches"]] == ["config/app.json", "config/deep/more.json"]
    links = json.loads(cli(*args, "find", "*", "--type", "symlink", "--json", env=ENV).stdout)
    assert [m["path"] for m in links["matches"]] == ["config/link", "config/link"]

    cut = cli(*args, "find", "*", "--limit", "2", env=ENV)
    assert cut.code == 0 and "stopped after 2 matches" in cut.stderr
    assert len([line for line in cut.stdout.splitlines() if line.startswith("  ")]) == 2
    none = cli(*args, "find", "*.nothing", env=ENV)
    assert none.code == 0 and "no entry matches" in none.stdout
    nobody = cli(*args, "find", "*", "--device", "lapto", env=ENV)
    assert nobody.code == 1 and nobody.stdout == ""
    assert nobody.stderr.splitlines() == [
        "cloudkeep: error: no backup of device 'lapto' (devices: 'desktop', 'laptop')"
    ]
    one = cli(*args, "find", "*", "--limit", "1", env=ENV)
    assert "stopped after 1 match: --limit N" in one.stderr
    bad = cli(*args, "find", "*", "--type", "fifo", env=ENV)
    assert bad.code == 1 and "--type is one of file, dir, symlink" in bad.stderr
    assert "holds a '/'" in cli("find", "--help").stdout


def test_dump(two_backups: tuple[list[str], str, list[str]], data_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    args, _, (first, _) = two_backups
    command = [sys.executable, "-m", "cloudkeep", *args, "dump", "latest", "--device", "laptop"]
    env = {**os.environ, **ENV}
    blob = subprocess.run([*command, "cache/blob.bin"], capture_output=True, env=env)
    assert blob.returncode == 0, blob.stderr
    assert blob.stdout == (data_dir / "cache" / "blob.bin").read_bytes()
    old = subprocess.run(
        [sys.executable, "-m", "cloudkeep", *args, "dump", first, "config/app.json"],
        capture_output=True,
        env=env,
    )
    assert old.stdout == b'{"theme": "dark"}'

    archive = subprocess.run([*command, "config", "--archive", "tar"], capture_output=True, env=env)
    assert archive.returncode == 0, archive.stderr
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        names = {member.name: member for member in tar.getmembers()}
        assert set(names) == {
            "config",
            "config/app.json",
            "config/deep",
            "config/deep/more.json",
            "config/link",
        }
        assert names["config/link"].issym() and names["config/link"].linkname == "app.json"
        extracted = tar.extractfile("config/app.json")
        assert extracted is not None and extracted.read() == b'{"theme": "light"}'

    for path, message in (
        ("config", "is a folder of backup"),
        ("config", "or --archive tar for a folder"),
        ("config/link", "is a symlink to 'app.json'"),
        ("nope", "is not in backup"),
        ("../x", "not a path inside a backup"),
    ):
        refused = subprocess.run([*command, path], capture_output=True, env=env, text=True)
        assert refused.returncode == 1 and refused.stdout == "", path
        assert message in refused.stderr and len(refused.stderr.splitlines()) == 1

    # A reader that leaves early (| head) ends the dump quietly.
    head = subprocess.Popen(
        [*command, "cache/blob.bin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert head.stdout is not None and len(head.stdout.read(10)) == 10
    head.stdout.close()
    assert head.wait(timeout=60) == 0
    assert head.stderr is not None and b"error" not in head.stderr.read()


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal is POSIX's")
def test_dump_refuses_a_terminal(two_backups: tuple[list[str], str, list[str]]) -> None:
    """A database's bytes on a terminal garble it: dump asks for a redirection (restic's
    rule), one line, exit 1, nothing written."""
    import pty

    args, _, _ = two_backups
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cloudkeep", *args, "dump", "latest", "config/app.json"],
            stdout=follower, stderr=subprocess.PIPE, env={**os.environ, **ENV}, timeout=120,
        )  # fmt: skip
        os.close(follower)
        written = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is drained
            written = os.read(leader, 4096)
    finally:
        os.close(leader)
    assert done.returncode == 1 and written == b""
    assert done.stderr.decode().splitlines() == [
        "cloudkeep: error: dump writes a file's bytes to standard output, and stdout is a "
        "terminal: redirect it ('> FILE') or pipe it ('| less')"
    ]


def test_dump_fetches_only_that_files_chunks(data_dir: Path, tmp_path: Path) -> None:
    ws = workspace(data_dir, (tmp_path / "store").as_uri())
    info = ws.backup()
    with ws.reader() as reader:
        entry = file_entry(ws.manifest(info.id), "config/app.json")
        out = io.BytesIO()
        assert write_file(reader, entry, out) == len(out.getvalue())
        assert out.getvalue() == (data_dir / "config" / "app.json").read_bytes()
        assert 0 < reader.fetched_bytes < 64 * 1024 < info.bytes // 4


def test_restore_include_through_the_cli(
    two_backups: tuple[list[str], str, list[str]],
    data_dir: Path,
    tmp_path: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    args, _, (first, _) = two_backups
    target = tmp_path / "picked"
    into = cli(
        *args,
        "restore",
        first,
        "--include",
        "config/app.json",
        "--include",
        "cache",
        "--target",
        str(target),
        env=ENV,
    )
    assert into.code == 0, into.stderr
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "cache",
        "cache/blob.bin",
        "config",
        "config/app.json",
    ]
    (data_dir / "config" / "deep" / "more.json").write_text("changed")
    in_place = cli(*args, "restore", first, "--include", "config/app.json", env=ENV)
    assert in_place.code == 0, in_place.stderr
    assert "cloudkeep-undo-files" in in_place.stderr and "puts them back" in in_place.stderr
    assert (data_dir / "config" / "app.json").read_text() == '{"theme": "dark"}'
    assert (data_dir / "config" / "deep" / "more.json").read_text() == "changed"
    undone = cli(*args, "restore", "--undo", env=ENV)
    assert undone.code == 0, undone.stderr
    assert (data_dir / "config" / "app.json").read_text() == '{"theme": "light"}'
    # --json prints the backup as 'list --json' does: its size, not the part restored.
    picked = cli(*args, "restore", first, "--include", "config/app.json", "--target",
                 str(tmp_path / "picked-json"), "--json", env=ENV)  # fmt: skip
    assert picked.code == 0, picked.stderr
    listed = {
        b["id"]: b for b in json.loads(cli(*args, "list", "--json", env=ENV).stdout)["iterable"]
    }
    assert json.loads(picked.stdout)["bytes"] == listed[first]["bytes"] > 1000
    missing = cli(*args, "restore", first, "--include", "config/nope", env=ENV)
    assert missing.code == 1 and "'config/nope' is not in backup" in missing.stderr
    refused = cli(*args, "restore", "--undo", "--include", "x", env=ENV)
    assert refused.code == 1 and "--include" in refused.stderr
