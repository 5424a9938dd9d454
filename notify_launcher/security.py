"""The one rule for every path root trusts: nobody but root can create, change or swap it.

keepalived runs the launcher as root, and the launcher runs the configured commands as root: if a
non-root user can change the config file, a command, the state directory (its settings.json and
journal decide what root runs), the log or the metrics file -- or replace any directory or symlink
on the way to them, or create one of them before root does -- that user gets root.  So, as root,
`insecure_reason` judges every such path, whether it exists yet or not:

- Every component, from / down, belongs to root (or to the user a command is configured to run
  as), and nobody else may write to it: not by the mode bits (group root counts as root, as in
  keepalived), and not by a POSIX ACL entry either (a named user or group with write, or the owning
  group's entry, when the mask lets it through).  keepalived's own rule (lib/notify.c,
  check_script_secure) reads only the mode bits, whose group bits show the ACL's mask: a file
  root:root 0775 may be writable by any user through an ACL.  An inode whose ACL cannot be read,
  or carries one in a format we do not know (an NFSv4 ACL), cannot be judged: refused.
- Symlinks are walked one at a time, as the kernel does: each must belong to root (its directory
  was checked on the way), then its target's components are checked in turn.
- A sticky directory (/tmp) is fine on the way to something root owns: nobody else can rename or
  remove it there.  It is not fine where a name is still free: a path that does not exist yet is
  judged by the directory it would appear in, which only root may write to (sticky or not), since
  whoever can write there can create it -- a command root would run, a file root would append to.
  The same holds for the paths root creates itself (the state directory, the log and metrics
  files, settings.json), which also must not be symlinks: root opens them with O_NOFOLLOW.

Checked when used: the reader at start, the worker right before each command it spawns
(`command_problem`: a stat and an xattr read per component, microseconds) and when it rereads
settings.json, the operator commands on the paths they are given.  Imported by the reader (and
log.py): only os, stat and struct at import time.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from notify_launcher.value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from notify_launcher.config import Settings

MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP)
#: The directory a worker runs commands from: posix_spawn searches no PATH, so a command given
#: without a slash is a file there.
WORKER_CWD = "/"
ROOT = 0
_REMEDY_OWNER = "chown it to root, or choose a path only root can change"
_REMEDY_MODE = "chmod go-w it, or choose a path only root can change"
_REMEDY_FREE = "choose a directory only root can write to"

# linux/posix_acl_xattr.h: a little-endian u32 version, then (u16 tag, u16 perm, u32 id) entries
_ACL_XATTR = "system.posix_acl_access"
_NFS4_ACL_XATTR = "system.nfs4_acl"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_TAGS = (_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER)
_ACL_ENTRY = struct.Struct("<HHI")


class Offense(Value):
    """What makes one component unsafe: `path` `what` ("is writable by others (mode 0777)"), and
    what to do about it."""

    __slots__ = ("path", "what", "remedy")

    def __init__(self, path: str, what: str, remedy: str) -> None:
        self.path, self.what, self.remedy = path, what, remedy

    def __str__(self) -> str:
        return f"{self.path} {self.what}; {self.remedy}"


class _Unjudgeable(Exception):
    """An inode whose writers cannot be known: (why, path)."""


def _named(kind: str, number: int) -> str:
    """`uid 65534 (nobody)`: the number an administrator greps for, and the name they recognise."""
    import grp  # only when a refusal is worded: the reader's start-up stays lean
    import pwd

    try:
        name = pwd.getpwuid(number).pw_name if kind == "uid" else grp.getgrgid(number).gr_name
    except KeyError:
        return f"{kind} {number}"
    return f"{kind} {number} ({name})"


_NFS4_DEVICES: dict[int, bool] = {}  # st_dev -> whether its file system has NFSv4 ACLs (looked at once)


def _nfs4_acls(path: str, st: os.stat_result) -> bool:
    """Whether `path`'s file system carries NFSv4 ACLs, which do not follow the mode bits' mask:
    asked once per file system (device) a process meets."""
    known = _NFS4_DEVICES.get(st.st_dev)
    if known is None:
        try:
            known = _NFS4_ACL_XATTR in os.listxattr(path, follow_symlinks=False)
        except OSError:
            known = False
        _NFS4_DEVICES[st.st_dev] = known
    return known


def acl_entries(path: str) -> list[tuple[int, int, int]] | None:
    """The (tag, perm, id) entries of `path`'s POSIX access ACL, None when it has none (the mode
    bits tell all).  Raises _Unjudgeable when they cannot be known."""
    try:
        raw = os.getxattr(path, _ACL_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP):  # none, or no POSIX ACLs on this file system
            return None
        raise _Unjudgeable(f"its ACL cannot be read ({exc.strerror})", path) from None
    try:
        return parse_acl(raw)
    except ValueError as exc:
        raise _Unjudgeable(str(exc), path) from None


def parse_acl(raw: bytes) -> list[tuple[int, int, int]]:
    """The (tag, perm, id) entries of a system.posix_acl_access value; ValueError (saying why) for
    anything but the format linux/posix_acl_xattr.h describes."""
    if len(raw) < 4 or (len(raw) - 4) % _ACL_ENTRY.size:
        raise ValueError(f"its ACL is {len(raw)} bytes long, not a POSIX ACL the launcher knows")
    version = int.from_bytes(raw[:4], "little")
    if version != _ACL_VERSION:
        raise ValueError(f"its ACL has format version {version}, which the launcher does not know")
    entries = list(_ACL_ENTRY.iter_unpack(raw[4:]))
    unknown = [tag for tag, _, _ in entries if tag not in _ACL_TAGS]
    if unknown:
        raise ValueError(f"its ACL has an entry of unknown type {unknown[0]:#x}")
    return entries


class _Access(Value):
    """One kind of access others must not have: its mode bits (others, group), its ACL perm bit, the
    word for it, and what to do about a mode or an owning group's ACL entry that grants it."""

    __slots__ = ("other", "group", "acl", "word", "remedy_mode", "remedy_group_obj")

    def __init__(self, other: int, group: int, acl: int, word: str, remedy_mode: str, remedy_group_obj: str) -> None:
        self.other, self.group, self.acl, self.word = other, group, acl, word
        self.remedy_mode, self.remedy_group_obj = remedy_mode, remedy_group_obj


