"""Config: precedence of [match] rules and the command line, and errors that name file, section, key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notify_launcher.config import Command, Settings, load
from notify_launcher.errors import LauncherError
from notify_launcher.events import Event

INI = """
[launcher]
handler = /usr/local/bin/act --flag "two words"
timeout = 30
on_failure = /bin/page --all
metrics_file = /var/lib/node_exporter/textfile/nl.prom
metrics_mode = 0640

[match * * MASTER]
handler = /bin/master
on_failure = /bin/page-master

[match INSTANCE VI_1 *]
timeout = 99

[match INSTANCE VI_1 MASTER]
handler = /bin/vi1-master
on_failure =

[match VS "FWM 7" UP]
handler = /bin/fwm-up

[match * * MASTER_RX_LOWER_PRI]
handler =

[match INSTANCE VI_9 BACKUP]
handler = /bin/demote db
args = none
handler.2 = /bin/notify
user.2 = nobody
group.2 = daemon
timeout = 7

[match RS [192.168.1.11]:tcp:80 UP [10.0.0.1]:tcp:80]
handler = /bin/rs-up
"""


def _load(tmp_path: Path, text: str, **overrides: str) -> Settings:
    ini = tmp_path / "x.ini"
    ini.write_text(text)
    return load(str(ini), dict(overrides))


def _action(settings: Settings, event: Event) -> tuple[tuple[str, ...], float]:
    """The single command's words (or ()) and the timeout for `event`."""
    commands, timeout = settings.action_for(event)
    assert len(commands) <= 1 and all(c == Command(c.argv) for c in commands)
    return (commands[0].argv if commands else ()), timeout


def test_most_specific_rule_wins(tmp_path: Path) -> None:
    s = _load(tmp_path, INI)
    assert _action(s, Event("INSTANCE", "VI_1", "MASTER", 100)) == (("/bin/vi1-master",), 99)
    assert _action(s, Event("INSTANCE", "VI_2", "MASTER", 100)) == (("/bin/master",), 30)
    assert _action(s, Event("INSTANCE", "VI_1", "BACKUP", 100)) == (
        ("/usr/local/bin/act", "--flag", "two words"), 99)
    assert _action(s, Event("GROUP", "G1", "FAULT", 0)) == (("/usr/local/bin/act", "--flag", "two words"), 30)
    assert _action(s, Event("VS", "FWM 7", "UP")) == (("/bin/fwm-up",), 30)
    assert _action(s, Event("INSTANCE", "VI_1", "MASTER_RX_LOWER_PRI", 100)) == ((), 99)


def test_on_failure_from_the_most_specific_rule_that_sets_it(tmp_path: Path) -> None:
    s = _load(tmp_path, INI)
    assert s.on_failure_for(Event("INSTANCE", "VI_2", "MASTER", 100)) == ("/bin/page-master",)
    assert s.on_failure_for(Event("INSTANCE", "VI_1", "MASTER", 100)) == ()  # emptied by the rule
    assert s.on_failure_for(Event("INSTANCE", "VI_1", "BACKUP", 100)) == ("/bin/page", "--all")
    assert s.on_failure_for(Event("READER", "reader", "STOP")) == ("/bin/page", "--all")  # the stop action's
    assert (s.metrics_file, s.metrics_mode) == ("/var/lib/node_exporter/textfile/nl.prom", 0o640)
    assert _load(tmp_path, INI, on_failure="/bin/x").on_failure_for(Event("GROUP", "G", "FAULT", 0)) == ("/bin/x",)


def test_command_line_wins_over_file(tmp_path: Path) -> None:
    s = _load(tmp_path, INI, handler="/bin/other 'a b'", timeout="5")
    assert s.handler == ("/bin/other", "a b") and s.timeout == 5.0


def test_stop_action_only_for_reader_stop(tmp_path: Path) -> None:
    s = _load(tmp_path, "[launcher]\nhandler = /bin/h\nstop_action = /bin/stopped\n")
    assert _action(s, Event("READER", "reader", "STOP")) == (("/bin/stopped",), 120)
    assert _action(s, Event("READER", "reader", "RELOAD")) == ((), 120)


def test_settings_survive_json_round_trip(tmp_path: Path) -> None:
    s = _load(tmp_path, INI)
    assert Settings.from_json(s.to_json()) == s


def test_several_commands_with_their_arguments_and_users(tmp_path: Path) -> None:
    """keepalived's convention per command: `none` appends nothing (notify_master), `keepalived` the
    event's fields (the generic notify); a user's own primary group unless a group is named."""
    s = _load(tmp_path, INI)
    backup = Event("INSTANCE", "VI_9", "BACKUP", 90)
    commands, timeout = s.action_for(backup)
    assert timeout == 7 and commands == (Command(("/bin/demote", "db"), "none"),
                                         Command(("/bin/notify",), "keepalived", "nobody", "daemon"))
    assert [c.for_event(backup) for c in commands] == [["/bin/demote", "db"],
                                                       ["/bin/notify", "INSTANCE", "VI_9", "BACKUP", "90"]]
    assert [c.run_as() for c in commands] == [None, (65534, 1)]
    assert Command(("/bin/x",), user="nobody").run_as() == (65534, 65534)
    inherited = {"SECRET": "keepalived's"}
    assert commands[0].base_environment(inherited) == inherited
    assert commands[1].base_environment(inherited) == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent",
                                                       "USER": "nobody", "LOGNAME": "nobody",
                                                       "SHELL": "/usr/sbin/nologin"}


