"""keepalived's `enable_script_security`, applied to our own inputs.

keepalived runs the launcher as root, and the launcher runs the configured actions as root: if a
non-root user can change the config file or an action executable -- or replace any directory on
the way to them -- that user gets root.  As in keepalived, a sticky directory (like /tmp) is fine
on the way: others cannot replace what root owns in it.
"""

from __future__ import annotations

import os
import shutil
import stat

from notify_launcher.config import Settings


class InsecureError(Exception):
    """A file root would trust can be changed by someone else; the message names it."""


def _chain(path: str) -> list[str]:
    """Every directory from / down to `path`, then `path` itself; for the literal and the real path."""
    out: list[str] = []
    for p in (os.path.abspath(path), os.path.realpath(path)):
        parts = p.split("/")
        for i in range(1, len(parts) + 1):
            component = "/".join(parts[:i]) or "/"
            if component not in out:
                out.append(component)
    return out


def insecure_reason(path: str) -> str | None:
    """Why a non-root user could change `path` (a file root reads or runs), or None."""
    target = os.path.realpath(path)
    for component in _chain(path):
        try:
            st = os.lstat(component)
        except OSError as exc:
            return f"{component}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            continue  # its directory was checked; its target is checked through the real path
        if st.st_uid != 0:
            return f"{component} belongs to uid {st.st_uid}, not root"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and component != target
        if writable and not sticky_dir:
            return f"{component} is writable by {'group and others' if st.st_mode & stat.S_IWOTH else 'its group'}"
    return None


def commands(settings: Settings) -> list[tuple[str, str]]:
    """(where configured, executable) for every command the settings can run."""
    found = [("handler", settings.handler[0])] if settings.handler else []
    if settings.stop_action:
        found.append(("stop_action", settings.stop_action[0]))
    found += [(f"[match {r.type} {r.name} {r.state}] handler", r.handler[0]) for r in settings.rules if r.handler]
    return found


def check(settings: Settings) -> list[str]:
    """Problems that must stop a root launcher (empty when not root: then keepalived's own rules apply)."""
    if os.geteuid() != 0:
        return []
    problems = []
    if settings.config_file:
        why = insecure_reason(settings.config_file)
        if why:
            problems.append(f"config file {settings.config_file} is not safe for root: {why}")
    for where, exe in commands(settings):
        resolved = shutil.which(exe) or exe
        if os.path.exists(resolved):
            why = insecure_reason(resolved)
            if why:
                problems.append(f"{where} {exe} is not safe to run as root: {why}")
    return problems
