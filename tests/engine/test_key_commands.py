"""Issue 13, item 6: the key is manageable (`cloudkeep key ...`), through the real CLI.

Every command runs as a subprocess against a local folder store and the moto S3
server: several passphrases for one repository, passwd (the old passphrase fails,
the new one works, the trust record follows), the recovery text (it gets a user
back in after every key file was deleted, and is verified before anything is
written), and the refusals that keep a user from locking themselves out.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cloudkeep.repository.locks import LockTiming, RepositoryLock
from cloudkeep.repository.repository import Repository
from cloudkeep.storage.url import open_store

OLD = "first passphrase of the laptop"
NEW = "second, much longer passphrase"


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    return str(request.getfixturevalue("s3_server").url_for(f"keys-{os.urandom(6).hex()}"))


class Device:
    """One machine: its own home and config dir, running the real CLI."""

    def __init__(self, root: Path, store: str) -> None:
        self.home = root
        self.config = root / "config"
        self.store = store
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "notes.txt").write_text("the data of " + root.name)

    def env(self, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
        """The environment of a run: no CLOUDKEEP_ variable of ours, none of ``drop``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDKEEP_", *drop))}
        env.update(
            HOME=str(self.home),
            CLOUDKEEP_CONFIG_DIR=str(self.config),
            CLOUDKEEP_CACHE_DIR=str(self.home / "cache"),
            CLOUDKEEP_STORE_RETRY_DEADLINE="5",
            CLOUDKEEP_DATA=str(self.data),
            CLOUDKEEP_STORE=self.store,
        )
        env.update(extra)
        return env

    def run(
        self, *args: str, stdin: str | None = None, drop: tuple[str, ...] = (), **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloudkeep", *args],
            capture_output=True,
            text=True,
            env=self.env(drop, **extra),
            input=stdin,
            timeout=120,
            cwd=self.home,
        )

    def passphrase_file(self, name: str, text: str) -> Path:
        path = self.home / name
        path.write_text(text + "\n")
        path.chmod(0o600)
        return path

    def keys(self, *options: str) -> list[dict]:
        done = self.run(*options, "key", "list", "--json")
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout)["keys"])


def one_line_error(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The failure is exit ``code`` and one line, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudkeep: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def _key_names(store: str) -> set[str]:
    return {info.name for info in open_store(store).list("keys/")}


def test_several_passphrases_list_add_remove(tmp_path: Path, store: str) -> None:
    laptop = Device(tmp_path / "laptop", store)
    old = laptop.passphrase_file("old.pass", OLD)
    second = laptop.passphrase_file("second.pass", NEW)
    assert laptop.run("--passphrase-file", str(old), "backup").returncode == 0

    (only,) = laptop.keys("--passphrase-file", str(old))
    assert only["current"] and only["usable"] and only["host"]
    added = laptop.run(
        "--passphrase-file", str(old), "key", "add", "--new-passphrase-file", str(second)
    )
    assert added.returncode == 0, added.stderr
    table = laptop.run("--passphrase-file", str(old), "key", "list")
    assert table.returncode == 0 and table.stdout.count("\n *  ") + table.stdout.count("* ") >= 1
    keys = laptop.keys("--passphrase-file", str(old))
    assert len(keys) == 2 and [k["current"] for k in keys].count(True) == 1
    new_id = next(k["id"] for k in keys if not k["current"])
    assert new_id[:8] in added.stdout

    # Both passphrases open the repository; with the second, the second key is current.
    assert laptop.run("--passphrase-file", str(second), "list").returncode == 0
    current = {k["id"] for k in laptop.keys("--passphrase-file", str(second)) if k["current"]}
    assert current == {new_id}

    # This device's own key is refused; a prefix too short or matching nothing is one line.
    own = next(k["id"] for k in keys if k["current"])
    refused = one_line_error(laptop.run("--passphrase-file", str(old), "key", "remove", own[:6]))
    assert "this device opened the repository with" in refused
    assert "not a key id" in one_line_error(
        laptop.run("--passphrase-file", str(old), "key", "remove", "zz")
    )
    missing = "0000" if not new_id.startswith("0000") else "ffff"
    assert "no key" in one_line_error(
        laptop.run("--passphrase-file", str(old), "key", "remove", missing)
    )

    removed = laptop.run("--passphrase-file", str(old), "key", "remove", new_id[:8])
    assert removed.returncode == 0, removed.stderr
    assert "wrong passphrase" in one_line_error(
        laptop.run("--passphrase-file", str(second), "list")
    )
    assert [k["id"] for k in laptop.keys("--passphrase-file", str(old))] == [own]


def test_passwd_old_passphrase_fails_new_works_and_trust_follows(
    tmp_path: Path, store: str
) -> None:
    laptop = Device(tmp_path / "laptop", store)
    old = laptop.passphrase_file("old.pass", OLD)
    new = laptop.passphrase_file("new.pass", NEW)
    assert laptop.run("--passphrase-file", str(old), "backup").returncode == 0
    (before,) = laptop.keys("--passphrase-file", str(old))

    changed = laptop.run(
        "--passphrase-file", str(old), "key", "passwd", "--new-passphrase-file", str(new)
    )
    assert changed.returncode == 0, changed.stderr
    assert "give the new one from now on" in changed.stderr  # an option gave the old one

    assert "wrong passphrase" in one_line_error(laptop.run("--passphrase-file", str(old), "list"))
    listed = laptop.run("--passphrase-file", str(new), "list", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)["iterable"]) == 1
    (after,) = laptop.keys("--passphrase-file", str(new))
    assert after["current"] and after["id"] != before["id"]
    (record,) = (laptop.config / "trusted-stores").iterdir()
    assert json.loads(record.read_text())["key_file"] == f"keys/{after['id']}"


