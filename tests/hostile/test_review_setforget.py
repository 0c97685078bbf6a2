"""Review of issue 13 ("set and forget"): attacks on its new surfaces.

What a user's own configuration may hold (a webhook URL that is a token, a store URL
written with a password) never leaves through ``config show``, ``status`` or a
failure hook's webhook body and environment; ``status`` on a machine without a data
folder yet is an answer, not an internal error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cloudkeep.api.scheduler import scheduler_for
from cloudkeep.api.service import BackupService
from cloudkeep.config import OnFailure, UserConfig, load_config
from cloudkeep.settings import Settings

PASSWORD = "hunter2-PASSWORD"
TOKEN = "SLACK-TOKEN-5e3c"
STORE = f"webdav://bob:{PASSWORD}@dav.example/backups"
WEBHOOK = f"https://hooks.slack.example/services/T000/B000/{TOKEN}"


def _cloudkeep(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    env.update(
        HOME=str(home),
        CLOUDKEEP_CONFIG_DIR=str(home / "config"),
        CLOUDKEEP_CACHE_DIR=str(home / "cache"),
        CLOUDKEEP_STORE_RETRY_DEADLINE="2",
    )
    return subprocess.run(
        [sys.executable, "-m", "cloudkeep", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=home,
    )


def _hand_written_config(home: Path) -> None:
    """A configuration a user wrote by hand: a password in the store URL, a Slack webhook."""
    config = home / "config"
    config.mkdir(parents=True)
    (config / "config.toml").write_text(
        f'store = "{STORE}?token=QUERY-{TOKEN}"\n[on_failure]\nwebhook = "{WEBHOOK}"\n'
    )
    os.chmod(config / "config.toml", 0o600)
    assert load_config(config).on_failure.webhook == WEBHOOK


def test_config_show_masks_the_webhook_token_and_the_store_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _hand_written_config(home)
    for args in (("config", "show"), ("config", "show", "--json")):
        done = _cloudkeep(home, *args)
        assert done.returncode == 0, done.stderr
        said = done.stdout + done.stderr
        assert PASSWORD not in said and TOKEN not in said, said
        assert "hooks.slack.example" in said and "dav.example/backups" in said
    store = tmp_path / "store"
    setup = _cloudkeep(
        home,
        *("--store", store.as_uri(), "setup", "--yes", "--data", str(home)),
        *("--on-failure-webhook", WEBHOOK),
    )
    assert setup.returncode == 0, setup.stderr
    assert TOKEN not in setup.stdout + setup.stderr and "hooks.slack.example" in setup.stdout
    settings = json.loads(_cloudkeep(home, "config", "show", "--json").stdout)["settings"]
    assert settings["on_failure"]["webhook"] == "https://hooks.slack.example/********"
    # The file holds it whole: the masking is only what is shown.
    assert load_config(home / "config").on_failure.webhook == WEBHOOK


def test_status_without_a_data_folder_answers_and_hides_the_store_password(
    tmp_path: Path,
) -> None:
    """A new machine (no Pieces OS folder, none set) asking `status` was exit 70."""
    home = tmp_path / "home"
    _hand_written_config(home)
    for args in (("status", "--offline"), ("status", "--json"), ("status",)):
        done = _cloudkeep(home, *args)
        assert done.returncode == 0, done.stderr
        said = done.stdout + done.stderr
        assert "internal error" not in said
        assert PASSWORD not in said and TOKEN not in said, said
    report = json.loads(_cloudkeep(home, "status", "--json", "--offline").stdout)
    assert report["data"].endswith("production") and report["last_backup"] is None
    limited = _cloudkeep(home, "status", "--offline", "--max-age", "1d")
    assert limited.returncode == 4, limited.stderr


def test_failure_hooks_never_carry_the_store_password(tmp_path: Path) -> None:
    """A store URL that cannot be opened (a password in it is one reason) is what the
    first failure's webhook body and command environment name: without the password."""
    settings = Settings(
        data=tmp_path / "data",
        store=STORE,
        config_dir=tmp_path / "config",
        cache_dir=tmp_path / "cache",
        device_name="laptop",
        config=UserConfig(on_failure=OnFailure(command=("true",), webhook=WEBHOOK)),
    )
    scheduler = scheduler_for(BackupService(settings, jobs_in_subprocess=False), settings, None)
    hooks = scheduler._hooks
    assert hooks is not None
    assert PASSWORD not in hooks.store and PASSWORD not in scheduler.store_shown
    assert hooks.store == "webdav://dav.example/backups"


def test_passphrase_files_saved_at_once_never_replace_each_other(tmp_path: Path) -> None:
    """Two setups or key changes (two stores) saving typed passphrases at the same
    moment: each ends in a file holding its own passphrase; none is overwritten."""
    from concurrent.futures import ThreadPoolExecutor

    from cloudkeep.workspace import save_passphrase

    for round_number in range(10):
        config_dir = tmp_path / f"config-{round_number}"
        passphrases = [f"passphrase {round_number}-{n}" for n in range(6)]
        with ThreadPoolExecutor(len(passphrases)) as pool:
            paths = list(pool.map(save_passphrase, [config_dir] * len(passphrases), passphrases))
        for text, path in zip(passphrases, paths, strict=True):
            assert path.read_text(encoding="utf-8") == text + "\n"
        assert len(set(paths)) == len(passphrases)


