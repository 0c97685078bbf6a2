"""Issue 13, item 2: `cloudkeep setup` and `cloudkeep config show|path`, through the real CLI.

Setup checks the store before it saves anything (a wrong passphrase, missing
credentials, a missing bucket, a bad URL: one line, nothing written), joins or
creates the repository (trust on first use), saves the configuration every
command then reads, and edits it when run again. On a terminal it asks.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cloudkeep.config import OnFailure, Retention, Schedule, load_config
from tests.engine.test_key_commands import NEW, OLD, Device, one_line_error


def _setup(device: Device, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return device.run("setup", "--yes", "--data", str(device.data), *args, **env)


def _nothing_saved(device: Device) -> None:
    saved = sorted(p.name for p in device.config.iterdir()) if device.config.exists() else []
    assert saved in ([], ["trusted-stores"]) or "config.toml" not in saved, saved
    assert not (device.config / "config.toml").exists()
    assert not list(device.config.glob("passphrase*.key"))


def test_setup_for_scripts_saves_what_every_command_then_reads(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    laptop = Device(tmp_path / "laptop", store)
    env = {"CLOUDKEEP_STORE": "", "CLOUDKEEP_DATA": ""}
    done = _setup(
        laptop,
        "--store",
        store,
        "--generate-key",
        "--schedule",
        "every 30m",
        "--keep-daily",
        "7",
        "--keep-within",
        "30d",
        "--on-failure-command",
        "notify-send 'backup failed'",
        "--on-failure-webhook",
        "https://hooks.example/cloudkeep",
        "--device-name",
        "work laptop",
        **env,
    )
    assert done.returncode == 0, done.stderr
    config_file = laptop.config / "config.toml"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert str(config_file) in done.stdout and "created repository" in done.stdout
    for step in ("cloudkeep backup", "cloudkeep service install", "cloudkeep key export"):
        assert step in done.stdout
    key_file = laptop.config / "repository.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    config = load_config(laptop.config)
    assert config.data == str(laptop.data) and config.store == store
    assert config.passphrase_file is None and config.device_name == "work laptop"
    assert config.schedule == Schedule.parse("every 30m")
    assert config.retention == Retention(daily=7, within="30d")  # the rules given, only
    assert config.on_failure == OnFailure(
        ("notify-send", "backup failed"), "https://hooks.example/cloudkeep"
    )
    assert (tmp_path / "store" / "config").exists()
    assert len(list((laptop.config / "trusted-stores").iterdir())) == 1

    backed_up = laptop.run("backup", "--json", **env)  # no option: the configuration
    assert backed_up.returncode == 0, backed_up.stderr
    assert json.loads(backed_up.stdout)["device_name"] == "work laptop"

    shown = laptop.run("config", "show", "--json", **env)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["path"] == str(config_file) and document["exists"]
    assert document["settings"]["schedule"] == "every 30m"
    effective = document["effective"]
    assert effective["data"] == {"value": str(laptop.data), "source": "file"}
    assert effective["store"]["source"] == "file"
    assert effective["passphrase"] == {"value": f"file {key_file}", "source": "default"}
    overridden = laptop.run(
        "--store",
        (tmp_path / "other").as_uri(),
        "config",
        "show",
        "--json",
        CLOUDKEEP_STORE="",
        CLOUDKEEP_DATA=str(tmp_path),
        CLOUDKEEP_PASSPHRASE=OLD,
    )
    effective = json.loads(overridden.stdout)["effective"]
    assert effective["store"]["source"] == "option"
    assert effective["data"] == {"value": str(tmp_path), "source": "environment (CLOUDKEEP_DATA)"}
    assert effective["passphrase"]["source"] == "environment (CLOUDKEEP_PASSPHRASE)"
    assert OLD not in overridden.stdout
    text = laptop.run("config", "show", **env)
    assert "every 30m" in text.stdout and "(file)" in text.stdout
    path = laptop.run("config", "path", **env)
    assert path.stdout.strip() == str(config_file)


def test_setup_again_edits_the_configuration_and_joins(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    laptop = Device(tmp_path / "laptop", store)
    env = {"CLOUDKEEP_STORE": "", "CLOUDKEEP_DATA": ""}
    assert _setup(laptop, "--store", store, "--schedule", "daily", **env).returncode == 0
    first = load_config(laptop.config)
    again = laptop.run("setup", "--yes", "--keep-last", "3", "--schedule", "off", **env)
    assert again.returncode == 0, again.stderr
    assert "joined repository" in again.stdout
    edited = load_config(laptop.config)
    assert edited.data == first.data and edited.store == store
    assert edited.schedule is None
    assert edited.retention == Retention(last=3)  # the rules given replace the policy
    kept = laptop.run("setup", "--yes", **env)
    assert kept.returncode == 0 and load_config(laptop.config) == edited


def test_setup_joins_an_existing_repository_and_refuses_a_wrong_passphrase(
    tmp_path: Path, s3_server
) -> None:
    store = s3_server.url_for(f"setup-{os.urandom(6).hex()}")
    laptop = Device(tmp_path / "laptop", store)
    mine = laptop.passphrase_file("mine.pass", OLD)
    assert laptop.run("--passphrase-file", str(mine), "backup").returncode == 0

    desktop = Device(tmp_path / "desktop", store)
    wrong = desktop.passphrase_file("wrong.pass", NEW)
    env = {"CLOUDKEEP_STORE": ""}
    refused = _setup(desktop, "--store", store, "--passphrase-file", str(wrong), **env)
    assert "wrong passphrase" in one_line_error(refused)
    _nothing_saved(desktop)
    generated = _setup(desktop, "--store", store, "--generate-key", **env)
    assert "a new key cannot open" in one_line_error(generated)
    _nothing_saved(desktop)

    # The passphrase typed (here: in the environment) is saved for unattended runs.
    joined = _setup(desktop, "--store", store, CLOUDKEEP_PASSPHRASE=OLD, **env)
    assert joined.returncode == 0, joined.stderr
    assert "joined repository" in joined.stdout and "unattended" in joined.stderr
    saved = desktop.config / "passphrase.key"
    assert saved.read_text().strip() == OLD and stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert load_config(desktop.config).passphrase_file == str(saved)
    listed = desktop.run("list", "--json", **env)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)["iterable"]) == 1


def test_store_failures_are_one_line_and_save_nothing(tmp_path: Path, s3_server) -> None:
    device = Device(tmp_path / "device", "")
    env = {"CLOUDKEEP_STORE": ""}
    missing_bucket = s3_server.url_for("x").replace(s3_server.bucket, "no-such-bucket")
    line = one_line_error(_setup(device, "--store", missing_bucket, **env), code=3)
    assert "NoSuchBucket" in line or "does not exist" in line
    done = _setup(device, "--store", s3_server.url_for("creds"), drop=("AWS_",), **env)
    line = one_line_error(done, code=3)  # refused by the store, as a wrong key is
    assert "AWS_ACCESS_KEY_ID" in line and "--credential" in line
    assert "unknown scheme" in one_line_error(_setup(device, "--store", "nope://x", **env))
    assert "no store given" in one_line_error(_setup(device, **env))
    gone = device.run("setup", "--yes", "--data", str(tmp_path / "missing"), "--store", "x", **env)
    assert "does not exist" in one_line_error(gone)
    assert "not a store credential" in one_line_error(
        _setup(device, "--store", s3_server.url, "--credential", "PATH", **env)
    )
    assert "not set in the environment" in one_line_error(
        _setup(device, "--store", s3_server.url, "--credential", "AWS_SESSION_TOKEN", **env)
    )
    for flags in (("--schedule", "every soon"), ("--keep-within", "soon"), ("--keep-last", "-2")):
        bad = _setup(device, "--store", s3_server.url_for("flags"), *flags, **env)
        assert "keep" in one_line_error(bad) or "duration" in bad.stderr
    _nothing_saved(device)


def test_credentials_saved_by_setup_let_commands_run_without_them(
    tmp_path: Path, s3_server
) -> None:
    store = s3_server.url_for(f"creds-{os.urandom(6).hex()}")
    device = Device(tmp_path / "device", store)
    env = {"CLOUDKEEP_STORE": ""}
    done = _setup(
        device,
        "--store",
        store,
        "--credential",
        "AWS_ACCESS_KEY_ID",
        "--credential",
        "AWS_SECRET_ACCESS_KEY",
        **env,
    )
    assert done.returncode == 0, done.stderr
    assert set(load_config(device.config).credentials) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    shown = device.run("config", "show", **env)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in shown.stdout and "********" in shown.stdout
    backed_up = device.run("backup", drop=("AWS_ACCESS", "AWS_SECRET"), **env)
    assert backed_up.returncode == 0, backed_up.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal")
def test_setup_asks_on_a_terminal(tmp_path: Path) -> None:
    """The prompts, answered through a pseudo-terminal: defaults shown, a missing data
    folder asked again, a typed passphrase asked twice and saved."""
    import pty
    import select
    import signal
    import termios

    store = (tmp_path / "store").as_uri()
    device = Device(tmp_path / "device", store)
    answers = [
        ("Data folder", str(tmp_path / "nowhere")),
        ("Data folder", str(device.data)),
        ("Store URL", store),
        ("Key", "type"),
        ("Passphrase", NEW),
        ("Type it again", NEW),
        ("Schedule", ""),
        ("Retention", "keep-daily 5"),
    ]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real CLI on the terminal
        env = device.env(CLOUDKEEP_STORE="", CLOUDKEEP_DATA="", COLUMNS="200")
        os.execve(sys.executable, [sys.executable, "-m", "cloudkeep", "setup"], env)
    hidden = ("Passphrase", "Type it again")
    output = b""
    try:
        for expected, answer in answers:
            while expected.encode() not in output.split(b"\n")[-1]:
                ready, _, _ = select.select([fd], [], [], 60)
                try:
                    chunk = os.read(fd, 4096) if ready else b""
                except OSError:  # the other end closed: the CLI ended
                    chunk = b""
                assert chunk, output.decode(errors="replace")
                output += chunk
            if expected in hidden:  # getpass flushes what was typed before echo went off
                while termios.tcgetattr(fd)[3] & termios.ECHO:
                    select.select([], [], [], 0.01)
            os.write(fd, answer.encode() + b"\r")
            output += b"\n"
        while True:
            ready, _, _ = select.select([fd], [], [], 60)
            try:
                chunk = os.read(fd, 4096) if ready else b""
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "does not exist" in text and "[hourly]" in text and NEW not in text
    config = load_config(device.config)
    assert config.data == str(device.data) and config.schedule == Schedule.parse("hourly")
    assert config.retention == Retention(daily=5)
    assert Path(config.passphrase_file or "").read_text().strip() == NEW


def test_a_forbidden_store_is_one_line_and_saves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A moto server that checks signatures: the test's keys are unknown to it (403)."""
    import urllib.request

    from tests.conftest import start_server

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "1")  # the bucket's creation only
    server = start_server(
        "moto-auth",
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        tmp_path,
    )
    try:
        endpoint = f"http://127.0.0.1:{server.port}"
        request = urllib.request.Request(f"{endpoint}/locked", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        device = Device(tmp_path / "device", "")
        store = f"s3://locked/p?endpoint={endpoint}&region=us-east-1"
        done = _setup(
            device, "--store", store, CLOUDKEEP_STORE="",
            AWS_ACCESS_KEY_ID="AKIAUNKNOWNTOMOTO", AWS_SECRET_ACCESS_KEY="not-a-real-secret-key",
        )  # fmt: skip
        assert "InvalidAccessKeyId" in one_line_error(done, code=3)
        assert "not-a-real-secret-key" not in done.stderr
        _nothing_saved(device)
    finally:
        server.stop()
