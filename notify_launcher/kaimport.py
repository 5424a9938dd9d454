"""`notify-launcher import`: keepalived's notify directives -> [match] rules that run, for each
event, exactly the commands keepalived runs for it today, in its order, with its argv and user.

keepalived's rules (docs/keepalived.md "Notify directives"): for an instance's or group's state, the
state script (nothing appended), then the generic `notify` (TYPE NAME STATE PRIORITY appended), then
the FIFO line; a VS's quorum_up/down and an RS's notify_up/down (nothing appended) with its VS/RS
line.  Every script run has one FIFO line with the same TYPE, NAME and STATE, so one rule per
(TYPE, NAME, STATE[, VS]) holds the same commands.  keepalived starts them without waiting; the
launcher runs them one after the other, in that order.

What keepalived would not run (a second directive in a block, a user that does not exist, a script
that is missing or not executable by its user) is noted and not converted.  What the launcher cannot
run the same way is listed with the reason and makes the exit code errors.EXIT_PARTIAL; that directive
stays in keepalived.conf.  The INI written is loaded back and every event's commands compared with
the plan before anything is printed.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import tempfile
from dataclasses import dataclass, field

from notify_launcher import kaconf, security
from notify_launcher.config import COMMAND_PATH, Command, load
from notify_launcher.errors import LauncherError
from notify_launcher.events import Event
from notify_launcher.kaconf import Directive, Found

FIFO = "/run/keepalived/notify.fifo"
LVS_FIFO = "/run/keepalived-notify.fifo"  # made before keepalived starts (docs/keepalived.md "LVS sites")
INSTANCE_STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
CHECKER_STATES = ("UP", "DOWN")
#: The generic `notify` of an instance/group runs for these states (vrrp_notify.c notify_script_exec).
GENERIC_STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "DELETED")


@dataclass(frozen=True)
class Planned:
    """A directive converted: the command the launcher runs for it."""

    directive: Directive
    command: Command


@dataclass
class Conversion:
    #: (type, name, state, vs) -> the commands for that event, in keepalived's order
    rules: dict[tuple[str, str, str, str], list[Planned]] = field(default_factory=dict)
    removed: list[tuple[kaconf.Where, str]] = field(default_factory=list)  # (where, what to do)
    ignored: list[tuple[kaconf.Where, str]] = field(default_factory=list)  # keepalived does not run them either
    refused: list[tuple[kaconf.Where, str]] = field(default_factory=list)  # cannot be converted: why
    global_defs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _is_executable(st: os.stat_result, uid: int, gid: int) -> bool:
    """keepalived's is_executable() (notify.c): by mode bits, root by any x bit."""
    mode = st.st_mode
    if uid == 0:
        return bool(mode & 0o111)
    if uid == st.st_uid:
        return bool(mode & stat.S_IXUSR)
    return bool(mode & (stat.S_IXGRP if gid == st.st_gid else stat.S_IXOTH))


def _keepalived_path(exe: str) -> str | None:
    """The path keepalived executes for `exe` (check_script_secure): looked up in its PATH when
    there is no slash; then resolved, but keeping the name written when it is the same file."""
    if "/" not in exe:
        found = shutil.which(exe, path=COMMAND_PATH)
        if found is None:
            return None
        exe = found
    written = exe if exe.startswith("/") else os.path.join("/", exe)
    real = os.path.realpath(written)
    if not os.path.exists(real):
        return None
    if real == exe:
        return exe
    if os.path.basename(real) != os.path.basename(written):
        same_name = os.path.join(os.path.dirname(real), os.path.basename(written))
        if os.path.exists(same_name) and os.path.samefile(same_name, real):
            real = same_name
    return real


def _user(d: Directive, found: Found) -> tuple[str, str | None] | str:
    """(user, group) keepalived runs `d` as, or why it does not run it (notify.c notify_script_init,
    get_default_script_user)."""
    if d.user is not None:
        return d.user, d.group
    if found.script_user.user is not None:
        return found.script_user.user, found.script_user.group
    try:
        pwd.getpwnam("keepalived_script")
        return "keepalived_script", None
    except KeyError:
        if found.script_user.security:
            return ("no user on it, no script_user, no keepalived_script user, and enable_script_security: "
                    "keepalived does not run it")
        return "root", None


