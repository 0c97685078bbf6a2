"""``cloudkeep service`` through the real CLI on Linux: a fake HOME, and a PATH whose
``systemctl`` and ``journalctl`` are scripts that record each call (or none at all)."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the systemd user unit")

UNIT = "cloudkeep.service"
RECORDING_SYSTEMCTL = """#!/bin/sh
printf '%s\\n' "$*" >> "$CALLS"
case "$2" in
  is-active) echo active ;;
  is-enabled) echo enabled ;;
  enable) if [ -n "$REFUSE_ENABLE" ]; then echo "$REFUSE_ENABLE" >&2; exit 1; fi ;;
esac
exit 0
"""
RECORDING_JOURNALCTL = """#!/bin/sh
printf 'journalctl %s\\n' "$*" >> "$CALLS"
echo "2026-11-30T01:00:00+0000 host python3[7]: cloudkeep API listening on http://localhost:39301"
echo "2026-11-30T01:00:01+0000 host python3[7]: INFO:     Application startup complete."
"""


@dataclass
class Machine:
    """A fake user: HOME, config and cache folders, a PATH of recording tools."""

    root: Path
    home: Path
    bin: Path
    calls: Path

    @property
    def unit(self) -> Path:
        return self.home / ".config" / "systemd" / "user" / UNIT

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "PATH": str(self.bin),
            "CALLS": str(self.calls),
            "CLOUDKEEP_CONFIG_DIR": str(self.root / "config dir é"),
            "CLOUDKEEP_CACHE_DIR": str(self.root / "cache"),
            **extra,
        }

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloudkeep", *args],
            capture_output=True,
            text=True,
            env=self.env(**extra),
            cwd=self.root,
            timeout=120,
        )

    def take_calls(self) -> list[str]:
        """The calls recorded since the last look."""
        if not self.calls.exists():
            return []
        calls = self.calls.read_text().splitlines()
        self.calls.unlink()
        return calls


def make_machine(root: Path, tools: dict[str, str]) -> Machine:
    machine = Machine(root, root / "home", root / "bin", root / "calls")
    machine.home.mkdir()
    machine.bin.mkdir()
    for name, script in tools.items():
        (machine.bin / name).write_text(script)
        (machine.bin / name).chmod(0o755)
    return machine


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return make_machine(
        tmp_path, {"systemctl": RECORDING_SYSTEMCTL, "journalctl": RECORDING_JOURNALCTL}
    )


def test_install_status_uninstall(machine: Machine) -> None:
    done = machine.run("service", "install", "--port", "39301", "--require-app-key")
    assert done.returncode == 0, done.stderr
    assert machine.take_calls() == ["--user daemon-reload", f"--user enable --now {UNIT}"]
    assert f"installed the systemd user unit {machine.unit}" in done.stdout
    lines = machine.unit.read_text().splitlines()
    assert (
        f'ExecStart="{sys.executable}" "-m" "cloudkeep" "serve" "--port" "39301" '
        '"--require-app-key"' in lines
    )
    assert f'Environment="CLOUDKEEP_CONFIG_DIR={machine.root}/config dir é"' in lines
    assert f'Environment="CLOUDKEEP_CACHE_DIR={machine.root}/cache"' in lines
    assert f'Environment="PATH={machine.bin}"' in lines
    assert "Restart=on-failure" in lines

    done = machine.run("service", "install", "--port", "39301", "--require-app-key")
    assert done.returncode == 0, done.stderr
    assert "kept (unchanged)" in done.stdout
    assert machine.take_calls() == ["--user daemon-reload", f"--user enable --now {UNIT}"]

    done = machine.run("service", "install", "--port", "39302")
    assert done.returncode == 0, done.stderr
    assert machine.take_calls() == [
        "--user daemon-reload",
        f"--user try-restart {UNIT}",  # the running server takes the new options
        f"--user enable --now {UNIT}",
    ]
    assert '"--port" "39302"' in machine.unit.read_text()

    done = machine.run("service", "status", "--lines", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"installed: systemd user unit {machine.unit}",
        "running: active, enabled",
        f"last log lines (journalctl --user --unit {UNIT}):",
        "  2026-11-30T01:00:00+0000 host python3[7]: cloudkeep API listening on "
        "http://localhost:39301",
        "  2026-11-30T01:00:01+0000 host python3[7]: INFO:     Application startup complete.",
    ]
    assert machine.take_calls() == [
        f"--user is-active {UNIT}",
        f"--user is-enabled {UNIT}",
        f"journalctl --user --unit {UNIT} --lines 2 --no-pager --output short-iso --quiet",
    ]
    state = json.loads(machine.run("service", "status", "--json").stdout)
    assert state["installed"] is True and state["running"] is True
    assert state["location"] == str(machine.unit) and len(state["log"]) == 2
    machine.take_calls()

    done = machine.run("service", "uninstall")
    assert done.returncode == 0, done.stderr
    assert f"stopped and removed the systemd user unit {machine.unit}" in done.stdout
    assert machine.take_calls() == [f"--user disable --now {UNIT}", "--user daemon-reload"]
    assert not machine.unit.exists()

    done = machine.run("service", "uninstall")
    assert done.returncode == 0, done.stderr
    assert "nothing to remove" in done.stdout
    assert machine.take_calls() == []


def test_without_systemctl_the_unit_is_written_and_exit_is_4(tmp_path: Path) -> None:
    machine = make_machine(tmp_path, {})
    done = machine.run("service", "install")
    assert done.returncode == 4, done.stderr
    assert machine.unit.is_file()
    assert "not started" in done.stdout
    assert f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT}" in done.stderr
    assert "Traceback" not in done.stderr

    done = machine.run("service", "status")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("unknown: systemctl --user gave no state")

    done = machine.run("service", "uninstall")
    assert done.returncode == 4, done.stderr
    assert not machine.unit.exists()
    assert f"systemctl --user stop {UNIT}" in done.stderr


def test_a_refused_enable_is_one_line_and_exit_1(machine: Machine) -> None:
    refusal = "Failed to enable unit: Unit cloudkeep.service has a bad unit file setting."
    done = machine.run("service", "install", REFUSE_ENABLE=refusal)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"cloudkeep: error: systemctl --user enable --now {UNIT} failed: {refusal}"
    )
    assert "Traceback" not in done.stderr


def test_dry_run_prints_the_unit_and_changes_nothing(machine: Machine) -> None:
    done = machine.run("service", "install", "--dry-run", "--allow-origin", "http://a b")
    assert done.returncode == 0, done.stderr
    assert f"would write the systemd user unit {machine.unit}" in done.stderr
    assert done.stdout.startswith("# Written by `cloudkeep service install`")
    assert '"--allow-origin" "http://a b"' in done.stdout
    assert not machine.unit.exists()
    assert machine.take_calls() == []


def test_the_unit_runs_serve(machine: Machine) -> None:
    """ExecStart's command is a working ``cloudkeep serve`` (``python -m cloudkeep``)."""
    unit = machine.run("service", "install", "--dry-run", "--port", "39301").stdout
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv == [sys.executable, "-m", "cloudkeep", "serve", "--port", "39301"]
    done = subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, env=machine.env(), timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Run the Pieces OS Backups API server" in done.stdout