def test_passwd_of_the_default_key_file_is_adopted_by_the_next_runs(tmp_path: Path) -> None:
    """The generated key file: the next plain `cloudkeep backup` opens with the new
    passphrase (the configuration names it); the old file is left, opening nothing."""
    laptop = Device(tmp_path / "laptop", (tmp_path / "store").as_uri())
    env = {"CLOUDKEEP_STORE": ""}  # the default store: the one the configuration applies to
    assert laptop.run("backup", **env).returncode == 0
    new = laptop.passphrase_file("new.pass", NEW)
    changed = laptop.run("key", "passwd", "--new-passphrase-file", str(new), **env)
    assert changed.returncode == 0, changed.stderr
    assert f"reads the passphrase from {new}" in changed.stderr
    assert laptop.run("backup", **env).returncode == 0
    default_key = laptop.config / "repository.key"
    assert "wrong passphrase" in one_line_error(
        laptop.run("--passphrase-file", str(default_key), "list", **env)
    )


def test_recovery_after_every_key_file_was_deleted(tmp_path: Path, store: str) -> None:
    laptop = Device(tmp_path / "laptop", store)
    old = laptop.passphrase_file("old.pass", OLD)
    backed_up = laptop.run("--passphrase-file", str(old), "backup", "--json")
    assert backed_up.returncode == 0, backed_up.stderr
    backup_id = json.loads(backed_up.stdout)["id"]

    recovery = tmp_path / "recovery.txt"
    exported = laptop.run("--passphrase-file", str(old), "key", "export", "--output", str(recovery))
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE(recovery.stat().st_mode) == 0o600
    text = recovery.read_text()
    assert "Keep it offline" in text and OLD not in text
    printed = laptop.run("--passphrase-file", str(old), "key", "export")
    assert printed.returncode == 0 and "Keep it offline" in printed.stdout
    assert "exists" in one_line_error(
        laptop.run("--passphrase-file", str(old), "key", "export", "--output", str(recovery))
    )

    storage = open_store(store)
    for name in _key_names(store):
        storage.delete(name)
    assert "key recover" in one_line_error(laptop.run("--passphrase-file", str(old), "list"))

    # A new machine: empty home, the recovery text typed in by hand (lower case, dashes).
    phone = Device(tmp_path / "new-machine", store)
    new = phone.passphrase_file("new.pass", NEW)
    typed = "\n".join(
        line.lower().replace(" ", "-", 3) if line[:2].strip().isdigit() else line
        for line in text.splitlines()
    )
    without = phone.run("key", "recover", "--recovery-file", "-", stdin=typed)
    assert "terminal" in one_line_error(without)
    recovered = phone.run(
        "key", "recover", "--recovery-file", "-", "--new-passphrase-file", str(new), stdin=typed
    )
    assert recovered.returncode == 0, recovered.stderr
    target = tmp_path / "restored"
    restored = phone.run(
        "--passphrase-file", str(new), "restore", backup_id, "--target", str(target)
    )
    assert restored.returncode == 0, restored.stderr
    assert (target / "notes.txt").read_text() == "the data of laptop"
    # The laptop gets back in with the same text, under its own trust record.
    again = laptop.run(
        "key",
        "recover",
        "--recovery-file",
        str(recovery),
        "--new-passphrase-file",
        str(new),
        CLOUDKEEP_PASSPHRASE_FILE=str(old),
    )
    assert again.returncode == 0, again.stderr
    assert len(_key_names(store)) == 2
    assert laptop.run("--passphrase-file", str(new), "backup").returncode == 0


