"""INI file + command-line overrides -> one frozen Settings object.

    [launcher]                     # every key optional; the command line wins over the file
    handler = /usr/local/bin/ka-action --verbose
    timeout = 120
    [match INSTANCE VI_1 MASTER]   # TYPE NAME STATE, `*` for any; per key, the most specific match wins
    handler = /usr/local/bin/promote-vi1
    [match * * MASTER_RX_LOWER_PRI]
    handler =                      # empty: log the event, run nothing
    [match INSTANCE VI_1 BACKUP]   # several commands, one after the other, as keepalived's directives
    handler = /usr/local/bin/demote db
    args = none                    # append nothing (keepalived: the event's fields, the default)
    handler.2 = /usr/local/bin/ka-notify
    user.2 = nobody                # setgid/setuid, only that group, cwd /, a clean environment

Errors name the file, section and key, and say what is allowed: an administrator reads them at
3 a.m. from keepalived's log or the launcher's.
"""

from __future__ import annotations

import math
import os
import shlex

from notify_launcher.errors import EXIT_USAGE, LauncherError
from notify_launcher.events import READER_TYPE, VRRP_NOTICES, Event
from notify_launcher.security import ROOT, refusal
from notify_launcher.statedir import StatePaths
from notify_launcher.value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the reader's start ~3 ms to import: for mypy only
    from typing import Any, Final, Literal

    CrashPolicy = Literal["rerun", "skip"]
    DetachMode = Literal["auto", "daemon", "systemd"]
    LogLevel = Literal["DEBUG", "INFO", "WARN", "ERROR"]
    RepeatPolicy = Literal["run", "skip"]
    ArgsMode = Literal["keepalived", "none"]

DEFAULT_STATE_DIR = "/run/notify-launcher"
DEFAULT_LOG_FILE = "/var/log/notify-launcher.log"
#: Each Literal's values, in its order (mypy checks every one is the Literal's).
REPEAT_POLICIES: Final[tuple[RepeatPolicy, ...]] = ("run", "skip")
ARGS_MODES: Final[tuple[ArgsMode, ...]] = ("keepalived", "none")
CRASH_POLICIES: Final[tuple[CrashPolicy, ...]] = ("rerun", "skip")
DETACH_MODES: Final[tuple[DetachMode, ...]] = ("auto", "daemon", "systemd")
LOG_LEVELS: Final[tuple[LogLevel, ...]] = ("DEBUG", "INFO", "WARN", "ERROR")
_BOOLS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


#: A clean environment's PATH for a command run as another user (Debian's default for users).
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


class Command(Value):
    """One command an event runs.  `args`: `keepalived` appends the event's fields as keepalived's
    generic `notify` gets them (TYPE NAME STATE PRIORITY, and the VS for an RS), `none` appends
    nothing, as keepalived's `notify_master` & co.  `user` (and `group`, else the user's primary
    group): run as that user, as keepalived runs a directive's user (docs/keepalived.md "Notify
    directives"); None: as the launcher itself."""

    __slots__ = ("argv", "args", "user", "group")

    def __init__(self, argv: tuple[str, ...], args: ArgsMode = "keepalived", user: str | None = None,
                 group: str | None = None) -> None:
        self.argv, self.args, self.user, self.group = argv, args, user, group

    def for_event(self, event: Event) -> list[str]:
        return [*self.argv, *(event.fields() if self.args == "keepalived" else [])]

    def run_as(self) -> tuple[int, int] | None:
        """(uid, gid), or None for the launcher's own; KeyError (its message says what) when the
        user or group does not exist."""
        if self.user is None:
            return None
        import grp  # not at the reader's import: most configurations name no user
        import pwd

        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise KeyError(f"user {self.user!r} does not exist") from None
        if self.group is None:
            return entry.pw_uid, entry.pw_gid
        try:
            return entry.pw_uid, grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise KeyError(f"group {self.group!r} does not exist") from None

    def root_group(self, ids: tuple[int, int] | None) -> str | None:
        """Why a command run as a non-root user must not run with gid `ids[1]`, or None: the trust
        rule counts group root as root (security.py), so such a command could rewrite the
        group-root-writable commands root runs."""
        if ids is None or ids[0] == ROOT or ids[1] != ROOT:
            return None
        given = f"group {self.group!r}" if self.group is not None else f"user {self.user!r}'s primary group"
        return (f"{given} is gid 0, which the trust rule counts as root: a command run as {self.user!r} "
                f"in it could change root's group-writable files; choose another group")

    def base_environment(self, inherited: dict[str, str]) -> dict[str, str]:
        """What the command's environment starts from (the event's NL_* variables are added to it):
        the launcher's own for its own commands; a clean one for a command run as another user."""
        if self.user is None:
            return inherited
        import pwd

        entry = pwd.getpwnam(self.user)
        return {"PATH": USER_PATH, "HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name,
                "SHELL": entry.pw_shell}