def test_an_rs_rule_may_name_the_virtual_server(tmp_path: Path) -> None:
    s = _load(tmp_path, INI)
    ours = Event("RS", "[192.168.1.11]:tcp:80", "UP", vs="[10.0.0.1]:tcp:80")
    other = Event("RS", "[192.168.1.11]:tcp:80", "UP", vs="[10.0.0.2]:tcp:80")
    assert _action(s, ours) == (("/bin/rs-up",), 30)
    assert _action(s, other) == (("/usr/local/bin/act", "--flag", "two words"), 30)


@pytest.mark.parametrize("text,message", [
    ("[launcher]\ntimeout = soon\n", "x.ini: [launcher] timeout: 'soon' is not allowed; expected seconds, a number > 0"),
    ("[launcher]\ntimeout = 0\n", "[launcher] timeout: '0' is not allowed"),
    ("[launcher]\nstop_grace = 1.5\n", "stop_grace: '1.5' is not allowed; expected seconds, a number from 0 to 0.9"),
    ("[launcher]\nhandlr = /bin/x\n", "x.ini: [launcher] handlr: unknown key; [launcher] allows: handler,"),
    ("[launcher]\non_crash = retry\n", "on_crash: 'retry' is not allowed; expected one of rerun, skip"),
    ("[launcher]\nlog_file = relative.log\n", "log_file: 'relative.log' must be an absolute path"),
    ("[launcher]\nhandler = /bin/x 'unclosed\n", "handler: cannot split"),
    ("[match INSTANCE VI_1]\nhandler = /bin/x\n", "[match INSTANCE VI_1]: expected [match TYPE NAME STATE]"),
    ("[match * * MASTER]\nlinger = 3\n", "[match * * MASTER] linger: unknown key; a [match] section allows: handler, timeout"),
    ("[launcher]\nmetrics_mode = 0666\n", "metrics_mode: '0666' is not allowed; expected an octal file mode, e.g. "
                                           "0644 (no write bit for group or others)"),
    ("[launcher]\nmetrics_mode = rw\n", "metrics_mode: 'rw' is not allowed"),
    ("[extra]\n", "[extra]: unknown section"),
    ("no section\n", "not a valid INI file"),
    ("[match * * MASTER]\nhandler.3 = /bin/x\nhandler = /bin/y\n", "[match * * MASTER] handler.2: missing; commands "
                                                                    "are numbered handler, handler.2, handler.3"),
    ("[match * * MASTER]\nuser = nobody\n", "[match * * MASTER] handler: missing"),
    ("[match * * MASTER]\nhandler = /bin/x\nargs = some\n", "[match * * MASTER] args: 'some' is not allowed; "
                                                              "expected keepalived (append TYPE NAME STATE PRIORITY"),
    ("[match * * MASTER]\nhandler = /bin/x\nuser = no-such-user-here\n",
     "[match * * MASTER] user: user 'no-such-user-here' does not exist on this host"),
    ("[match * * MASTER]\nhandler = /bin/x\nuser = nobody\ngroup = no-such-group-here\n",
     "[match * * MASTER] group: group 'no-such-group-here' does not exist on this host"),
    ("[match * * MASTER]\nhandler = /bin/x\ngroup = root\n", "[match * * MASTER] group: a group needs a user"),
    ("[match * * MASTER]\nhandler = /bin/x\nuser = nobody\ngroup = root\n",
     "[match * * MASTER] group: group 'root' is gid 0, which the trust rule counts as root: a command run as "
     "'nobody' in it could change root's group-writable files; choose another group"),
    ("[match * * MASTER]\nhandler =\nhandler.2 = /bin/x\n", "[match * * MASTER] handler: empty (run nothing) but"),
    ("[match INSTANCE VI_1 MASTER x]\nhandler = /bin/x\n", "or [match RS NAME STATE VS]"),
    ("[match * * MASTER]\nhandler.1 = /bin/x\n", "handler.1: unknown key"),
    ("[match * * MASTER]\nrepeat = maybe\n", "[match * * MASTER] repeat: 'maybe' is not allowed; expected run or skip"),
])
def test_errors_name_file_section_key_and_what_is_allowed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LauncherError) as exc:
        _load(tmp_path, text)
    assert message in str(exc.value)


def test_bad_command_line_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="command line: --timeout: '-1' is not allowed"):
        load(None, {"timeout": "-1"})