def test_xdg_config_home_is_honoured(machine: Machine) -> None:
    xdg = machine.root / "xdg"
    done = machine.run("service", "install", XDG_CONFIG_HOME=str(xdg))
    assert done.returncode == 0, done.stderr
    assert (xdg / "systemd" / "user" / UNIT).is_file()
    assert not machine.unit.exists()


def test_no_secret_reaches_the_unit_and_unseen_settings_are_named(machine: Machine) -> None:
    secrets = {
        "CLOUDKEEP_PASSPHRASE": "pass-phrase-do-not-leak",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-do-not-leak",
        "CLOUDKEEP_STORE": "s3://bucket-do-not-leak/prefix",
    }
    done = machine.run("service", "install", **secrets)
    assert done.returncode == 0, done.stderr
    text = machine.unit.read_text()
    for value in secrets.values():
        assert value not in text
        assert value not in done.stdout + done.stderr
    warning = next(line for line in done.stderr.splitlines() if "reads its settings" in line)
    for name in secrets:
        assert name in warning
    assert "config.toml does not exist yet" in done.stderr


def test_service_run_sets_the_environment_and_logs_to_a_file(machine: Machine) -> None:
    """What the Windows task runs: variables set in-process, all output in the log file."""
    keys = machine.root / "other config"
    created = machine.run(
        "app-key", "create", "--label", "from-the-task", CLOUDKEEP_CONFIG_DIR=str(keys)
    )
    assert created.returncode == 0, created.stderr
    log = machine.root / "logs" / "service.log"
    common = ("service", "run", "--log-file", str(log), "--env", f"CLOUDKEEP_CONFIG_DIR={keys}")

    done = machine.run(*common, "--", "app-key", "list")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert "from-the-task" in log.read_text()

    done = machine.run(*common, "--", "app-key", "revoke", "nope")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "")
    assert "no application key with id 'nope'" in log.read_text()

    done = machine.run("service", "run", "--env", "NOEQUALS", "--", "app-key", "list")
    assert done.returncode == 1
    assert "--env takes NAME=VALUE" in done.stderr


def test_service_run_serves_with_its_log_in_the_file(machine: Machine) -> None:
    """The Windows task's command line, run for real: the server starts, and its own
    lines (cloudkeep's and uvicorn's) go to the log file, none to the console."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = machine.root / "cache" / "service.log"
    argv = ["service", "run", "--log-file", str(log), "--", "serve", "--port", str(port)]
    server = subprocess.Popen(
        [sys.executable, "-m", "cloudkeep", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=machine.env(CLOUDKEEP_DATA=str(machine.root / "data")),
        cwd=machine.root,
    )
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in (log.read_text() if log.exists() else ""):
            assert server.poll() is None, log.read_text() if log.exists() else "no log"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/health") as reply:
            assert reply.status == 200
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    assert (out, err) == (b"", b"")
    text = log.read_text()
    assert f"cloudkeep API listening on http://localhost:{port}" in text
    assert "GET /.well-known/health" in text  # uvicorn's access log
