"""keepalived's `enable_script_security`, applied to every path the launcher trusts as root.

keepalived runs the launcher as root, and the launcher runs the configured actions as root: if a
non-root user can change the config file, an action executable, the state directory (its
settings.json and journal decide what root runs) or the log file -- or replace any directory or
symlink on the way to them -- that user gets root.  One rule for all of them, keepalived's
(lib/notify.c, check_script_secure): every component belongs to root, and no file, nor directory
without the sticky bit, is writable by others or by a group other than root's.  Stricter than
keepalived in two ways:

- Symlinks are walked one at a time, as the kernel does: each must belong to root (its directory
  was checked on the way), then its target's components are checked in turn.
- A path root *creates* (the state directory, the log file) must not sit in a directory others can
  write to, sticky or not: in /tmp any user can create the name first -- their own file that root
  then appends to, a hard link to a root file, a directory that stops the launcher.  And it must
  not be a symlink: root opens it with O_NOFOLLOW.

Imported by the reader (and log.py): only os and stat at import time.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notify_launcher.config import Settings

MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP)
_REMEDY_OWNER = "chown it to root, or choose a path only root can change"
_REMEDY_MODE = "chmod go-w it, or choose a path only root can change"


def _named(kind: str, number: int) -> str:
    """`uid 65534 (nobody)`: the number an administrator greps for, and the name they recognise."""
    import grp  # only when a refusal is worded: the reader's start-up stays lean
    import pwd

    try:
        name = pwd.getpwuid(number).pw_name if kind == "uid" else grp.getgrgid(number).gr_name
    except KeyError:
        return f"{kind} {number}"
    return f"{kind} {number} ({name})"


def _writers(st: os.stat_result) -> str | None:
    """Who besides root may write to this inode per its mode bits (group root counts as root, as in
    keepalived), or None."""
    if st.st_mode & stat.S_IWOTH:
        return "others"
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        return _named("gid", st.st_gid)
    return None


def _mode_problem(path: str, st: os.stat_result, sticky_ok: bool) -> str | None:
    """Why a non-root user controls this one component, or None.  A symlink's own mode means
    nothing (only its owner and its directory matter); a sticky directory on the way is fine:
    others cannot rename or remove what root owns in it."""
    if st.st_uid != 0:
        return f"{path} belongs to {_named('uid', st.st_uid)}, not root; {_REMEDY_OWNER}"
    writers = None if stat.S_ISLNK(st.st_mode) else _writers(st)
    if writers is None or (sticky_ok and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return None
    return f"{path} is writable by {writers} (mode {stat.S_IMODE(st.st_mode):04o}); {_REMEDY_MODE}"


def _creation_problem(directory: str, name: str) -> str | None:
    """Root creates `name` in `directory` (already checked on the way): a sticky bit is not enough
    there, since anyone may create the name first."""
    try:
        st = os.lstat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    writers = _writers(st)
    if writers is None:
        return None
    return (f"{directory} is writable by {writers} (mode {stat.S_IMODE(st.st_mode):04o}): any of them can "
            f"create {name} there before root does; choose a directory only root can write to")


def _is_last(pending: list[str]) -> bool:
    return all(part in ("", ".") for part in pending)


def insecure_reason(path: str, created: bool = False) -> str | None:
    """Why a non-root user could change `path` or anything root walks through to reach it, or None
    when it is safe for root.  `created`: root creates and writes this path (the state directory,
    the log file); it may be missing (root creates what is missing, so only the directory it is
    created in matters), must not be a symlink, and must not be in a directory others can write to.
    A missing path that is not `created` is a problem: there is nothing to trust."""
    # not os.path.abspath: its lexical `..` would skip the directory a symlink before it points to
    absolute = path if path.startswith("/") else os.path.join(os.getcwd(), path)
    pending = list(reversed(absolute.split("/")))
    current = "/"
    why = _mode_problem("/", os.lstat("/"), sticky_ok=True)
    hops = 0
    while pending and why is None:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":  # `current` has no symlinks left in it: its dirname is the real parent
            current = os.path.dirname(current)
            continue
        component = os.path.join(current, name)
        last = _is_last(pending)
        try:
            st = os.lstat(component)
        except FileNotFoundError:
            return _creation_problem(current, component) if created else f"{component}: does not exist"
        except OSError as exc:
            return f"{component}: {exc.strerror}"
        if last and created:
            if stat.S_ISLNK(st.st_mode):
                return (f"{component} is a symlink; root creates and opens this path without following "
                        f"symlinks: point the setting at the real path")
            return _mode_problem(component, st, sticky_ok=False) or _creation_problem(current, component)
        why = _mode_problem(component, st, sticky_ok=not last)
        if why is None and stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                return f"{path}: more than {MAX_SYMLINKS} symlinks on the way"
            target = os.readlink(component)
            current = "/" if target.startswith("/") else current
            pending.extend(reversed(target.split("/")))
        else:
            current = component
    return why


def commands(settings: Settings) -> list[tuple[str, str]]:
    """(where configured, executable) for every command the settings can run."""
    found = [("handler", settings.handler[0])] if settings.handler else []
    if settings.stop_action:
        found.append(("stop_action", settings.stop_action[0]))
    if settings.on_failure:
        found.append(("on_failure", settings.on_failure[0]))
    for r in settings.rules:
        found += [(f"[match {r.type} {r.name} {r.state}] {key}", command[0])
                  for key, command in (("handler", r.handler), ("on_failure", r.on_failure)) if command]
    return found


def trusted_paths(settings: Settings) -> list[tuple[str, str, bool]]:
    """(what, path, created by root) for every path a root launcher reads, runs or writes.  The
    state directory holds settings.json, which a lingering worker rereads: checking the directory
    and everything above it covers it.  A command that does not exist is check-config's to report."""
    import shutil  # not at import time: log.py imports this module, and the reader imports log.py

    found = [("config file", settings.config_file, False)] if settings.config_file else []
    for where, exe in commands(settings):
        resolved = shutil.which(exe) or exe
        if os.path.exists(resolved):
            found.append((where, resolved, False))
    found += [("state_dir", settings.state_dir, True), ("log_file", settings.log_file, True)]
    return found + ([("metrics_file", settings.metrics_file, True)] if settings.metrics_file else [])


def check(settings: Settings) -> list[str]:
    """Problems that must stop a root launcher (empty when not root: then keepalived's own rules apply)."""
    if os.geteuid() != 0:
        return []
    problems = []
    for what, path, created in trusted_paths(settings):
        why = insecure_reason(path, created)
        if why:
            problems.append(f"{what} {path} is not safe for root: {why}")
    return problems