def test_recovery_text_is_verified_before_anything_is_written(tmp_path: Path) -> None:
    laptop = Device(tmp_path / "laptop", (tmp_path / "store").as_uri())
    other = Device(tmp_path / "other", (tmp_path / "other-store").as_uri())
    old = laptop.passphrase_file("old.pass", OLD)
    new = laptop.passphrase_file("new.pass", NEW)
    for device in (laptop, other):
        assert device.run("--passphrase-file", str(old), "backup").returncode == 0
    foreign = other.run("--passphrase-file", str(old), "key", "export")
    assert foreign.returncode == 0
    mine = laptop.run("--passphrase-file", str(old), "key", "export").stdout
    before = _key_names(laptop.store)

    def recover(text: str) -> str:
        path = tmp_path / "text.txt"
        path.write_text(text)
        return one_line_error(
            laptop.run(
                "key", "recover", "--recovery-file", str(path), "--new-passphrase-file", str(new)
            )
        )

    assert "is for repository" in recover(foreign.stdout)
    lines = mine.splitlines()
    third = next(i for i, line in enumerate(lines) if line.startswith(" 3  "))
    swapped = "1" if lines[third][4] != "1" else "2"
    typo = [*lines[:third], lines[third][:4] + swapped + lines[third][5:], *lines[third + 1 :]]
    assert "line 3" in recover("\n".join(typo))
    assert "line 4 of the recovery text is missing" in recover(
        "\n".join(line for line in lines if not line.startswith(" 4  "))
    )
    assert "no lines of a recovery text" in recover("hello")
    assert _key_names(laptop.store) == before


def test_passwd_interrupted_before_the_old_key_goes_never_locks_out(tmp_path: Path) -> None:
    """Another client holds the repository while passwd runs: the new key is added and
    adopted, the old one stays (said, with the command that removes it); both open."""
    laptop = Device(tmp_path / "laptop", (tmp_path / "store").as_uri())
    old = laptop.passphrase_file("old.pass", OLD)
    new = laptop.passphrase_file("new.pass", NEW)
    assert laptop.run("--passphrase-file", str(old), "backup").returncode == 0
    repo = Repository.open(open_store(laptop.store), OLD)
    timing = LockTiming(2.0)
    with RepositoryLock(repo, exclusive=False, purpose="backup", timing=timing).acquire(5):
        changed = laptop.run(
            "--passphrase-file",
            str(old),
            "key",
            "passwd",
            "--new-passphrase-file",
            str(new),
            CLOUDKEEP_LOCK_STALE_AFTER="2",
        )
    assert changed.returncode == 0, changed.stderr
    assert "still in the store" in changed.stderr and "key remove" in changed.stderr
    for passphrase in (old, new):
        assert laptop.run("--passphrase-file", str(passphrase), "list").returncode == 0
    assert len(laptop.keys("--passphrase-file", str(new))) == 2


