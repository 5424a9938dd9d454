"""`notify-launcher check-config`: find at the console what would otherwise show up at 3 a.m.

Checks the INI file (config.py: also that the state dir leaves room for the doorbell socket's path)
and every command it names, the state and log paths -- as root, with the very check the reader
refuses to start on and in its words (security.py: everything root reads, runs or writes, whether
it exists yet or not, and every directory and symlink above it) -- and optionally the notify_fifo lines of keepalived.conf for the mistakes
keepalived makes easy (docs/keepalived.md), and, with virtual_server blocks, which keepalived process
starts the reader.  Each problem names the file (and line or section/key) and
says what to do.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat

from notify_launcher.config import COMMAND_PATH, Settings, load
from notify_launcher.errors import LauncherError
from notify_launcher.events import Event
from notify_launcher.security import check as security_check
from notify_launcher.security import command_path, commands, fifo_refusal, refusal

_FIFO_KEYS = ("notify_fifo", "vrrp_notify_fifo", "lvs_notify_fifo")


def executable_problem(exe: str) -> str | None:
    """Why `exe` cannot be run by execve (as keepalived and the worker run it), or None.  A bare
    name is looked up in config.COMMAND_PATH, as keepalived and the configuration's load do, never
    in our own PATH; a relative one is the file the worker executes (security.command_path)."""
    path = shutil.which(exe, path=COMMAND_PATH) if "/" not in exe else command_path(exe)
    if path is None or not os.path.exists(path):
        return f"{exe}: not found"
    if not stat.S_ISREG(os.stat(path).st_mode):
        return f"{path}: not a regular file"
    if not os.access(path, os.X_OK):
        return f"{path}: not executable (chmod +x)"
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror}"
    if not (head.startswith(b"#!") or head == b"\x7fELF"):
        return f"{path}: no #! line (execve cannot run it; add e.g. #!/bin/sh)"
    return None


def _writable_dir_problem(what: str, path: str) -> str | None:
    """Really try (root passes os.access everywhere): create and remove a file in the nearest existing
    directory on the way to `path`."""
    import tempfile

    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".notify-launcher-check-"):
            pass
    except OSError as exc:
        return f"{what} {path}: cannot create files in {probe} as uid {os.geteuid()}: {exc.strerror}"
    return None


def check_settings(settings: Settings) -> list[str]:
    """Every problem with loaded settings, the reader's own refusals first (same function, same words)."""
    where = settings.config_file or "command line"
    problems = [f"{where}: {p}" for p in security_check(settings)]
    if not settings.handler:
        problems.append(f"{where}: [launcher] handler: not set; events will only be logged")
    for key, exe, user in commands(settings):
        if not os.path.lexists(command_path(exe)) and refusal(key, command_path(exe), user=user):
            continue  # "does not exist" is said above, in the reader's words
        why = executable_problem(exe)
        if why:
            problems.append(f"{where}: {key}: {why}")
    created = [("state_dir", settings.state_dir), ("log_file", os.path.dirname(settings.log_file))]
    textfile_dir = os.path.dirname(settings.metrics_file or "")
    if settings.metrics_file and not os.path.isdir(textfile_dir):  # the worker makes the file, not its directory
        problems.append(f"{where}: [launcher] metrics_file {settings.metrics_file}: {textfile_dir} is not a "
                        f"directory; create it (root-owned, 0755) and point node_exporter's "
                        f"--collector.textfile.directory at it")
    elif settings.metrics_file:
        created.append(("metrics_file", textfile_dir))
    for what, path in created:
        why = _writable_dir_problem(what, path)
        if why:
            problems.append(f"{where}: [launcher] {why}")
    return problems


def _script_user(words: list[str]) -> tuple[str, int | None]:
    """(name, uid) keepalived runs the script as: the given user, else keepalived_script, else root."""
    name = words[0] if words else None
    if name is None:
        try:
            return "keepalived_script", pwd.getpwnam("keepalived_script").pw_uid
        except KeyError:
            return "root", 0
    try:
        return name, pwd.getpwnam(name).pw_uid
    except KeyError:
        return name, None


