"""The configuration file: every setting round-trips, every bad value is one clear line."""

from __future__ import annotations

import os
import stat
from datetime import time, timedelta
from pathlib import Path

import pytest

from cloudkeep.config import (
    UNLIMITED,
    OnFailure,
    Retention,
    Schedule,
    UserConfig,
    config_path,
    export_credentials,
    load_config,
    save_config,
)
from cloudkeep.errors import ConfigurationError
from cloudkeep.settings import Settings


def test_a_missing_file_is_an_empty_configuration(tmp_path: Path) -> None:
    assert load_config(tmp_path) == UserConfig()


def test_every_setting_round_trips_through_the_file(tmp_path: Path) -> None:
    config = UserConfig(
        data="/home/u/data",
        store="s3://bucket/laptop?region=eu-west-1",
        passphrase_file="/home/u/.config/cloudkeep/repository.key",
        device_name="laptop",
        schedule=Schedule.parse("at 14:30,02:00", "2m"),
        retention=Retention(last=3, daily=7, within="1y2m"),
        on_failure=OnFailure(("notify-send", "backup failed"), "https://hooks.example/x"),
        credentials={"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t"},
    )
    path = save_config(tmp_path / "new", config)
    assert path == config_path(tmp_path / "new")
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(tmp_path / "new") == config
    shown = config.shown()
    assert shown["credentials"] == {
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "********",
    }
    assert "s3cr3t" not in repr(shown)


@pytest.mark.parametrize(
    ("text", "every", "at"),
    [
        ("hourly", timedelta(hours=1), ()),
        ("daily", timedelta(days=1), ()),
        ("every 30m", timedelta(minutes=30), ()),
        ("Every 2s", timedelta(seconds=2), ()),
        ("at 02:00, 14:30", None, (time(2, 0), time(14, 30))),
    ],
)
def test_schedule_texts(text: str, every: timedelta | None, at: tuple[time, ...]) -> None:
    schedule = Schedule.parse(text)
    assert schedule is not None
    assert (schedule.every, schedule.at) == (every, at)
    assert Schedule.parse(str(schedule), "0s") == Schedule(every, at, timedelta(0))


def test_off_is_no_schedule() -> None:
    assert Schedule.parse("off") is None


@pytest.mark.parametrize(
    ("text", "jitter", "says"),
    [
        ("weekly", None, "is not one of"),
        ("every soon", None, "is not a duration"),
        ("at 25:00", None, "is not HH:MM"),
        ("every 0s", None, "between 1s and 31d"),
        ("every 10m", "1h", "jitter must be between"),
    ],
)
def test_bad_schedules_are_one_line(text: str, jitter: str | None, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Schedule.parse(text, jitter)


def test_retention_rules_and_restic_durations() -> None:
    assert Retention().empty
    assert Retention(within="2y5m7d3h").within_parts == (2, 5, 7, 3)
    assert Retention(within="12h").within_parts == (0, 0, 0, 12)
    assert str(Retention(last=2, within="30d")) == "keep-last 2, keep-within 30d"
    for bad in ({"daily": -2}, {"weekly": True}, {"within": "3w"}, {"within": ""}):
        with pytest.raises(ConfigurationError):
            Retention(**bad)  # type: ignore[arg-type]


def test_unlimited_counts_round_trip(tmp_path: Path) -> None:
    """restic's ``--keep-daily unlimited``: -1 in code, "unlimited" in the file."""
    policy = Retention(daily=UNLIMITED, last=2)
    assert str(policy) == "keep-last 2, keep-daily unlimited"
    save_config(tmp_path, UserConfig(retention=policy))
    assert 'keep_daily = "unlimited"' in config_path(tmp_path).read_text()
    assert load_config(tmp_path).retention == policy
    config_path(tmp_path).write_text('[retention]\nkeep_within = "unlimited"\n')
    with pytest.raises(ConfigurationError, match="keep-within"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("data = 3\n", "data must be a text"),
        ("colour = 'red'\n", "unknown setting 'colour'"),
        ("[retention]\nkeep_fortnightly = 2\n", "unknown retention rule"),
        ("[credentials]\nLD_PRELOAD = '/tmp/x.so'\n", "only store credentials"),
        ("[on_failure]\ncommand = 'rm -rf /'\n", "list of words"),
        ("[on_failure]\nwebhook = 'file:///etc/passwd'\n", "not an http"),
        ("schedule = 'hourly\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_file_and_the_setting(tmp_path: Path, text: str, says: str) -> None:
    config_path(tmp_path).write_text(text)
    with pytest.raises(ConfigurationError, match=says) as raised:
        load_config(tmp_path)
    assert str(config_path(tmp_path)) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_options_and_environment_override_the_file(tmp_path: Path) -> None:
    save_config(tmp_path, UserConfig(data="/from/file", store="memory://file", device_name="f"))
    env = {"CLOUDKEEP_CONFIG_DIR": str(tmp_path)}
    from_file = Settings.resolve(environ=env)
    assert (str(from_file.data), from_file.store, from_file.device_name) == (
        str(Path("/from/file").absolute()),
        "memory://file",
        "f",
    )
    env |= {"CLOUDKEEP_STORE": "memory://env", "CLOUDKEEP_DEVICE_NAME": "e"}
    from_env = Settings.resolve(data="/from/flag", environ=env)
    assert (from_env.data.name, from_env.store, from_env.device_name) == (
        "flag",
        "memory://env",
        "e",
    )


def test_the_environment_wins_over_configured_credentials() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "mine"}
    export_credentials(
        UserConfig(credentials={"AWS_SECRET_ACCESS_KEY": "file", "AWS_ACCESS_KEY_ID": "id"}), env
    )
    assert env == {"AWS_SECRET_ACCESS_KEY": "mine", "AWS_ACCESS_KEY_ID": "id"}


def test_a_policy_text_reads_back_with_unlimited_counts() -> None:
    policy = Retention(daily=7, weekly=-1, within="30d")
    assert Retention.parse(str(policy)) == policy
    with pytest.raises(ConfigurationError, match="keep-daily takes a whole number"):
        Retention.parse("keep-daily lots")