def test_a_typed_passphrase_saved_under_a_relative_config_dir_is_found_from_anywhere(
    tmp_path: Path,
) -> None:
    """CLOUDKEEP_CONFIG_DIR=cfg: setup saved passphrase_file = "cfg/passphrase.key",
    which every command run from another folder then could not find."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "notes.txt").write_text("notes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    env.update(HOME=str(home), CLOUDKEEP_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "cloudkeep"]
    done = subprocess.run(
        [*command, "setup", "--yes", "--data", "data", "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env={**env, "CLOUDKEEP_CONFIG_DIR": "cfg", "CLOUDKEEP_PASSPHRASE": "typed at setup"},
        cwd=home,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    saved = load_config(home / "cfg").passphrase_file
    assert saved is not None and Path(saved).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = subprocess.run(
        [*command, "list"],
        capture_output=True,
        text=True,
        env={**env, "CLOUDKEEP_CONFIG_DIR": str(home / "cfg")},
        cwd=elsewhere,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr


def test_passwd_never_strands_a_store_whose_passphrase_this_device_cannot_follow(
    tmp_path: Path,
) -> None:
    """A store given by CLOUDKEEP_STORE (not the configured one) opened with the default
    key file: passwd used to remove the old key, save the new passphrase where nothing
    reads it and say "this device reads the passphrase from ... from now on"; the next
    command failed with a wrong passphrase. It is refused before anything changes."""
    home = tmp_path / "home"
    data = home / "data"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("notes")
    new_file = home / "new-passphrase"
    new_file.write_text("the new passphrase of this store\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDKEEP_")}
    env.update(
        HOME=str(home),
        CLOUDKEEP_CONFIG_DIR=str(home / "config"),
        CLOUDKEEP_CACHE_DIR=str(home / "cache"),
        CLOUDKEEP_DATA=str(data),
        CLOUDKEEP_STORE=(tmp_path / "store").as_uri(),
    )

    def cloudkeep(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloudkeep", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=120,
        )

    assert cloudkeep("backup").returncode == 0
    keys_before = sorted(p.name for p in (tmp_path / "store" / "keys").iterdir())
    refused = cloudkeep("key", "passwd", "--new-passphrase-file", str(new_file))
    assert refused.returncode == 1, refused.stderr
    assert "Nothing was changed" in refused.stderr and "internal error" not in refused.stderr
    assert sorted(p.name for p in (tmp_path / "store" / "keys").iterdir()) == keys_before
    assert not (home / "config" / "config.toml").exists()
    listed = cloudkeep("list")
    assert listed.returncode == 0, listed.stderr
    # Once it is the configured store, passwd goes through and the next command opens it.
    assert cloudkeep("setup", "--yes").returncode == 0
    changed = cloudkeep("key", "passwd", "--new-passphrase-file", str(new_file))
    assert changed.returncode == 0, changed.stderr
    assert cloudkeep("list").returncode == 0


def test_a_failure_hook_that_can_never_run_is_refused_when_the_file_is_read(
    tmp_path: Path,
) -> None:
    """A NUL in a command word, a space or control character in the webhook URL, or a
    port out of range: the hook raised in its thread (a traceback at each failure,
    no warning logged) instead of the configuration being refused in one line."""
    import pytest

    from cloudkeep.errors import ConfigurationError

    config = tmp_path / "config"
    config.mkdir()
    for table in (
        'command = ["notify-send", "backup\\u0000failed"]',
        f'webhook = "https://hooks.example/a b/{TOKEN}"',
        f'webhook = "https://hooks.example/\\u0001/{TOKEN}"',
        f'webhook = "https://hooks.example:99999/{TOKEN}"',
    ):
        (config / "config.toml").write_text(f"[on_failure]\n{table}\n")
        with pytest.raises(ConfigurationError) as refused:
            load_config(config)
        assert "on_failure" in str(refused.value) or "webhook" in str(refused.value)
        assert TOKEN not in str(refused.value)
    home = tmp_path / "home"
    home.mkdir()
    store = tmp_path / "store"
    given = _cloudkeep(
        home,
        *("setup", "--yes", "--data", str(home), "--store", str(store)),
        *("--on-failure-webhook", "https://h/a b"),
    )
    assert given.returncode == 1 and "not an http(s) URL" in given.stderr, given.stderr
    assert not (home / "config" / "config.toml").exists() and not (store / "config").exists()


def test_a_relative_data_folder_or_passphrase_file_in_the_file_is_refused(
    tmp_path: Path,
) -> None:
    """data = "Pieces" named ./Pieces of whatever folder a command ran in: an in-place
    restore from another folder replaced a folder there that happened to bear the name."""
    home = tmp_path / "home"
    config = home / "config"
    config.mkdir(parents=True)
    bystander = home / "Pieces"
    bystander.mkdir()
    (bystander / "mine.txt").write_text("not the backed-up data")
    for line in ('data = "Pieces"', 'passphrase_file = "cfg/passphrase.key"'):
        (config / "config.toml").write_text(line + "\n")
        done = _cloudkeep(home, "restore", "latest")
        assert done.returncode == 1, done.stderr
        assert "must be an absolute path" in done.stderr and len(done.stderr.splitlines()) == 1
    assert (bystander / "mine.txt").read_text() == "not the backed-up data"
    (config / "config.toml").write_text('data = "~/Pieces"\n')
    assert load_config(config).data == "~/Pieces"


def test_a_damaged_status_file_is_read_as_no_status(tmp_path: Path) -> None:
    """from_json promises tolerance: a list as the outcome or a pid beyond a C int made
    `cloudkeep status` (and a starting server) fail with an internal error."""
    from cloudkeep.status import STATUS_VERSION, ScheduleStatus

    now = "2026-11-30T03:00:00+00:00"
    for damaged in (
        {"version": STATUS_VERSION, "last_run_outcome": ["failed"]},
        {"version": STATUS_VERSION, "last_run_outcome": {"a": 1}},
        {"version": STATUS_VERSION, "server_pid": 2**70, "heartbeat": now},
    ):
        status = ScheduleStatus.from_json(damaged)
        assert status.last_run_outcome is None and status.server_pid is None
        assert not status.server_running()
