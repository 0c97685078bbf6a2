"""The CLI contract: names, JSON wire models, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.engine.conftest import PASSPHRASE


def _args(data: Path, store: str) -> list[str]:
    return ["--data", str(data), "--store", store]


def test_first_backup_creates_repository_and_default_key(
    data_dir: Path, tmp_path: Path, cli, isolated_dirs: Path
) -> None:
    store = (tmp_path / "store").as_uri()
    result = cli(*_args(data_dir, store), "backup", "--json")
    assert result.code == 0, result.stderr
    backup = json.loads(result.stdout)
    assert set(backup) >= {
        "id",
        "version",
        "timestamp",
        "bytes",
        "created",
        "device_name",
        "platform",
    }
    assert backup["created"]["value"].endswith("Z")
    key_file = isolated_dirs / "config" / "repository.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in result.stderr and "cannot be read" in result.stderr

    again = cli(*_args(data_dir, store), "backup")
    assert again.code == 0 and "repository key" not in again.stderr  # said once

    listed = json.loads(cli(*_args(data_dir, store), "list", "--json").stdout)
    assert [b["id"] for b in listed["iterable"]][1] == backup["id"]

    init = cli(*_args(data_dir, store), "init")
    assert init.code == 1 and "already exists" in init.stderr


def test_restore_delete_and_check_commands(data_dir: Path, tmp_path: Path, cli) -> None:
    store = (tmp_path / "store").as_uri()
    # The in-place capture, as on Linux: a backup-API image differs from the live file
    # in its header pages, which a restore then fetches (the count below would differ).
    env = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE, "CLOUDKEEP_SQLITE_CAPTURE": "in-place"}
    assert cli(*_args(data_dir, store), "init", env=env).code == 0
    backup = json.loads(cli(*_args(data_dir, store), "backup", "--json", env=env).stdout)
    target = tmp_path / "restored"
    restored = cli(
        *_args(data_dir, store), "restore", backup["id"], "--target", str(target), "--json", env=env
    )
    assert restored.code == 0, restored.stderr
    assert json.loads(restored.stdout)["id"] == backup["id"]
    assert (target / "config" / "app.json").read_text() == '{"theme": "dark"}'
    (data_dir / "config" / "app.json").write_text('{"theme": "light"}')
    again = cli(
        *_args(data_dir, store), "restore", backup["id"], "--target", str(tmp_path / "r2"), env=env
    )
    assert again.code == 0, again.stderr
    assert "bytes came from the live data, 17 from the store" in again.stderr
    fetched = cli(
        *_args(data_dir, store),
        "restore",
        backup["id"],
        "--target",
        str(tmp_path / "r3"),
        "--fetch-all",
        env=env,
    )
    assert fetched.code == 0 and "live data" not in fetched.stderr, fetched.stderr
    assert (tmp_path / "r3" / "config" / "app.json").read_text() == '{"theme": "dark"}'
    checked = cli(*_args(data_dir, store), "check", "--read-data", env=env)
    assert checked.code == 0 and "no errors" in checked.stdout
    packs = tmp_path / "store" / "data"
    assert [p for p in packs.rglob("*") if p.is_file()]  # pack names have no dot: match all
    deleted = cli(*_args(data_dir, store), "delete", backup["id"], env=env)
    assert deleted.code == 0
    listed = json.loads(cli(*_args(data_dir, store), "list", "--json", env=env).stdout)
    assert listed == {"iterable": []}
    assert [p for p in packs.rglob("*") if p.is_file()] == []  # every pack reclaimed


def _one_line_error(result, code: int, *needles: str) -> None:
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_user_errors_exit_1_with_one_line(data_dir: Path, tmp_path: Path, cli) -> None:
    store = (tmp_path / "store").as_uri()
    env = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE}
    assert cli(*_args(data_dir, store), "backup", env=env).code == 0
    _one_line_error(
        cli(*_args(data_dir, store), "list", env={"CLOUDKEEP_PASSPHRASE": "not the passphrase"}),
        1,
        "wrong passphrase",
    )
    _one_line_error(cli(*_args(data_dir, store), "list"), 1, "no passphrase")
    _one_line_error(
        cli(*_args(data_dir, store), "restore", "0.1.0_12345", env=env), 1, "no backup 0.1.0_12345"
    )
    _one_line_error(
        cli(*_args(data_dir, store), "restore", "../../etc/passwd", env=env), 1, "no backup"
    )
    _one_line_error(
        cli(*_args(data_dir, "ftp://example/x"), "list", env=env),
        1,
        "unknown scheme",
        "s3",
        "webdav",
    )
    _one_line_error(
        cli(*_args(data_dir, store), "--passphrase-file", str(tmp_path / "nope"), "list"),
        1,
        "passphrase file",
    )
    _one_line_error(
        cli(*_args(tmp_path / "missing", store), "backup", env=env), 1, "does not exist"
    )
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    backup_id = json.loads(cli(*_args(data_dir, store), "list", "--json", env=env).stdout)[
        "iterable"
    ][0]["id"]
    _one_line_error(
        cli(*_args(data_dir, store), "restore", backup_id, "--target", str(target), env=env),
        1,
        "not empty",
    )
    assert (target / "keep.txt").read_text() == "mine"


def test_unreachable_store_exits_3_in_bounded_time(data_dir: Path, cli) -> None:
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = f"s3://bucket/prefix?endpoint=http://127.0.0.1:{port}&region=us-east-1"
    env = {
        "CLOUDKEEP_PASSPHRASE": PASSPHRASE,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "CLOUDKEEP_STORE_RETRY_DEADLINE": "2",
    }
    started = time.monotonic()
    result = cli(*_args(data_dir, store), "list", env=env)
    assert time.monotonic() - started < 60
    _one_line_error(result, 3, "unreachable")


def test_missing_repository_is_a_clear_error(data_dir: Path, tmp_path: Path, cli) -> None:
    store = (tmp_path / "empty-store").as_uri()
    env = {"CLOUDKEEP_PASSPHRASE": PASSPHRASE}
    # A mistyped store is not an empty one: list says so (it used to print no backups).
    for args in (["list"], ["list", "--json"], ["check"], ["restore", "latest"]):
        result = cli(*_args(data_dir, store), *args, env=env)
        _one_line_error(result, 1, "no cloudkeep repository at", "check the store URL")
        assert result.stdout == ""


def test_passphrase_never_appears_in_output(data_dir: Path, tmp_path: Path, cli) -> None:
    secret = "s3cr3t-Passphrase-value-XYZ"
    passphrase_file = tmp_path / "pass"
    passphrase_file.write_text(secret + "\n")
    os.chmod(passphrase_file, 0o600)
    store = (tmp_path / "store").as_uri()
    outputs = [
        cli(*_args(data_dir, store), "--passphrase-file", str(passphrase_file), "backup"),
        cli(*_args(data_dir, store), "list", env={"CLOUDKEEP_PASSPHRASE": secret + "x"}),
        cli(*_args(data_dir, store), "--passphrase-file", str(passphrase_file), "check"),
    ]
    for result in outputs:
        assert secret not in result.stdout + result.stderr


def test_restore_without_room_fails_before_fetching(data_dir: Path, tmp_path: Path) -> None:
    """A file size limit stands in for a full disk: blocks are reserved before any fetch."""
    import shlex
    import subprocess
    import sys

    store = (tmp_path / "store").as_uri()
    env = {**os.environ, "CLOUDKEEP_PASSPHRASE": PASSPHRASE}
    base = [sys.executable, "-m", "cloudkeep", *_args(data_dir, store)]
    backup = subprocess.run([*base, "backup", "--json"], capture_output=True, text=True, env=env)
    backup_id = json.loads(backup.stdout)["id"]
    target = tmp_path / "restored"
    restore = shlex.join([*base, "restore", backup_id, "--target", str(target)])
    done = subprocess.run(
        ["bash", "-c", f"ulimit -f 100 && exec {restore}"],  # files up to 100 KiB
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "not enough space to restore" in done.stderr
    assert "Traceback" not in done.stderr
    assert not target.exists() or not any(target.iterdir())
    assert not list(tmp_path.glob(".restored.cloudkeep-restore-*"))  # staging removed


def test_usage_errors_are_one_clear_line_with_exit_1(cli) -> None:
    for args, says in (
        (["--bogus"], "No such option: --bogus"),
        (["backup", "--nope"], "No such option: --nope"),
        (["restore"], "Missing argument 'ID'"),
    ):
        result = cli(*args)
        assert result.code == 1, (args, result.stderr)
        assert says in result.stderr and "internal error" not in result.stderr
    bare = cli()
    assert bare.code == 0 and "Usage" in bare.stdout
