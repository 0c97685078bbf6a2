"""The login service files of every system (made and checked here, on any OS), and the
launchd and Task Scheduler managers driven through a runner that records each call."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

from cloudkeep.platform.service import (
    Completed,
    LaunchdAgent,
    ScheduledTask,
    ServiceError,
    ServiceSpec,
    ServiceUnsupported,
    SystemdUserService,
    UnsupportedService,
    login_service,
    plist_bytes,
    task_bytes,
    task_xml,
    unit_path,
    unit_text,
)
from cloudkeep.platform.service._common import tail_lines
from cloudkeep.platform.service.task_scheduler import NAMESPACE, current_user, windowless

#: A folder name with what each format must escape: spaces, quotes, backslash, ``%``
#: (systemd specifiers), ``$`` (systemd variables), ``&<>`` (XML) and non-ASCII.
ODD = 'my "odd" 100% $HOME & <data> \\ é—ü'
#: The same but for what systemd refuses in a program's path (quotes, backslash).
SYSTEMD_ODD = "my odd 100% $HOME & <data> é—ü"


def spec_in(folder: Path, program: str | None = None, **environment: str) -> ServiceSpec:
    return ServiceSpec(
        argv=(
            program or str(folder / "bin" / "python3"),
            "-m",
            "cloudkeep",
            "serve",
            "--port",
            "39301",
        ),
        environment=environment,
        working_dir=folder,
        log_file=folder / "cache" / "service.log",
    )


class Recorder:
    """A runner that records every command and answers from a table of
    (leading words of the command) -> Completed; anything else succeeds silently."""

    def __init__(self, answers: dict[tuple[str, ...], Completed] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}
        self.files: dict[str, bytes] = {}

    def __call__(self, argv: Sequence[str]) -> Completed:
        self.calls.append(list(argv))
        if "/XML" in argv:  # schtasks reads the file during the call: keep what it read
            path = argv[argv.index("/XML") + 1]
            self.files[path] = Path(path).read_bytes()
        for size in range(len(argv), 0, -1):
            answer = self.answers.get(tuple(argv[:size]))
            if answer is not None:
                return answer
        return Completed(0, "", "")


# -- systemd ----------------------------------------------------------------------


def test_unit_text_quotes_and_escapes_every_word() -> None:
    folder = Path("/home/u") / ODD
    spec = ServiceSpec(
        ("/usr/bin/python3", "-m", "cloudkeep", "serve", "--tls-cert", str(folder / "c.pem")),
        {"CLOUDKEEP_CONFIG_DIR": str(folder / "config"), "PYTHONUNBUFFERED": "1"},
        folder,
        folder / "service.log",
    )
    lines = unit_text(spec).splitlines()
    # In quotes: backslash and quote escaped, % doubled; $ doubled in ExecStart only.
    odd = 'my \\"odd\\" 100%% $HOME & <data> \\\\ é—ü'
    cert = odd.replace("$", "$$")
    assert (
        f'ExecStart="/usr/bin/python3" "-m" "cloudkeep" "serve" "--tls-cert" "/home/u/{cert}/c.pem"'
        in lines
    )
    assert f'Environment="CLOUDKEEP_CONFIG_DIR=/home/u/{odd}/config"' in lines
    assert 'Environment="PYTHONUNBUFFERED=1"' in lines
    assert f"WorkingDirectory=/home/u/{ODD.replace('%', '%%')}" in lines
    for setting in ("Type=exec", "Restart=on-failure", "RestartSec=10", "WantedBy=default.target"):
        assert setting in lines


def test_unit_text_doubles_dollar_in_arguments_only() -> None:
    spec = ServiceSpec(
        ("/opt/a$b/python", "--allow-origin", "http://x/$USER"), {}, Path("/"), Path("/l")
    )
    line = next(line for line in unit_text(spec).splitlines() if line.startswith("ExecStart="))
    assert line == 'ExecStart="/opt/a$b/python" "--allow-origin" "http://x/$$USER"'


def test_unit_text_refuses_a_program_systemd_would_not_run() -> None:
    for program in ('/opt/a"b/python3', "/opt/a'b/python3", "/opt/a\\b/python3"):
        with pytest.raises(ServiceError, match="quote or backslash"):
            unit_text(ServiceSpec((program,), {}, Path("/"), Path("/l")))


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """systemd itself reads the unit, the program's path (spaces, %, $, quotes, non-ASCII)
    included: verify fails when the program it parsed out of ExecStart does not exist."""
    folder = tmp_path / SYSTEMD_ODD
    (folder / "bin").mkdir(parents=True)
    program = folder / "bin" / "python3"
    program.symlink_to(sys.executable)
    spec = spec_in(folder, CLOUDKEEP_CONFIG_DIR=str(folder / "config"))
    unit = tmp_path / "cloudkeep.service"
    unit.write_text(unit_text(spec), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "cloudkeep.service" not in done.stderr  # no warning about the unit

    program.unlink()  # the same check fails once the parsed path points at nothing
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert str(program) in done.stderr


def test_unit_path_follows_xdg_config_home() -> None:
    home = "/home/u"
    assert unit_path({}, home) == Path("/home/u/.config/systemd/user/cloudkeep.service")
    assert unit_path({"XDG_CONFIG_HOME": "/cfg"}, home) == Path(
        "/cfg/systemd/user/cloudkeep.service"
    )
    # A relative value is ignored, as the XDG specification says.
    assert unit_path({"XDG_CONFIG_HOME": "cfg"}, home) == Path(
        "/home/u/.config/systemd/user/cloudkeep.service"
    )


@pytest.mark.parametrize(
    ("argv", "environment", "working_dir"),
    [
        (("python3", "-m", "cloudkeep"), {}, "/home/u"),  # not an absolute program
        (("/bin/python3", "a\nb"), {}, "/home/u"),
        (("/bin/python3",), {"A": "x\ry"}, "/home/u"),
        (("/bin/python3",), {"A=B": "x"}, "/home/u"),
        (("/bin/python3",), {}, "relative"),
    ],
)
def test_specs_no_file_can_carry_are_refused(
    argv: tuple[str, ...], environment: dict[str, str], working_dir: str
) -> None:
    bad = ServiceSpec(argv, environment, Path(working_dir), Path("/home/u/service.log"))
    for render in (unit_text, plist_bytes, lambda spec: task_xml(spec, "PC\\u")):
        with pytest.raises(ServiceError):
            render(bad)


def test_systemd_status_reads_states_and_the_journal(tmp_path: Path) -> None:
    runner = Recorder(
        {
            ("systemctl", "--user", "is-active"): Completed(3, "failed\n", ""),
            ("systemctl", "--user", "is-enabled"): Completed(0, "enabled\n", ""),
            ("journalctl",): Completed(0, "2026-01-01T00:00:00+0000 h cloudkeep[1]: boom\n", ""),
        }
    )
    service = SystemdUserService(tmp_path / "cloudkeep.service", runner)
    state = service.status(tmp_path / "unused.log", 5)
    assert (state.installed, state.running, state.state) == (False, False, "failed, enabled")
    assert state.log_lines == ("2026-01-01T00:00:00+0000 h cloudkeep[1]: boom",)
    assert runner.calls[-1][:6] == [
        "journalctl",
        "--user",
        "--unit",
        "cloudkeep.service",
        "--lines",
        "5",
    ]


# -- launchd ----------------------------------------------------------------------


def test_plist_round_trips_field_by_field() -> None:
    folder = Path("/Users/u") / ODD
    spec = spec_in(folder, CLOUDKEEP_CONFIG_DIR=str(folder / "config"), PYTHONUNBUFFERED="1")
    data = plist_bytes(spec)
    assert data.startswith(b"<?xml")
    agent = plistlib.loads(data)
    assert agent == {
        "Label": "org.cloudkeep.serve",
        "ProgramArguments": list(spec.argv),
        "WorkingDirectory": str(folder),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "StandardOutPath": str(folder / "cache" / "service.log"),
        "StandardErrorPath": str(folder / "cache" / "service.log"),
        "EnvironmentVariables": {
            "CLOUDKEEP_CONFIG_DIR": str(folder / "config"),
            "PYTHONUNBUFFERED": "1",
        },
    }
    assert b"&amp; &lt;data&gt;" in data  # escaped by plistlib, not by hand
    assert "EnvironmentVariables" not in plistlib.loads(plist_bytes(spec_in(folder)))


PRINT_RUNNING = """gui/501/org.cloudkeep.serve = {
\tactive count = 1
\tpath = /Users/u/Library/LaunchAgents/org.cloudkeep.serve.plist
\tstate = running

\tprogram = /usr/bin/python3
\tenvironment = {
\t\tstate = nested
\t}
\tpid = 4242
\tlast exit code = (never exited)
}
"""


def test_launchd_install_loads_reloads_or_kicks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = home / "Library" / "LaunchAgents" / "org.cloudkeep.serve.plist"
    target = "gui/501/org.cloudkeep.serve"
    not_loaded = Completed(113, "", "Could not find service")
    runner = Recorder({("launchctl", "print"): not_loaded})
    agent = LaunchdAgent(path, 501, runner)
    spec = spec_in(tmp_path / ODD)

    outcome = agent.install(spec)
    assert (outcome.changed, outcome.pending) == (True, None)
    assert runner.calls == [
        ["launchctl", "print", target],
        ["launchctl", "enable", target],
        ["launchctl", "bootstrap", "gui/501", str(path)],
    ]
    assert plistlib.loads(path.read_bytes())["ProgramArguments"] == list(spec.argv)
    assert spec.log_file.parent.is_dir()  # launchd makes no folder for its log

    runner.calls.clear()
    runner.answers = {("launchctl", "print"): Completed(0, PRINT_RUNNING, "")}
    assert agent.install(spec).changed is False
    assert runner.calls == [["launchctl", "print", target], ["launchctl", "kickstart", target]]

    runner.calls.clear()
    other = spec_in(tmp_path / ODD, CLOUDKEEP_CACHE_DIR="/c")
    assert agent.install(other).changed is True
    assert runner.calls == [
        ["launchctl", "print", target],
        ["launchctl", "bootout", target],
        ["launchctl", "enable", target],
        ["launchctl", "bootstrap", "gui/501", str(path)],
    ]

    spec.log_file.write_text("one\ntwo\nthree\n")
    state = agent.status(tmp_path / "elsewhere.log", 2)
    assert (state.installed, state.running) == (True, True)
    assert state.state == "running, pid 4242, last exit code (never exited)"
    assert (state.log_source, state.log_lines) == (str(spec.log_file), ("two", "three"))

    runner.calls.clear()
    assert agent.uninstall().changed is True
    assert runner.calls == [["launchctl", "print", target], ["launchctl", "bootout", target]]
    assert not path.exists()
    runner.answers = {("launchctl", "print"): not_loaded}
    assert agent.uninstall().changed is False


def test_launchd_outside_a_gui_session_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cloudkeep.platform.service.launchd.BOOTSTRAP_PAUSE", 0)
    runner = Recorder(
        {
            ("launchctl", "print"): Completed(113, "", ""),
            ("launchctl", "bootstrap"): Completed(
                125, "", "Bootstrap failed: 125: Domain does not support specified action"
            ),
        }
    )
    path = tmp_path / "org.cloudkeep.serve.plist"
    outcome = LaunchdAgent(path, 501, runner).install(spec_in(tmp_path))
    assert outcome.pending is not None and "Domain does not support" in outcome.pending
    assert f"launchctl bootstrap gui/501 '{path}'" in outcome.pending
    assert path.exists()


# -- Task Scheduler ---------------------------------------------------------------


def q(tag: str) -> str:
    return f"{{{NAMESPACE}}}{tag}"


def test_task_xml_is_utf16_and_has_what_the_schema_requires() -> None:
    folder = "C:\\Users\\Zoë's 100% & more — 日本"
    argv = (
        folder + "\\Scripts\\pythonw.exe",
        "-m",
        "cloudkeep",
        "service",
        "run",
        "--log-file",
        folder + "\\service.log",
        "--",
        "serve",
    )
    spec = ServiceSpec(argv, {}, Path(folder), Path(folder + "\\service.log"))
    data = task_bytes(task_xml(spec, "PC\\Zoë"))
    assert data[:2] in (b"\xff\xfe", b"\xfe\xff")  # a byte order mark, as schtasks needs
    assert data.decode("utf-16").startswith('<?xml version="1.0" encoding="UTF-16"?>')
    task = ET.fromstring(data)
    assert task.tag == q("Task") and task.get("version") == "1.2"
    assert {child.tag for child in task} == {
        q("RegistrationInfo"),
        q("Triggers"),
        q("Principals"),
        q("Settings"),
        q("Actions"),
    }
    logon = task.find(f"{q('Triggers')}/{q('LogonTrigger')}")
    assert logon is not None
    # logonTriggerType is a sequence: the base type's Enabled, Repetition, then UserId.
    assert [child.tag for child in logon] == [q("Enabled"), q("Repetition"), q("UserId")]
    assert logon.findtext(q("UserId")) == "PC\\Zoë"
    assert logon.findtext(f"{q('Repetition')}/{q('Interval')}") == "PT5M"
    principal = task.find(f"{q('Principals')}/{q('Principal')}")
    assert principal is not None
    assert principal.findtext(q("UserId")) == "PC\\Zoë"
    assert principal.findtext(q("LogonType")) == "InteractiveToken"  # no password stored
    assert principal.findtext(q("RunLevel")) == "LeastPrivilege"
    actions = task.find(q("Actions"))
    assert actions is not None and actions.get("Context") == principal.get("id")
    settings = task.find(q("Settings"))
    assert settings is not None
    assert settings.findtext(q("ExecutionTimeLimit")) == "PT0S"
    assert settings.findtext(q("MultipleInstancesPolicy")) == "IgnoreNew"
    assert settings.findtext(f"{q('RestartOnFailure')}/{q('Interval')}") == "PT1M"
    assert settings.findtext(f"{q('RestartOnFailure')}/{q('Count')}") == "999"
    run = actions.find(q("Exec"))
    assert run is not None
    assert [child.tag for child in run] == [q("Command"), q("Arguments"), q("WorkingDirectory")]
    assert run.findtext(q("Command")) == argv[0]
    assert run.findtext(q("Arguments")) == subprocess.list2cmdline(argv[1:])
    assert run.findtext(q("Arguments")) == (
        f'-m cloudkeep service run --log-file "{folder}\\service.log" -- serve'
    )
    assert "Zoë's 100% &amp; more" in data.decode("utf-16")  # escaped by ElementTree
    assert run.findtext(q("WorkingDirectory")) == folder


def test_task_xml_refuses_environment() -> None:
    spec = ServiceSpec(("C:\\p.exe",), {"A": "b"}, Path("C:\\"), Path("C:\\l"))
    with pytest.raises(ServiceError, match="environment"):
        task_xml(spec, "PC\\u")


def test_windowless_python_and_the_user(tmp_path: Path) -> None:
    python = tmp_path / "python.exe"
    assert windowless(str(python)) == str(python)  # no pythonw.exe beside it
    (tmp_path / "pythonw.exe").write_bytes(b"")
    assert windowless(str(python)) == str(tmp_path / "pythonw.exe")
    assert windowless("/usr/bin/python3") == "/usr/bin/python3"
    assert current_user({"USERNAME": "zoë", "USERDOMAIN": "PC"}) == "PC\\zoë"
    with pytest.raises(ServiceError):
        current_user({})


def test_scheduled_task_create_run_query_delete(tmp_path: Path) -> None:
    runner = Recorder(
        {("schtasks", "/Query", "/TN", "cloudkeep"): Completed(1, "", "ERROR: not found")}
    )
    task = ScheduledTask("PC\\u", runner)
    spec = ServiceSpec(
        ("C:\\py\\pythonw.exe", "-m", "cloudkeep"),
        {},
        Path("C:\\Users\\u"),
        tmp_path / "service.log",
    )
    assert (task.install(spec).changed, task.install(spec).pending) == (True, None)
    create = runner.calls[1]
    assert create[:5] == ["schtasks", "/Create", "/TN", "cloudkeep", "/XML"] and create[6:] == [
        "/F"
    ]
    assert runner.files[create[5]] == task_bytes(task_xml(spec, "PC\\u"))
    assert not Path(create[5]).exists()  # the definition file is removed after
    assert runner.calls[2] == ["schtasks", "/Run", "/TN", "cloudkeep"]

    runner.calls.clear()
    runner.answers = {
        ("schtasks", "/Query", "/TN", "cloudkeep", "/FO"): Completed(
            0, '"\\cloudkeep","N/A","Running"\n', ""
        )
    }
    (tmp_path / "service.log").write_text("listening\n")
    state = task.status(tmp_path / "service.log", 10)
    assert (state.installed, state.running, state.state, state.log_lines) == (
        True,
        True,
        "Running",
        ("listening",),
    )
    assert runner.calls == [["schtasks", "/Query", "/TN", "cloudkeep", "/FO", "CSV", "/NH"]]

    runner.calls.clear()
    runner.answers = {}
    assert task.uninstall().changed is True
    assert runner.calls == [
        ["schtasks", "/Query", "/TN", "cloudkeep"],
        ["schtasks", "/End", "/TN", "cloudkeep"],
        ["schtasks", "/Delete", "/TN", "cloudkeep", "/F"],
    ]
    runner.answers = {("schtasks", "/Query"): Completed(1, "", "ERROR: not found")}
    assert task.uninstall().changed is False
    assert task.status(tmp_path / "service.log", 0).installed is False


def test_scheduled_task_create_refused(tmp_path: Path) -> None:
    runner = Recorder({("schtasks", "/Create"): Completed(1, "", "ERROR: Access is denied.")})
    spec = ServiceSpec(("C:\\p.exe",), {}, Path("C:\\"), tmp_path / "l")
    with pytest.raises(ServiceError, match="Access is denied"):
        ScheduledTask("PC\\u", runner).install(spec)


# -- elsewhere --------------------------------------------------------------------


def test_unsupported_system_says_so(tmp_path: Path) -> None:
    service = UnsupportedService("freebsd14")
    spec = spec_in(tmp_path)
    for call in (
        lambda: service.render(spec),
        lambda: service.install(spec),
        service.uninstall,
        lambda: service.status(tmp_path / "l", 1),
    ):
        with pytest.raises(ServiceUnsupported, match=r"freebsd14.*cloudkeep serve"):
            call()


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux choice")
def test_login_service_on_linux_is_the_user_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CLOUDKEEP_PORTABLE", "1")  # I/O fallbacks do not change the manager
    service = login_service()
    assert isinstance(service, SystemdUserService)
    assert service.path == tmp_path / "xdg" / "systemd" / "user" / "cloudkeep.service"


def test_tail_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    assert tail_lines(log, 3) == ()
    log.write_bytes(b"".join(b"line %d\n" % n for n in range(20000)) + b"bad \xff\n")
    assert tail_lines(log, 2) == ("line 19999", "bad \ufffd")
    assert tail_lines(log, 0) == ()