class Rule(Value):
    """`[match TYPE NAME STATE [VS]]`: which events it covers, and what to run for them.  VS (only
    for RS events): the real server's virtual server, as an RS line carries it."""

    __slots__ = ("type", "name", "state", "commands", "timeout", "on_failure", "vs", "repeat")

    def __init__(self, type: str, name: str, state: str, commands: tuple[Command, ...] | None = None,
                 timeout: float | None = None, on_failure: tuple[str, ...] | None = None, vs: str = "*",
                 repeat: RepeatPolicy | None = None) -> None:
        self.type, self.name, self.state, self.commands = type, name, state, commands
        self.timeout, self.on_failure, self.vs, self.repeat = timeout, on_failure, vs, repeat

    def specificity(self, event: Event) -> int:
        """-1 if the rule does not cover `event`; else higher = more specific (vs > name > state > type)."""
        score = 0
        for pattern, value, weight in ((self.type, event.type, 1), (self.name, event.name, 4),
                                       (self.state, event.state, 2), (self.vs, event.vs, 8)):
            if pattern != "*":
                if pattern != value:
                    return -1
                score += weight
        return score


class Settings(Value):
    """Everything a reader and its workers need; never changed once made, so a worker sees what its
    reader saw."""

    __slots__ = ("handler", "rules", "stop_action", "state_dir", "log_file", "log_level", "timeout", "kill_grace",
                 "stop_grace", "linger", "on_crash", "detach", "coalesce", "repeat", "quiet_states", "on_failure",
                 "on_failure_timeout", "metrics_file", "metrics_mode", "output_limit", "config_file")

    def __init__(self, handler: tuple[str, ...] = (), rules: tuple[Rule, ...] = (), stop_action: tuple[str, ...] = (),
                 state_dir: str = DEFAULT_STATE_DIR, log_file: str = DEFAULT_LOG_FILE, log_level: LogLevel = "INFO",
                 timeout: float = 120.0, kill_grace: float = 5.0, stop_grace: float = 0.5, linger: float = 600.0,
                 on_crash: CrashPolicy = "rerun", detach: DetachMode = "auto", coalesce: bool = False,
                 repeat: RepeatPolicy = "run", quiet_states: tuple[str, ...] = VRRP_NOTICES,
                 on_failure: tuple[str, ...] = (), on_failure_timeout: float = 30.0, metrics_file: str | None = None,
                 metrics_mode: int = 0o644, output_limit: int = 1 << 20, config_file: str | None = None) -> None:
        self.handler, self.rules, self.stop_action = handler, rules, stop_action
        self.state_dir, self.log_file, self.log_level = state_dir, log_file, log_level
        self.timeout, self.kill_grace, self.stop_grace, self.linger = timeout, kill_grace, stop_grace, linger
        self.on_crash, self.detach, self.coalesce, self.repeat = on_crash, detach, coalesce, repeat
        self.quiet_states = quiet_states  # run nothing unless a [match] rule names them
        self.on_failure, self.on_failure_timeout = on_failure, on_failure_timeout
        self.metrics_file, self.metrics_mode = metrics_file, metrics_mode
        self.output_limit = output_limit  # bytes of one command's output logged; the rest is counted, not logged
        self.config_file = config_file

    def _matching(self, event: Event) -> list[Rule]:
        """The rules covering `event`, least specific first (ties: the earlier section first), so a
        later one overrides; for a quiet state, only rules that name it (or run nothing) count."""
        matching = sorted((r.specificity(event), n, r) for n, r in enumerate(self.rules)
                          if r.specificity(event) >= 0)
        if event.state in self.quiet_states:
            matching = [m for m in matching if m[2].state == event.state or m[2].commands is None]
        return [rule for _, _, rule in matching]

    def action_for(self, event: Event) -> tuple[tuple[Command, ...], float]:
        """The commands (run one after the other) and timeout (each's) for `event`: each from the most
        specific matching rule that sets it (ties: the later section), else the [launcher] default."""
        if event.type == READER_TYPE:
            return ((Command(self.stop_action),) if event.state == "STOP" and self.stop_action else ()), self.timeout
        commands: tuple[Command, ...] = () if event.state in self.quiet_states or not self.handler \
            else (Command(self.handler),)
        timeout = self.timeout
        for rule in self._matching(event):
            commands = commands if rule.commands is None else rule.commands
            timeout = timeout if rule.timeout is None else rule.timeout
        return commands, timeout

    def on_failure_for(self, event: Event) -> tuple[str, ...]:
        """The command run after `event`'s action failed, timed out or was skipped: the most specific
        matching rule's `on_failure`, else the [launcher] one (the stop action's too)."""
        command = self.on_failure
        for rule in self._matching(event) if event.type != READER_TYPE else []:
            command = command if rule.on_failure is None else rule.on_failure
        return command

    def repeat_for(self, event: Event) -> RepeatPolicy:
        """`skip`: an event whose state is the one its TYPE NAME's last completed action ran for is
        logged, not run (a reload re-sends BACKUP: keepalived issue 1311).  The most specific
        matching rule's `repeat`, else the [launcher] one."""
        policy = self.repeat
        for rule in self._matching(event) if event.type != READER_TYPE else []:
            policy = policy if rule.repeat is None else rule.repeat
        return policy

    def to_json(self) -> str:
        import json  # only when settings are written or read (json costs ~2 ms to import)

        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        import json

        data: dict[str, Any] = json.loads(text)
        data["rules"] = tuple(Rule(**{**r, "on_failure": None if r["on_failure"] is None else tuple(r["on_failure"]),
                                      "commands": None if r["commands"] is None else tuple(
                                          Command(**{**c, "argv": tuple(c["argv"])}) for c in r["commands"])})
                              for r in data["rules"])
        for key in ("handler", "stop_action", "quiet_states", "on_failure"):
            data[key] = tuple(data[key])
        for key, allowed in (("on_crash", CRASH_POLICIES), ("detach", DETACH_MODES), ("log_level", LOG_LEVELS),
                             ("repeat", REPEAT_POLICIES)):
            if data[key] not in allowed:  # the Literal types hold only if the file does
                raise ValueError(f"{key}: {data[key]!r} is not one of {', '.join(allowed)}")
        return cls(**data)