def check_keepalived_conf(path: str) -> list[str]:
    """The notify_fifo / notify_fifo_script lines of keepalived.conf's global_defs, read as
    keepalived reads them (kaconf: includes, `@` conditionals, `$` definitions, `{ }` anywhere), and
    the virtual_server blocks that make keepalived run its checker process."""
    from notify_launcher import kaconf

    top = os.path.abspath(path)
    try:
        config = kaconf.read(top)
    except LauncherError as exc:
        return [str(exc)]

    def at(where: kaconf.Where) -> str:
        return f"{path if where.file == top else where.file}:{where.line}"

    problems = [f"{at(p.where)}: {p.reason}; check-config cannot check what it leads to"
                for p in config.problems if not p.same]
    fifos: dict[str, tuple[str, str]] = {}  # key -> (file:line, path)
    scripts: list[tuple[str, str, str]] = []  # (file:line, FIFO key, the rest of the line)
    userless: list[tuple[str, str]] = []
    security = script_user = False
    virtual_server = None  # the first virtual_server block: keepalived then runs its checker process
    for node in config.nodes:
        if node.keyword in ("virtual_server", "virtual_server_group") and virtual_server is None:
            virtual_server = node.where
        if node.keyword != "global_defs":
            continue
        for n in node.block or []:
            key, rest = n.keyword, n.text[len(n.keyword):].strip()
            security |= key == "enable_script_security"
            script_user |= key == "script_user"
            if key in _FIFO_KEYS:
                fifos[key] = (at(n.where), n.words[1] if len(n.words) > 1 else "")
                if len(n.words) == 2:
                    userless.append((at(n.where), key))
            elif key in tuple(f"{k}_script" for k in _FIFO_KEYS):
                scripts.append((at(n.where), key[: -len("_script")], rest))
    for where, fifo_key, rest in scripts:
        if rest.count('"') > 2:
            problems.append(f"{where}: nested double quotes in the script command: keepalived ends the command "
                            f"at the second quote and reads the rest as the user name; use single quotes inside")
            continue
        if rest.startswith('"'):
            command, _, tail = rest[1:].partition('"')
        else:
            command, _, tail = rest.partition(" ")
        try:
            words = shlex.split(command)
        except ValueError as exc:
            problems.append(f"{where}: cannot split the script command: {exc}")
            continue
        if not words:
            problems.append(f"{where}: empty script command")
            continue
        why = executable_problem(words[0])
        if why:
            problems.append(f"{where}: {why}")
        if fifo_key not in fifos:
            problems.append(f"{where}: {fifo_key}_script without {fifo_key}: keepalived writes no events")
            continue
        user, uid = _script_user(tail.split())
        if uid is None:
            problems.append(f"{where}: script user {user!r} does not exist")
            continue
        fifo = fifos[fifo_key][1]
        refused = fifo_refusal(fifo, uid)
        if refused:
            problems.append(f"{fifos[fifo_key][0]}: {refused}")
        elif os.path.exists(fifo) and os.stat(fifo).st_uid != uid:
            problems.append(f"{fifos[fifo_key][0]}: FIFO {fifo} belongs to uid {os.stat(fifo).st_uid}, "
                            f"but the script runs as {user} (uid {uid}): it cannot open it; remove the FIFO and "
                            f"restart keepalived, or set the script user")
    if security and not script_user and _script_user([])[0] != "keepalived_script":
        for where, key in userless:
            problems.append(f"{where}: {key} without a user: with enable_script_security, keepalived 2.2.7 "
                            f"looks up the user keepalived_script again at every reload, fails (it does not "
                            f"exist) and drops the FIFO; write `{key} PATH root`")
    problems += _same_path_twice(fifos)
    if not scripts:
        problems.append(f"{path}: no notify_fifo_script line (fine for `notify-launcher serve`)")
    elif virtual_server is not None:
        vs = f"line {virtual_server.line}" if virtual_server.file == top else at(virtual_server)
        problems += _lvs_problems(at(virtual_server), vs, fifos, scripts)
    return problems


def _same_path_twice(fifos: dict[str, tuple[str, str]]) -> list[str]:
    """`vrrp_notify_fifo` or `lvs_notify_fifo` on the global `notify_fifo`'s path: keepalived drops
    the second one only in the child's own init_global_data, which at start runs in the parent
    (docs/keepalived.md, "LVS sites"): until the first reload that child holds the FIFO twice."""
    glob = fifos.get("notify_fifo")
    problems = []
    for key, child, lines in (("vrrp_notify_fifo", "VRRP", "INSTANCE/GROUP"), ("lvs_notify_fifo", "checker", "VS/RS")):
        own = fifos.get(key)
        if glob is not None and own is not None and own[1] == glob[1]:
            problems.append(f"{own[0]}: {key} on the notify_fifo's path: keepalived's {child} process ignores it "
                            f"only from its first reload on; from its start until then it has the FIFO open twice "
                            f"and writes every {lines} line twice, so each is journaled and its action run twice; "
                            f"remove the {key} line (and any {key}_script)")
    return problems