def _ini_safe(text: str) -> bool:
    """A value configparser gives back as written: one line, UTF-8, no ' #' (an inline comment)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return text.isprintable() and not any(text[i] == "#" and text[i - 1].isspace() for i in range(1, len(text)))


def _untrusted_file(path: str) -> str | None:
    """Why someone other than root could change `path` -- keepalived.conf or a file it includes --
    or None: as root, the commands written from it would be root's (security.py)."""
    return security.insecure_reason(path) if os.geteuid() == 0 else None


def _plan(d: Directive, found: Found) -> Command | str:
    """The launcher's command for `d`, or (a str) why it is not converted: 'ignored: ...' when
    keepalived does not run it either, else the reason the launcher cannot run it the same way."""
    if d.ignored is not None:
        return f"ignored: {d.ignored}"
    untrusted = _untrusted_file(d.where.file)
    if untrusted is not None:
        return f"{d.where.file}: the launcher takes no command from a file someone else could change: {untrusted}"
    if d.argv != d.argv_before_232:
        return (f"its argv depends on the keepalived release (2.1.5-2.3.1 unescape the line twice): "
                f"{list(d.argv_before_232)} there, {list(d.argv)} from 2.3.2 on")
    who = _user(d, found)
    if isinstance(who, str):
        return f"ignored: {who}"
    user, group = who
    command = Command(d.argv, user=user, group=group)
    try:
        uid, gid = command.run_as() or (0, 0)
    except KeyError as exc:
        return f"ignored: {exc.args[0]} on this host: keepalived ignores the directive"
    root_group = command.root_group((uid, gid))
    if root_group:
        return f"the launcher runs no command as another user in group root: {root_group}"
    exe = _keepalived_path(d.argv[0])
    if exe is None:
        return f"ignored: {d.argv[0]} not found (keepalived disables it)"
    if not _is_executable(os.stat(exe), uid, gid):
        return f"ignored: {exe} is not executable by uid {uid}, gid {gid} (keepalived disables it)"
    argv = (exe, *d.argv[1:])
    unsafe = security.insecure_reason(exe, user=uid) if os.geteuid() == 0 else None
    if unsafe is not None:
        return (f"{exe}: the launcher runs no command someone else could change: {unsafe}"
                + (" (keepalived with enable_script_security would not run it either)" if found.script_user.security
                   and uid == 0 else ""))
    words = [shlex.join(argv), user, group or ""]
    if not all(_ini_safe(w) for w in words):
        return "a word of its command, user or group cannot be written in an INI value (a control character, ' #')"
    if (uid, gid) == (0, 0):
        return Command(argv, "keepalived" if d.appends else "none")
    return Command(argv, "keepalived" if d.appends else "none", user, group)


def states_of(d: Directive, found: Found) -> tuple[str, ...]:
    """The states whose events run `d` (the generic `notify`: every state of its block)."""
    if d.state is not None:
        return (d.state,)
    if d.type == "GROUP":
        return INSTANCE_STATES
    return INSTANCE_STATES + (("DELETED",) if d.name in found.deleted_flags else ())


def convert(found: Found, ini_path: str, launcher: str, fifo: str | None = None) -> Conversion:
    """The rules, what to change in keepalived.conf (its FIFO at `fifo`, else the default for the
    site's kind), and what could not be converted."""
    conv = Conversion()
    targets: dict[tuple[str, str, str], list[tuple[Directive, Command]]] = {}
    for d in found.directives:
        planned = _plan(d, found)
        if isinstance(planned, str):
            if planned.startswith("ignored: "):
                conv.ignored.append((d.where, f"{d.keyword}: {planned[len('ignored: '):]}"))
                if d.keyword != "notify_deleted":
                    conv.removed.append((d.where, f"remove {d.keyword} (keepalived ignores it)"))
            else:
                conv.refused.append((d.where, f"{d.keyword}: {planned}"))
            continue
        targets.setdefault((d.type, d.name, d.vs), []).append((d, planned))
        conv.removed.append((d.where, "replace with: notify_deleted  (it keeps the DELETED state; the launcher runs "
                                      "the command)" if d.keyword == "notify_deleted" else f"remove {d.keyword}"))
    for (type_, name, vs), pairs in targets.items():
        for state in _order(type_, name, found):
            # keepalived's order: the state script, then the generic notify (vrrp_notify.c 289-299)
            run = [Planned(d, c) for d, c in pairs if d.state == state] + \
                  [Planned(d, c) for d, c in pairs if d.state is None and state in states_of(d, found)]
            if run:
                conv.rules[(type_, name, state, vs)] = run
    for p in found.problems:
        if p.same:
            conv.notes.append(str(p))
        else:
            conv.refused.append((p.where, p.reason))
    command = f"{launcher} --config {ini_path}"
    fifo = fifo or (LVS_FIFO if found.lvs else FIFO)
    if found.lvs:
        conv.global_defs = [f"vrrp_notify_fifo {fifo} root", f'vrrp_notify_fifo_script "{command}" root',
                            f"lvs_notify_fifo {fifo} root"]
        conv.notes.append(f"an LVS site: make the FIFO before keepalived starts, e.g. a systemd drop-in for "
                          f"keepalived.service with ExecStartPre=-/usr/bin/mkfifo -m 0600 {fifo} "
                          f"(docs/keepalived.md, \"LVS sites\")")
    else:
        conv.global_defs = [f"notify_fifo {fifo} root", f'notify_fifo_script "{command}" root']
    conv.removed += [(where, f"remove {keyword} (" + ("after a reload it writes lines for which keepalived runs no "
                                                       "script: the launcher would run them)"
                                                       if keyword == "fifo_write_vrrp_states_on_reload"
                                                       else "the global_defs lines above replace it)"))
                     for keyword, where in found.fifos]
    conv.removed.sort(key=lambda r: (r[0].file, r[0].line))
    return conv