def test_state_dir_too_long_for_the_doorbell_socket_is_a_config_error(tmp_path: Path) -> None:
    """Every worker died binding `<state_dir>/doorbell.sock` while the config loaded fine."""
    fits = "/run/" + "s" * (107 - len("/run/") - len("/doorbell.sock"))  # the socket path: 107 bytes
    assert load(None, {"state_dir": fits}).state_dir == fits
    with pytest.raises(LauncherError) as exc:
        _load(tmp_path, f"[launcher]\nstate_dir = {fits}x\n")
    assert str(exc.value) == (f"{tmp_path / 'x.ini'}: [launcher] state_dir: '{fits}x' is too long: the doorbell "
                              f"socket {fits}x/doorbell.sock would be 108 bytes, and a Unix socket path allows at "
                              f"most 107; choose a shorter state_dir")
    with pytest.raises(LauncherError, match="command line: --state-dir: .* would be 108 bytes"):
        load(None, {"state_dir": fits + "x"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="nope.ini: cannot read config file: No such file or directory"):
        load(str(tmp_path / "nope.ini"), {})


def test_quiet_states_run_nothing_unless_a_rule_names_them(tmp_path: Path) -> None:
    s = _load(tmp_path, "[launcher]\nhandler = /bin/h\n[match INSTANCE VI_1 *]\ntimeout = 7\n"
                        "[match * * BACKUP_PRIORITY]\nhandler = /bin/prio\n")
    assert _action(s, Event("INSTANCE", "VI_1", "MASTER_RX_LOWER_PRI", 100)) == ((), 7)
    assert _action(s, Event("INSTANCE", "VI_1", "MASTER_PRIORITY", 100)) == ((), 7)
    assert _action(s, Event("INSTANCE", "VI_1", "BACKUP_PRIORITY", 100)) == (("/bin/prio",), 7)
    loud = _load(tmp_path, "[launcher]\nhandler = /bin/h\nquiet_states =\ncoalesce = yes\n")
    assert _action(loud, Event("INSTANCE", "VI_1", "MASTER_PRIORITY", 100)) == (("/bin/h",), 120)
    assert loud.coalesce is True


def test_the_readmes_example_loads_as_written(tmp_path: Path) -> None:
    """An administrator copies README's INI example, inline comments and all: an inline comment is
    not part of the value (`timeout = 120   # seconds per action` is 120)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("```ini\n", 1)[1].split("```", 1)[0]
    s = _load(tmp_path, example)
    assert s.timeout == 120 and s.linger == 600 and s.log_level == "INFO" and s.detach == "auto"
    assert s.handler == ("/usr/local/sbin/ha-action", "--verbose")
    assert _action(s, Event("INSTANCE", "VI_1", "MASTER", 100)) == (("/usr/local/sbin/promote-vi1",), 300)
    assert _action(s, Event("VS", "FWM 7", "UP")) == (("/usr/local/sbin/lvs-action",), 120)


def test_a_hash_inside_a_word_is_not_a_comment(tmp_path: Path) -> None:
    s = _load(tmp_path, "[launcher]\nhandler = /bin/act --tag=a#1   # the comment\n")
    assert s.handler == ("/bin/act", "--tag=a#1")


def test_repeat_from_the_most_specific_rule_else_the_launchers(tmp_path: Path) -> None:
    s = _load(tmp_path, "[launcher]\nrepeat = skip\n[match INSTANCE VI_1 *]\nrepeat = run\n")
    assert s.repeat_for(Event("INSTANCE", "VI_1", "BACKUP", 100)) == "run"
    assert s.repeat_for(Event("INSTANCE", "VI_2", "BACKUP", 100)) == "skip"
    assert _load(tmp_path, "").repeat_for(Event("GROUP", "G", "BACKUP", 0)) == "run"


_ANY_KEY = st.sampled_from(["timeout", "kill_grace", "stop_grace", "linger", "output_limit", "metrics_mode",
                            "on_failure_timeout", "log_level", "on_crash", "detach", "coalesce", "repeat",
                            "quiet_states", "user", "group", "args", "handler.2", "handler.²", "handler.99999"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=_ANY_KEY, text=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"),
                                  max_size=40) | st.from_regex(r"\A[0-9]{4290,4310}\Z"),
       where=st.sampled_from(["launcher", "match * * MASTER"]))
def test_any_value_of_any_key_loads_or_is_a_launcher_error(tmp_path: Path, key: str, text: str, where: str) -> None:
    """Whatever an administrator writes as a value (unicode digits such as '²', a number past int()'s
    4,300-digit limit, NUL, stray words), loading gives Settings or a LauncherError naming the key:
    never another exception, which the command line can only call a bug."""
    ini = f"[{where}]\nhandler = /bin/true\n{key} = {text}\n" if not key.startswith("handler") else \
        f"[{where}]\nhandler = /bin/true\n{key} = {text or '/bin/true'}\n"
    try:
        _load(tmp_path, ini)
    except LauncherError:
        pass