def _lvs_problems(vs_at: str, vs_line: str, fifos: dict[str, tuple[str, str]],
                  scripts: list[tuple[str, str, str]]) -> list[str]:
    """With virtual_server blocks keepalived runs a checker process beside the VRRP process, and who
    starts the script depends on the keywords (docs/keepalived.md, "LVS sites").  `vs_at`: the first
    block's file:line; `vs_line`: the same, said inside a sentence."""
    with_script = {key: where for where, key, _ in scripts}
    recommend = ("write `vrrp_notify_fifo PATH root`, `vrrp_notify_fifo_script \"...\" root` and "
                 "`lvs_notify_fifo PATH root` (the same PATH, no lvs_notify_fifo_script): one reader, "
                 "started by the VRRP process, which checker restarts do not touch, reading both "
                 "processes' lines; and make the FIFO before keepalived starts (e.g. ExecStartPre=-mkfifo "
                 "-m 0600 PATH), or a reload may leave one process writing into a deleted FIFO "
                 "(docs/keepalived.md, \"LVS sites\")")
    vrrp, lvs = fifos.get("vrrp_notify_fifo"), fifos.get("lvs_notify_fifo")
    shared = vrrp is not None and lvs is not None and vrrp[1] == lvs[1]
    if "vrrp_notify_fifo" in with_script and "lvs_notify_fifo" in with_script and shared:
        return [f"{with_script['lvs_notify_fifo']}: lvs_notify_fifo_script on the vrrp_notify_fifo's path: "
                f"keepalived ignores it only from the first reload on (\"ignoring LVS FIFO script\"); at start "
                f"its checker runs it too, so two readers share the FIFO until then and a stop journals a STOP "
                f"per reader (stop_action twice); remove the lvs_notify_fifo_script line"]
    if "vrrp_notify_fifo" in with_script and "lvs_notify_fifo" in with_script:
        return [f"{with_script['lvs_notify_fifo']}: vrrp_notify_fifo and lvs_notify_fifo are two "
                f"FIFOs, each with a script: two readers, one per keepalived process; with one state "
                f"directory each one's SIGTERM at a keepalived stop journals a STOP (stop_action twice); "
                f"{recommend}"]
    checker_key = next((k for k in ("notify_fifo", "lvs_notify_fifo") if k in with_script), None)
    if checker_key is not None and not ("vrrp_notify_fifo" in with_script and shared):
        return [f"{with_script[checker_key]}: {checker_key}_script with virtual_server blocks "
                f"({vs_line}): keepalived starts the script from its checker process only, and the "
                f"reader lives and dies with the checker (the VRRP process writes into the same FIFO, "
                f"without a script of its own): a checker restart ends that reader and keepalived starts "
                f"another (journaled as RELOAD, no stop_action; lines written meanwhile wait in the pipe); "
                f"better: {recommend}"]
    if "vrrp_notify_fifo" in with_script and lvs is None and "notify_fifo" not in fifos:
        return [f"{vs_at}: virtual_server blocks, but no lvs_notify_fifo: the checker's VS/RS "
                f"events reach no FIFO; {recommend}"]
    return []


def run(config: str | None, keepalived_conf: str | None, overrides: dict[str, str | None]) -> list[str]:
    try:
        settings = load(config, overrides)
    except LauncherError as exc:
        return [str(exc)]
    problems = check_settings(settings)
    if keepalived_conf:
        problems += check_keepalived_conf(keepalived_conf) + run_twice(settings, keepalived_conf)
    return problems


def run_twice(settings: Settings, keepalived_conf: str) -> list[str]:
    """Notify directives keepalived still runs for an event the launcher runs commands for: the
    action would run twice (once from keepalived, once from the launcher)."""
    from notify_launcher import kaconf
    from notify_launcher.kaimport import states_of

    try:
        found = kaconf.find(kaconf.read(os.path.abspath(keepalived_conf)))
    except LauncherError:
        return []  # an unreadable file is check_keepalived_conf's to report
    problems = []
    for d in found.directives:
        if d.ignored is not None:
            continue
        for state in states_of(d, found):
            commands, _ = settings.action_for(Event(d.type, d.name, state, vs=d.vs))
            if commands:
                problems.append(f"{d.where}: {d.keyword} of {d.type} {d.name} still runs from keepalived, and the "
                                f"launcher runs {commands[0].argv[0]} for {d.type} {d.name} {state}: the action would "
                                f"run twice; remove the directive (`notify-launcher import` lists what to remove)")
                break
    return problems