def test_two_devices_removing_each_others_key_at_once_leave_one(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    laptop, desktop = Device(tmp_path / "laptop", store), Device(tmp_path / "desktop", store)
    mine = laptop.passphrase_file("mine.pass", OLD)
    theirs = desktop.passphrase_file("theirs.pass", NEW)
    assert laptop.run("--passphrase-file", str(mine), "backup").returncode == 0
    added = laptop.run(
        "--passphrase-file", str(mine), "key", "add", "--new-passphrase-file", str(theirs)
    )
    assert added.returncode == 0, added.stderr
    assert desktop.run("--passphrase-file", str(theirs), "backup").returncode == 0
    keys = laptop.keys("--passphrase-file", str(mine))
    laptop_key = next(k["id"] for k in keys if k["current"])
    desktop_key = next(k["id"] for k in keys if not k["current"])

    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def remove(name: str, device: Device, passphrase: Path, victim: str) -> None:
        results[name] = device.run("--passphrase-file", str(passphrase), "key", "remove", victim)

    threads = [
        threading.Thread(target=remove, args=("laptop", laptop, mine, desktop_key)),
        threading.Thread(target=remove, args=("desktop", desktop, theirs, laptop_key)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    succeeded = [name for name, done in results.items() if done.returncode == 0]
    assert len(succeeded) <= 1, {n: d.stderr for n, d in results.items()}
    for done in results.values():
        if done.returncode:
            one_line_error(done)
    left = _key_names(store)
    assert len(left) >= 1
    survivors = [(laptop, mine), (desktop, theirs)]
    assert any(d.run("--passphrase-file", str(p), "list").returncode == 0 for d, p in survivors)


def test_key_add_stops_at_the_keys_a_device_tries_and_errors_are_one_line(tmp_path: Path) -> None:
    laptop = Device(tmp_path / "laptop", (tmp_path / "store").as_uri())
    old = laptop.passphrase_file("old.pass", OLD)
    new = laptop.passphrase_file("new.pass", NEW)
    assert laptop.run("--passphrase-file", str(old), "backup").returncode == 0
    keys = tmp_path / "store" / "keys"
    (original,) = keys.iterdir()
    for number in range(7):
        (keys / f"{number:032x}").write_bytes(original.read_bytes())
    refused = laptop.run(
        "--passphrase-file", str(old), "key", "add", "--new-passphrase-file", str(new)
    )
    assert "remove one first" in one_line_error(refused)
    assert len(list(keys.iterdir())) == 8
    assert "does not exist" in one_line_error(
        laptop.run("--passphrase-file", str(old), "key", "add", "--new-passphrase-file", "nope")
    )
    assert "terminal" in one_line_error(laptop.run("--passphrase-file", str(old), "key", "add"))
    for planted in keys.iterdir():
        if planted != original:
            planted.unlink()
    (keys / ("ab" * 16)).write_bytes(b"[" * 4000)  # a hostile key file is listed, unusable
    listed = laptop.keys("--passphrase-file", str(old))
    assert {k["usable"] for k in listed} == {True, False}
    removed = laptop.run("--passphrase-file", str(old), "key", "remove", "abab")
    assert removed.returncode == 0, removed.stderr
    assert "last key" in one_line_error(
        laptop.run("--passphrase-file", str(old), "key", "remove", original.name[:8])
    )


def test_recovery_when_the_configured_passphrase_file_is_lost(tmp_path: Path) -> None:
    """Every command needs the configured passphrase file, but `key recover` (and
    `config show`) run without it, and the next runs read the new one."""
    store = (tmp_path / "store").as_uri()
    laptop = Device(tmp_path / "laptop", store)
    mine = laptop.passphrase_file("mine.pass", OLD)
    env = {"CLOUDKEEP_STORE": "", "CLOUDKEEP_DATA": ""}
    done = laptop.run(
        "setup", "--yes", "--data", str(laptop.data), "--store", store,
        "--passphrase-file", str(mine), **env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    recovery = laptop.run("key", "export", **env).stdout
    mine.unlink()
    assert "does not exist" in one_line_error(laptop.run("backup", **env))
    assert "does not exist" in one_line_error(laptop.run("key", "list", **env))
    shown = laptop.run("config", "show", **env)
    assert shown.returncode == 0 and "cannot be read" in shown.stdout
    new = laptop.passphrase_file("new.pass", NEW)
    recovered = laptop.run(
        "key", "recover", "--recovery-file", "-", "--new-passphrase-file", str(new),
        stdin=recovery, **env,
    )  # fmt: skip
    assert recovered.returncode == 0, recovered.stderr
    assert laptop.run("backup", **env).returncode == 0


def test_a_planted_key_files_text_is_shown_as_text(tmp_path: Path) -> None:
    laptop = Device(tmp_path / "laptop", (tmp_path / "store").as_uri())
    old = laptop.passphrase_file("old.pass", OLD)
    assert laptop.run("--passphrase-file", str(old), "backup").returncode == 0
    planted = {
        "version": 1,
        "kdf": "argon2id",
        "time_cost": 2,
        "memory_cost_kib": 64 * 1024,
        "parallelism": 2,
        "salt": "c2FsdHNhbHRzYWx0c2FsdA==",
        "nonce": "bm9uY2Vub25jZQ==",
        "data": "ZGF0YQ==",
        "created": "2026-01-01T00:00:00+00:00",
        "hostname": "[red]evil[/red]\x1b[2J" + "x" * 500,
    }
    (tmp_path / "store" / "keys" / ("cd" * 16)).write_text(json.dumps(planted))
    listed = laptop.run("--passphrase-file", str(old), "key", "list")
    assert listed.returncode == 0, listed.stderr
    assert "[red]evil[/red]" in listed.stdout and "\x1b" not in listed.stdout
    assert "x" * 100 not in listed.stdout
