"""The state directory: where the journal, the worker's progress, the locks and the doorbell live.

It is created 0700 and refused when it is a symlink or belongs to another user: everything in it
decides which commands root runs.
"""

from __future__ import annotations

TYPE_CHECKING = False

import errno
import os
import stat

from notify_launcher import identity
from notify_launcher.errors import EXIT_UNUSABLE, LauncherError
from notify_launcher.security import refusal

if TYPE_CHECKING:
    from collections.abc import Callable

FILE_MODE = 0o600


class StatePaths:
    """Names of everything in one state directory."""

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    @property
    def journal(self) -> str:
        """Events in sequence order, appended by the readers (journal.py)."""
        return os.path.join(self.root, "journal")

    @property
    def progress(self) -> str:
        """What the workers did with each event (progress.py)."""
        return os.path.join(self.root, "progress")

    @property
    def history(self) -> str:
        """The finished events' end records a progress compaction moved out (history.py)."""
        return os.path.join(self.root, "history")

    @property
    def worker_lock(self) -> str:
        """Held by the one worker that runs actions."""
        return os.path.join(self.root, "worker.lock")

    @property
    def standby_lock(self) -> str:
        """Held by the one worker waiting for worker.lock, so a burst queues one process, not thousands."""
        return os.path.join(self.root, "standby.lock")

    @property
    def doorbell(self) -> str:
        """Datagram socket the running worker listens on for "new event" rings."""
        return os.path.join(self.root, "doorbell.sock")

    @property
    def settings(self) -> str:
        """The newest reader's settings, so a lingering worker follows a changed config."""
        return os.path.join(self.root, "settings.json")

    @property
    def settings_versions(self) -> str:
        """Every settings version an entry of the journal names, as `ID.json` (settingsfile.py)."""
        return os.path.join(self.root, "settings.d")

    @property
    def spill(self) -> str:
        """Events a writer could not journal because the journal's lock stayed busy (journal.py)."""
        return os.path.join(self.root, "spill")

    @property
    def rejected(self) -> str:
        """How many FIFO lines the readers rejected (totals.py)."""
        return os.path.join(self.root, "rejected")

    @property
    def worker_pid(self) -> str:
        """`PID START` of the worker holding worker.lock (pidfile.py)."""
        return os.path.join(self.root, "worker.pid")

    @property
    def worker_died(self) -> str:
        """`PID START` of the last worker its successor found dead with worker.pid naming it (pidfile.py)."""
        return os.path.join(self.root, "worker.died")


def ensure_state_dir(root: str) -> StatePaths:
    """Create `root` 0700 if missing; refuse a symlink or another owner's directory, and, as root, a
    directory someone else could swap (security.py's check of it and every directory above it).
    That check runs again here, after creating: a directory planted on the way since the reader's
    first check is caught too.  Before its first event (no journal yet) an empty progress file is
    made: a worker that then finds none knows someone removed it, and that events may run again.
    Raises LauncherError for a directory we may not use, OSError for one we cannot prepare now (its
    mode not settable on a read-only file system, a full disk)."""
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        st = os.lstat(root)
    except OSError as exc:
        raise LauncherError(f"state directory {root}: {exc.strerror}; create it or set state_dir",
                            EXIT_UNUSABLE) from None
    if stat.S_ISLNK(st.st_mode):
        raise LauncherError(f"state directory {root} is a symlink; refusing it (point state_dir at the real path)",
                            EXIT_UNUSABLE)
    if not stat.S_ISDIR(st.st_mode):
        raise LauncherError(f"state directory {root} is not a directory", EXIT_UNUSABLE)
    if st.st_uid != os.geteuid():
        raise LauncherError(f"state directory {root} belongs to uid {st.st_uid}, not to us (uid {os.geteuid()}); "
                            f"refusing it", EXIT_UNUSABLE)
    if st.st_mode & 0o777 != 0o700:  # keepalived's umask 0177 would even leave out our own x bit
        os.chmod(root, 0o700)
    why = refusal("state_dir", root, created=True)
    if why:
        raise LauncherError(why, EXIT_UNUSABLE)
    paths = StatePaths(root)
    try:
        if not os.path.exists(paths.journal):
            os.close(open_mode(paths.progress, os.O_WRONLY, FILE_MODE))
    except OSError:
        pass  # a read-only or full disk: the reader's events wait in memory; at worst a needless ERROR later
    return paths


def open_mode(path: str, flags: int, mode: int) -> int:
    """Open (creating if needed) with exactly `mode`: keepalived runs us under umask 0177.  Never
    through a symlink (O_NOFOLLOW: a planted link would make root write, and chmod, what the link's
    maker chose), and the mode is set only on a regular file of ours (not on /dev/null)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)
    return fd


def ensure_dir(path: str) -> None:
    """A private directory inside the state directory (mode 0700 whatever the umask), made if missing;
    a symlink or anything else at the path is refused (OSError)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory", path)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def write_temp(path: str, data: bytes, mode: int = FILE_MODE, sync: bool = True) -> str:
    """The first half of write_atomic: `data` in a temporary file beside `path`, every write checked,
    fsync'ed unless `sync` is False; returns its name, for the caller to rename (or unlink).  Nothing
    is left behind when it raises."""
    tmp = f"{path}.{os.getpid()}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
            view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        discard(tmp)
        raise
    os.close(fd)
    return tmp


def sweep_temps(root: str) -> dict[str, int]:
    """Remove the temporary files (write_temp's NAME.PID.new) that processes killed between write and
    rename left in `root`, a state directory in /run (RAM) where nothing else would: those of a PID
    no process has, or a zombie (a live one -- a worker whose worker.lock was removed, a reader
    writing settings.json -- may be writing its own).  Returns the names removed, with their sizes."""
    removed = {}
    for name in os.listdir(root):
        pid = _temp_pid(name)
        if pid is None:
            continue
        if identity.lives(pid):
            continue
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.unlink(path)
                removed[name] = st.st_size
        except OSError:  # gone meanwhile, or not ours to remove: the next worker tries again
            continue
    return removed


def _temp_pid(name: str) -> int | None:
    """The PID in a name write_temp gives (NAME.PID.new, PID 1-9 digits), else None."""
    head, dot, pid = name[:-4].rpartition(".") if name.endswith(".new") else ("", "", "")
    return int(pid) if dot and head and head[-1] != "\n" and 0 < len(pid) <= 9 and pid.isdecimal() else None


def discard(path: str) -> None:
    """Remove `path` if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Superseded(Exception):
    """The state files are another worker's now (our worker.lock was removed or replaced under us)."""


def write_atomic(path: str, data: bytes, mode: int = FILE_MODE, sync: bool = True,
                 still_ours: Callable[[], bool] | None = None) -> None:
    """Replace `path` with `data`, all or nothing: a temporary file beside it, every write checked
    (a short write is a full disk, not success), fsync, then rename.  Whatever fails, the old file
    stays as it was -- a compaction cut short must never lose or repeat a finished event.
    `sync=False` leaves out the fsync, for a file that is only a view, rewritten from durable state
    (the metrics file): readers still see the old or the new file whole.  `still_ours`: asked after
    the fsync, which a slow disk may stretch to seconds, right before the rename; False raises
    Superseded and leaves `path` alone (a worker must not put its old copy over the new worker's)."""
    tmp = write_temp(path, data, mode, sync)
    if still_ours is not None and not still_ours():
        discard(tmp)
        raise Superseded(path)
    try:
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