_KEYS = {
    "handler": "a command line (split like a shell does, run without one)",
    "stop_action": "a command line run when keepalived stops the reader",
    "state_dir": "a directory path",
    "log_file": "a file path",
    "log_level": "one of " + ", ".join(LOG_LEVELS),
    "timeout": "seconds, a number > 0",
    "kill_grace": "seconds, a number >= 0",
    "stop_grace": "seconds, a number from 0 to 0.9 (keepalived kills the reader at 1 s)",
    "linger": "seconds, a number >= 0",
    "on_crash": "one of " + ", ".join(CRASH_POLICIES),
    "detach": "one of " + ", ".join(DETACH_MODES),
    "coalesce": "yes or no",
    "repeat": "run or skip (skip: an event in the state its instance's last completed action ran for is logged, "
              "not run)",
    "quiet_states": "state names separated by spaces (may be empty)",
    "on_failure": "a command line run after an action failed, timed out or was skipped",
    "on_failure_timeout": "seconds, a number > 0",
    "metrics_file": "a file path (Prometheus text format, for node_exporter's textfile collector)",
    "metrics_mode": "an octal file mode, e.g. 0644 (no write bit for group or others)",
    "output_limit": "bytes of one command's output written to the log, a whole number >= 0 (the rest is "
                    "counted in one line, not logged)",
}
_RULE_KEYS = ("handler", "timeout", "on_failure", "repeat")
#: Keys of one command in a [match] section: `handler` is the first command, `handler.2` the second, ...
_COMMAND_KEYS = {"handler": "a command line (split like a shell does, run without one)",
                 "args": "keepalived (append TYPE NAME STATE PRIORITY [VS]) or none",
                 "user": "a user name that exists", "group": "a group name that exists"}


def _where(path: str, section: str, key: str) -> str:
    return f"{path}: [{section}] {key}"


#: Where a command given without a slash is looked up when the configuration is loaded: keepalived's
#: PATH under systemd, where keepalived looks up a directive's command (notify.c find_path).  Fixed,
#: not the PATH of whoever runs check-config: the worker runs commands from / with no PATH search.
COMMAND_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_executable(text: str, where: str) -> tuple[str, ...]:
    """A command's words, the first looked up in COMMAND_PATH if it has no slash, so check-config,
    the trust rule and the worker all see the one file the worker executes."""
    argv = parse_command(text, where)
    if not argv or "/" in argv[0]:
        return argv
    import shutil  # not at the reader's import: most configurations give absolute paths

    found = shutil.which(argv[0], path=COMMAND_PATH)
    if found is None:
        raise LauncherError(f"{where}: {argv[0]!r} is not an executable in {COMMAND_PATH} (a command without a "
                            f"slash is looked up there, as keepalived does); give its absolute path", EXIT_USAGE)
    return (found, *argv[1:])