_WRITE = _Access(stat.S_IWOTH, stat.S_IWGRP, 0x02, "writable", _REMEDY_MODE,
                 "setfacl -m g::r-x it, or choose a path only root can change")
_READ = _Access(stat.S_IROTH, stat.S_IRGRP, 0x04, "readable", "chmod go-rw it (keepalived makes it 0600)",
                "setfacl -m g::- it")


def _writer(path: str, st: os.stat_result, owners: tuple[int, ...], access: _Access = _WRITE) -> tuple[str, str] | None:
    """(who besides root may write to -- or, with `access` _READ, read -- this inode, what to do), or
    None.  With a POSIX ACL, the mode's group bits are its mask: without the access's bit there no
    entry grants it (so the ACL is read only with it), and with it the ACL's entries say who the
    group class really is."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_mode & access.other:
        return f"others (mode {mode:04o})", access.remedy_mode
    if _nfs4_acls(path, st):
        raise _Unjudgeable("it is on a file system with NFSv4 ACLs, which the launcher cannot judge", path)
    if not st.st_mode & access.group:
        return None
    acl = acl_entries(path)
    if acl is None:
        if st.st_gid != ROOT:
            return f"{_named('gid', st.st_gid)} (mode {mode:04o})", access.remedy_mode
        return None
    for tag, perm, ident in acl:
        if not perm & access.acl:
            continue
        if tag == _ACL_USER and ident not in owners:
            return (f"{_named('uid', ident)} through an ACL entry",
                    f"setfacl -x u:{ident} it, or choose a path only root can change")
        if tag == _ACL_GROUP and ident != ROOT:
            return (f"{_named('gid', ident)} through an ACL entry",
                    f"setfacl -x g:{ident} it, or choose a path only root can change")
        if tag == _ACL_GROUP_OBJ and st.st_gid != ROOT:
            return f"{_named('gid', st.st_gid)} through its ACL's group entry", access.remedy_group_obj
    return None


def _component(path: str, st: os.stat_result, sticky_ok: bool, owners: tuple[int, ...]) -> Offense | None:
    """Why a non-root user controls this one component, or None.  A symlink's own mode means
    nothing (only its owner and its directory matter); a sticky directory on the way is fine:
    others cannot rename or remove what root owns in it."""
    if st.st_uid not in owners:
        return Offense(path, f"belongs to {_named('uid', st.st_uid)}, not root", _REMEDY_OWNER)
    if stat.S_ISLNK(st.st_mode) or (sticky_ok and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return None
    writer = _writer(path, st, owners)
    return None if writer is None else Offense(path, f"is writable by {writer[0]}", writer[1])


def _free_name(directory: str, owners: tuple[int, ...]) -> Offense | None:
    """A name in `directory` (checked on the way) is still free, or root creates it: whoever can
    write there can take it first, sticky bit or not."""
    try:
        writer = _writer(directory, os.lstat(directory), owners)
    except OSError as exc:
        return Offense(directory, f"cannot be looked at ({exc.strerror})", _REMEDY_FREE)
    return None if writer is None else Offense(directory, f"is writable by {writer[0]}", _REMEDY_FREE)


def _is_last(pending: list[str]) -> bool:
    return all(part in ("", ".") for part in pending)


def _walk(absolute: str, created: bool, owners: tuple[int, ...]) -> str | Offense | None:
    """The first reason the path is not safe, from / down (see the module docstring)."""
    pending = list(reversed(absolute.split("/")))
    current = "/"
    why = _component("/", os.lstat("/"), True, owners)
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
            return _free_name(current, owners)
        except OSError as exc:
            return f"{component}: {exc.strerror}"
        if last and created:
            why = _component(component, st, False, owners)
            if why is None and stat.S_ISLNK(st.st_mode):
                return (f"{component} is a symlink; root creates and opens this path without following "
                        f"symlinks: point the setting at the real path")
            taken = None if why else _free_name(current, owners)
            if taken:
                return Offense(taken.path, f"{taken.what}: any of them can create {component} there before "
                                           f"root does", taken.remedy)
            return why
        why = _component(component, st, not last, owners)
        if why is None and stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                return f"{absolute}: more than {MAX_SYMLINKS} symlinks on the way"
            target = os.readlink(component)
            current = "/" if target.startswith("/") else current
            pending.extend(reversed(target.split("/")))
        else:
            current = component
    return why


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def insecure_reason(path: str, created: bool = False, user: int = ROOT) -> str | None:
    """Why someone other than root (and `user`, whom a command runs as) could create, change or swap
    `path`, or None when it is safe for root.  `created`: root creates and writes this path (the
    state directory, the log file); it must not be a symlink, nor in a directory others can write
    to.  A path that does not exist yet is judged by where it would appear: the nearest existing
    directory above it, and everything above that."""
    # not os.path.abspath: its lexical `..` would skip the directory a symlink before it points to
    absolute = path if path.startswith("/") else os.path.join(os.getcwd(), path)
    try:
        why = _walk(absolute, created, (ROOT, user))
    except _Unjudgeable as exc:
        return f"{exc.args[1]} cannot be judged: {exc.args[0]}; refusing it"
    if why is None or isinstance(why, str):
        return why
    if os.path.lexists(absolute):
        return str(why)
    where = "its directory" if why.path == _nearest_existing(absolute) else "above it,"
    return f"{path} does not exist; {where} {why.path} {why.what}: refused (whoever can write there can create it); " \
           f"{why.remedy}"


def refusal(what: str, path: str, created: bool = False, user: int = ROOT) -> str | None:
    """`{what} {path} is not safe for root: {why}` -- the one message every root entry point gives --
    or None when `path` is safe, or when we are not root (then keepalived's own rules apply)."""
    if os.geteuid() != ROOT:
        return None
    why = insecure_reason(path, created, user)
    return None if why is None else f"{what} {path} is not safe for root: {why}"


def fifo_refusal(path: str, user: int = ROOT) -> str | None:
    """`notify_fifo PATH is not safe for root: ...`, or None (safe, or we are not root).  The FIFO's
    lines decide what root runs and with which arguments, and a line another reader takes is lost:
    the path is judged as any path root trusts (a FIFO not made yet by the directory it would
    appear in), and the FIFO itself belongs to root or `user` (keepalived's script user) and no one
    else may read it either."""
    if os.geteuid() != ROOT:
        return None
    why = insecure_reason(path, user=user)
    if why is None:
        try:
            st = os.stat(path)
            reader = _writer(path, st, (ROOT, user), _READ) if stat.S_ISFIFO(st.st_mode) else None
            why = None if reader is None else f"{path} is {_READ.word} by {reader[0]}; {reader[1]}"
        except OSError:  # gone, or not a FIFO: said by whoever opens it
            pass
        except _Unjudgeable as exc:
            why = f"{exc.args[1]} cannot be judged: {exc.args[0]}; refusing it"
    return None if why is None else f"notify_fifo {path} is not safe for root: {why}"


def command_path(exe: str) -> str:
    """The file a worker executes for a command's first word (posix_spawn: no PATH search)."""
    return exe if exe.startswith("/") else os.path.join(WORKER_CWD, exe)


def command_problem(argv: Sequence[str], user: int = ROOT) -> str | None:
    """Checked right before each spawn (a file may have changed since the reader started): why root
    must not run `argv`, or None."""
    return refusal("command", command_path(argv[0]), user=user) if argv else None


def commands(settings: Settings) -> list[tuple[str, str, int]]:
    """(where configured, executable, the uid it runs as) for every command the settings can run."""
    found = [("handler", settings.handler[0], ROOT)] if settings.handler else []
    if settings.stop_action:
        found.append(("stop_action", settings.stop_action[0], ROOT))
    if settings.on_failure:
        found.append(("on_failure", settings.on_failure[0], ROOT))
    for r in settings.rules:
        section = f"[match {r.type} {r.name} {r.state}{'' if r.vs == '*' else ' ' + r.vs}]"
        for number, command in enumerate(r.commands or (), 1):
            try:
                ids = command.run_as()
            except KeyError:  # gone since the config was read: judged as root's, the stricter
                ids = None
            found.append((f"{section} handler{'' if number == 1 else f'.{number}'}", command.argv[0],
                          ROOT if ids is None else ids[0]))
        if r.on_failure:
            found.append((f"{section} on_failure", r.on_failure[0], ROOT))
    return found


def trusted_paths(settings: Settings) -> list[tuple[str, str, bool, int]]:
    """(what, path, created by root, the user besides root who may own it) for every path a root
    launcher reads, runs or writes, whether it exists yet or not.  The state directory holds
    settings.json, which a lingering worker rereads: checking the directory and everything above it
    covers it."""
    found = [("config file", settings.config_file, False, ROOT)] if settings.config_file else []
    found += [(where, command_path(exe), False, uid) for where, exe, uid in commands(settings)]
    found += [("state_dir", settings.state_dir, True, ROOT), ("log_file", settings.log_file, True, ROOT)]
    return found + ([("metrics_file", settings.metrics_file, True, ROOT)] if settings.metrics_file else [])


def check(settings: Settings) -> list[str]:
    """Problems that must stop a root launcher (empty when not root: then keepalived's own rules apply)."""
    found = (refusal(what, path, created, user) for what, path, created, user in trusted_paths(settings))
    return [problem for problem in found if problem]