def _order(type_: str, name: str, found: Found) -> tuple[str, ...]:
    if type_ in ("VS", "RS"):
        return CHECKER_STATES
    if type_ == "GROUP":
        return INSTANCE_STATES
    return INSTANCE_STATES + (("DELETED",) if name in found.deleted_flags else ()) + ("MASTER_RX_LOWER_PRI",)


def _word(text: str) -> str:
    """A section word as the [match] header splits it (shlex): bare unless it must be quoted."""
    return text if text and not any(c.isspace() or c in "'\"\\#" for c in text) else shlex.quote(text)


def render_ini(conv: Conversion, source: str) -> str:
    lines = [f"# notify-launcher rules converted from {source} by `notify-launcher import`: for each event,",
             "# the commands keepalived's notify directives ran for it, in keepalived's order, one after the other."]
    for (type_, name, state, vs), run in conv.rules.items():
        lines += ["", f"[match {type_} {_word(name)} {state}{' ' + _word(vs) if vs else ''}]"]
        for number, p in enumerate(run, 1):
            n = "" if number == 1 else f".{number}"
            lines.append(f"# {p.directive.where} {p.directive.keyword}")
            lines.append(f"handler{n} = {shlex.join(p.command.argv)}")
            if p.command.args == "none":
                lines.append(f"args{n} = none")
            if p.command.user is not None:
                lines.append(f"user{n} = {p.command.user}")
            if p.command.group is not None:
                lines.append(f"group{n} = {p.command.group}")
    return "\n".join(lines) + "\n"


def render_report(conv: Conversion) -> str:
    """What to change in keepalived.conf, as INI comments (the whole output stays a valid INI)."""
    out = ["", "# --- keepalived.conf, global_defs: add ---"] + [f"#     {line}" for line in conv.global_defs]
    out += ["# --- keepalived.conf: change, so that nothing runs twice ---"]
    out += [f"# {where}  {what}" for where, what in conv.removed]
    if conv.ignored:
        out += ["# --- not converted: keepalived does not run these either ---"]
        out += [f"# {where}  {what}" for where, what in conv.ignored]
    if conv.refused:
        out += ["# --- NOT CONVERTED: keep these in keepalived.conf, or convert them by hand ---"]
        out += [f"# {where}  {what}" for where, what in conv.refused]
    out += [f"# note: {note}" for note in conv.notes]
    return "\n".join(out) + "\n"


def verify(ini: str, conv: Conversion, found: Found) -> list[str]:
    """Load `ini` as the launcher will and compare every event's commands with the plan, for every
    state of every block with directives (an event no rule covers must run nothing)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ini") as fh:
        fh.write(ini)
        fh.flush()
        try:
            settings = load(fh.name, {})
        except LauncherError as exc:
            return [f"the INI does not load: {exc}"]
    problems = []
    blocks = {(d.type, d.name, d.vs) for d in found.directives}
    for type_, name, vs in blocks:
        for state in _order(type_, name, found) + ("MASTER_PRIORITY", "BACKUP_PRIORITY", "DELETED"):
            expected = tuple(p.command for p in conv.rules.get((type_, name, state, vs), []))
            got, _ = settings.action_for(Event(type_, name, state, vs=vs))
            if got != expected:
                problems.append(f"{type_} {name} {state}: the INI runs {got}, keepalived {expected}")
    return problems