def parse_command(text: str, where: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise LauncherError(f"{where}: cannot split {text!r} into words: {exc}", EXIT_USAGE) from None


def _digits(text: str, most: int) -> bool:
    """A decimal number of at most `most` digits, which int() takes: str.isdigit() alone also passes
    '²' and other digits int() refuses, and int() refuses more than 4,300 digits."""
    return text.isascii() and text.isdigit() and len(text) <= most


_SECONDS = {"timeout": (0.0, math.inf, True), "on_failure_timeout": (0.0, math.inf, True),
            "kill_grace": (0.0, math.inf, False),
            "linger": (0.0, math.inf, False), "stop_grace": (0.0, 0.9, False)}


def _convert(key: str, text: str, where: str) -> object:
    """One value from text, checked; the error says what was given and what is allowed."""
    bad = LauncherError(f"{where}: {text!r} is not allowed; expected {_KEYS.get(key, key)}", EXIT_USAGE)
    if key in ("handler", "stop_action", "on_failure"):
        return parse_executable(text, where)
    if key == "metrics_mode":
        try:
            mode = int(text, 8)
        except ValueError:
            raise bad from None
        if not 0 <= mode <= 0o755 or mode & 0o022 or not mode & 0o400:
            raise bad  # root writes it: nobody else may; and it must stay readable for the collector
        return mode
    if key == "output_limit":
        if not _digits(text, 18):
            raise bad
        return int(text)
    if key in _SECONDS:
        low, high, strict = _SECONDS[key]
        try:
            value = float(text)
        except ValueError:
            raise bad from None
        if math.isnan(value) or value < low or (strict and value == low) or value > high:
            raise bad
        return value
    if key == "log_level":
        if text.upper() not in LOG_LEVELS:
            raise bad
        return text.upper()
    if key == "coalesce":
        if text.lower() not in _BOOLS:
            raise bad
        return _BOOLS[text.lower()]
    if key == "quiet_states":
        return tuple(text.split())
    if key in ("on_crash", "detach", "repeat"):
        if text not in {"on_crash": CRASH_POLICIES, "detach": DETACH_MODES, "repeat": REPEAT_POLICIES}[key]:
            raise bad
        return text
    if not text.startswith("/"):
        raise LauncherError(f"{where}: {text!r} must be an absolute path", EXIT_USAGE)
    if key == "state_dir":
        _check_socket_path(text, where)
    return text


#: A Unix socket path (sun_path) holds 108 bytes, the terminating NUL included.
SOCKET_PATH_MAX = 107


def _check_socket_path(state_dir: str, where: str) -> None:
    """The worker's doorbell socket lives in the state directory: a path too long to bind would
    kill every worker at start while events pile up, so it is a configuration error, found at load
    (and by check-config) instead of at the first event."""
    sock = StatePaths(state_dir).doorbell
    size = len(os.fsencode(sock))
    if size > SOCKET_PATH_MAX:
        raise LauncherError(f"{where}: {state_dir!r} is too long: the doorbell socket {sock} would be {size} bytes, "
                            f"and a Unix socket path allows at most {SOCKET_PATH_MAX}; choose a shorter state_dir",
                            EXIT_USAGE)


def _rule(path: str, section: str, items: dict[str, str]) -> Rule:
    words = parse_command(section[len("match"):], f"{path}: [{section}]")
    if len(words) not in (3, 4) or (len(words) == 4 and words[0] != "RS"):
        raise LauncherError(f"{path}: [{section}]: expected [match TYPE NAME STATE] (use * for any), "
                            f"e.g. [match INSTANCE VI_1 MASTER], or [match RS NAME STATE VS]", EXIT_USAGE)
    values: dict[str, Any] = {}
    numbered: dict[int, dict[str, str]] = {}
    for key, text in items.items():
        where = _where(path, section, key)
        base, dot, number = key.partition(".")
        if base in _COMMAND_KEYS and (not dot or (_digits(number, 4) and int(number) >= 2)):
            numbered.setdefault(int(number) if dot else 1, {})[base] = text
        elif key in _RULE_KEYS:
            values[key] = _convert(key, text, where)
        else:
            raise LauncherError(f"{where}: unknown key; a [match] section allows: {', '.join(_RULE_KEYS)}, "
                                f"and per command args, user, group (handler.2, args.2, ... for a second command)",
                                EXIT_USAGE)
    if numbered:
        values["commands"] = _commands(path, section, numbered)
    if len(words) == 4:
        values["vs"] = words[3]
    return Rule(words[0], words[1], words[2], **values)


def _commands(path: str, section: str, numbered: dict[int, dict[str, str]]) -> tuple[Command, ...]:
    """handler, args, user, group and their .2, .3, ... twins -> the commands, in number order; an
    empty `handler` (and nothing else) runs nothing."""
    found: list[Command] = []
    for number in sorted(numbered):
        keys = numbered[number]
        suffix = "" if number == 1 else f".{number}"
        where = _where(path, section, f"handler{suffix}")
        if number != len(found) + 1 or "handler" not in keys:
            expected = len(found) + 1 if number != len(found) + 1 else number
            raise LauncherError(f"{_where(path, section, 'handler' + ('' if expected == 1 else f'.{expected}'))}: "
                                f"missing; commands are numbered handler, handler.2, handler.3, ... "
                                f"without a gap, and args, user and group belong to one of them", EXIT_USAGE)
        argv = parse_executable(keys["handler"], where)
        if not argv:
            if len(numbered) > 1 or len(keys) > 1:
                raise LauncherError(f"{where}: empty (run nothing) but other commands or keys are set beside it",
                                    EXIT_USAGE)
            return ()
        if keys.get("args", "keepalived") not in ARGS_MODES:
            raise LauncherError(f"{_where(path, section, 'args' + suffix)}: {keys['args']!r} is not allowed; expected "
                                f"{_COMMAND_KEYS['args']}", EXIT_USAGE)
        args: ArgsMode = "none" if keys.get("args") == "none" else "keepalived"
        if "group" in keys and "user" not in keys:
            raise LauncherError(f"{_where(path, section, 'group' + suffix)}: a group needs a user{suffix} beside it",
                                EXIT_USAGE)
        command = Command(argv, args, keys.get("user"), keys.get("group"))
        try:
            ids = command.run_as()
        except KeyError as exc:
            key = "group" if "group" in str(exc) else "user"
            raise LauncherError(f"{_where(path, section, key + suffix)}: {exc.args[0]} on this host",
                                EXIT_USAGE) from None
        root_group = command.root_group(ids)
        if root_group:
            key = "group" if command.group is not None else "user"
            raise LauncherError(f"{_where(path, section, key + suffix)}: {root_group}", EXIT_USAGE)
        found.append(command)
    return tuple(found)


def load(path: str | None, overrides: dict[str, str | None]) -> Settings:
    """Read the INI file at `path` (if any), then apply command-line `overrides` (None = not given)."""
    values: dict[str, Any] = {}
    rules: list[Rule] = []
    if path is not None:
        refused = refusal("config file", path)  # as root: before a word of it is believed
        if refused:
            raise LauncherError(refused, EXIT_USAGE)
        import configparser  # only with a config file

        # "key = value   # why": a comment after whitespace ends the value, as administrators write
        # INI files (and as the README's example does); a "#" inside a word stays part of it.
        parser = configparser.ConfigParser(interpolation=None, default_section="\0none",
                                           inline_comment_prefixes=("#",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            with open(path, encoding="utf-8") as fh:
                parser.read_file(fh)
        except OSError as exc:
            raise LauncherError(f"{path}: cannot read config file: {exc.strerror}", EXIT_USAGE) from None
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise LauncherError(f"{path}: not a valid INI file: {exc}", EXIT_USAGE) from None
        for section in parser.sections():
            items = dict(parser.items(section))
            if section == "launcher":
                for key, text in items.items():
                    where = _where(path, section, key)
                    if key not in _KEYS:
                        raise LauncherError(f"{where}: unknown key; [launcher] allows: {', '.join(_KEYS)}",
                                            EXIT_USAGE)
                    values[key] = _convert(key, text, where)
            elif section.split(" ", 1)[0] == "match":
                rules.append(_rule(path, section, items))
            else:
                raise LauncherError(f"{path}: [{section}]: unknown section; allowed: [launcher], "
                                    f"[match TYPE NAME STATE]", EXIT_USAGE)
    for key, given in overrides.items():
        if given is not None:
            values[key] = _convert(key, given, f"command line: --{key.replace('_', '-')}")
    return Settings(rules=tuple(rules), config_file=path, **values)
