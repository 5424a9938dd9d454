"""Containment: every process an action starts can be found, and ended, by its worker or the next one.

An action may do anything: setsid, double fork, re-exec, fork while it is being killed.  A timeout,
and a worker recovering the event a dead worker left, must end *every* process the action started
before anything else runs; so ending is a loop (find, kill, look again) that stops only when
nothing is left, never one pass over a list read once.  Four mechanisms find those processes:

- **A cgroup per action** (cgroup v2, where its hierarchy is writable: /sys/fs/cgroup on a current
  Debian, /sys/fs/cgroup/unified beside v1 controllers).  The action *starts* inside (no window in
  which it could fork before being moved): posix_spawned by a worker that lives in the cgroup, or
  cloned straight into it (clone3 CLONE_INTO_CGROUP, clone.py) while the worker is not in it yet
  (Cgroups).  The worker ends it with `cgroup.kill` and waits for `populated 0` in cgroup.events.
  Catches everything -- setsid, double fork, re-exec, a cleared environment, forks racing the
  kill -- except a process that root moves out of the cgroup on purpose (the three below are
  looked at too, on a timeout as in recovery, so it is still found while it keeps the mark, the
  session or its parent chain).  The cgroup is made under
  the worker's own (keepalived.service's, a transient unit's, or the root) and reused: what an
  action leaves running after a normal exit is released (moved into the worker's cgroup, no
  longer contained); one a killed action left processes in is left to them and removed later.
  Its path is in the `start` record, so a recovering worker in another cgroup finds it;
  and its name (the state directory's hash, the worker's pid and start time: identity.py, so a
  later process given that pid is never taken for it) lets every starting worker end what a dead
  worker of its state directory left in one, with no record at all (`end_orphaned`: on_failure
  after the end record, an action spawned before its `start` record).
- **The mark**: NOTIFY_LAUNCHER_ACTION (the event's number and a random token, recorded in the
  state directory's MARK_FILE before the spawn) in every action's environment, inherited by
  whatever it starts and read back from /proc/PID/environ as one whole entry: no other user can
  guess it and have root signal their processes.  Catches
  setsid, double fork and re-exec; not a process that clears its environment (`env -i`) or
  overwrites its initial environment in memory, and not processes of another user when the worker
  is not root (their environ is unreadable).
- **The subreaper**: the worker is a child subreaper (worker.py), so a live worker sees orphans of
  its action re-parented to it.  Not available to a recovering worker (the dead one's orphans went
  to its subreaper ancestor).
- **The session and process group**: the action starts in a session of its own; members that did
  not setsid again are found by it, whatever their environment.

Without a writable cgroup the last three are scanned together, and what none of them catches -- an
action that clears its environment, calls setsid and leaves its parent chain while a *recovering*
worker looks -- can survive.  The worker's second log line says which way it contains actions;
NOTIFY_LAUNCHER_NO_CGROUPS=yes in its environment keeps it out of cgroups.

A process in uninterruptible sleep cannot die until its system call returns; the loop waits
KILL_WAIT for it, then names it in the log and goes on (it holds a pending SIGKILL and runs no more
code of its own).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time

from notify_launcher import identity

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterable
    from hashlib import blake2s
    from typing import TypeVar

    Note = Callable[[str], None]
    T = TypeVar("T")
else:
    try:  # CPython's own BLAKE2s: hashlib's, without loading OpenSSL (~2 ms of a worker's start)
        from _blake2 import blake2s
    except ImportError:  # a build without the builtin hashes has only hashlib's
        from hashlib import blake2s

MARK = "NOTIFY_LAUNCHER_ACTION"
KILL_WAIT = 5.0  # s: how long the kill loop waits for SIGKILLed processes to be gone
CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
CGROUP_PREFIX = "notify-launcher-"
RELEASE_PASSES = 20  # moves of a finished action's leftovers out of its cgroup, before it is left to them
#: In the worker's environment, "yes" keeps it out of cgroups (a host where it must not move between
#: cgroups; the tests of the other mechanisms).
NO_CGROUPS = "NOTIFY_LAUNCHER_NO_CGROUPS"


#: In the state directory (root's alone): `SEQ MARK` of the action the worker spawns last, written
#: before the spawn, so a worker recovering from a dead one finds its processes by their mark.
MARK_FILE = "action.mark"


def mark(seq: int, role: str = "action") -> str:
    """A new NOTIFY_LAUNCHER_ACTION for `seq`'s action (role "on_failure" for its on_failure
    command): a random token, so no other user can give their processes an action's mark and have
    root's timeout or recovery signal them and wait for them.  (secrets.token_hex(16) is this, after
    an import of ~2 ms on the first action's path.)"""
    return f"{role} #{seq} {os.urandom(16).hex()}"


def recorded_mark(state_dir: str, seq: int) -> str | None:
    """The mark MARK_FILE holds for `seq`'s action, or None (another action's, or none)."""
    try:
        with open(os.path.join(state_dir, MARK_FILE), encoding="ascii", errors="replace") as fh:
            number, _, value = fh.read().partition(" ")
    except OSError:
        return None
    return value if number == str(seq) and value else None


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    """The whole file, read to its end: cgroup.procs of a fork bomb's cgroup is more than one read's
    worth, and a read ends before a pid that does not fit whole."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = b""
        while chunk := os.read(fd, 1 << 16):
            data += chunk
        return data
    finally:
        os.close(fd)


def cgroup_prefix(state_dir: str) -> str:
    """How the names of a state directory's action cgroups start (then `slot_name`'s)."""
    return f"{CGROUP_PREFIX}{blake2s(state_dir.encode(), digest_size=4).hexdigest()}-"


def slot_name(token: str, worker: identity.ProcessId, count: int) -> str:
    """An action cgroup's name: `token` (cgroup_prefix), the worker's pid and start time, a count."""
    return f"{token}{worker.pid}-{worker.start}-{count}"


def slot_worker(token: str, name: str) -> tuple[int, int | None] | None:
    """The (pid, start time) of the worker whose action cgroup `name` is (slot_name), if it starts
    with `token`; the start is None in a name an older version gave (PID-COUNT: its pid alone)."""
    if not name.startswith(token):
        return None
    parts = name[len(token):].split("-")
    if not all(part.isdigit() for part in parts) or len(parts) not in (2, 3):
        return None
    return int(parts[0]), int(parts[1]) if len(parts) == 3 else None


def own_cgroup() -> str | None:
    """This process's cgroup v2 directory, if a cgroup2 hierarchy is mounted where we look."""
    try:
        lines = _read("/proc/self/cgroup").decode().splitlines()
    except OSError:
        return None
    rel = next((line[3:] for line in lines if line.startswith("0::")), None)
    if rel is None:
        return None
    for root in CGROUP_ROOTS:
        path = root + rel.rstrip("/")
        if os.path.exists(path + "/cgroup.procs") and os.path.exists(root + "/cgroup.controllers"):
            return path
    return None


def populated(cgroup: str) -> bool:
    """Any live process in `cgroup` (or below); False once it is gone."""
    try:
        return b"populated 1" in _read(cgroup + "/cgroup.events")
    except FileNotFoundError:
        return False


def cgroup_members(cgroup: str) -> list[int]:
    try:
        return [int(pid) for pid in _read(cgroup + "/cgroup.procs").split()]
    except FileNotFoundError:
        return []


def _subtree(cgroup: str) -> list[str]:
    """`cgroup` and every cgroup below it."""
    return [path for path, _, _ in os.walk(cgroup)]


def _remove_below(cgroup: str, itself: bool = False) -> None:
    """Remove the (empty) cgroups below `cgroup`, deepest first, and `itself` last if asked; one
    still in use stays.  (rmdir refuses a cgroup with a child cgroup even when no process is left
    anywhere in it: an action's own empty sub-cgroup kept its slot for good.)"""
    for path, _, _ in os.walk(cgroup, topdown=False):
        if itself or path != cgroup:
            try:
                os.rmdir(path)
            except OSError:
                pass


def wait_unpopulated(cgroup: str, timeout: float) -> bool:
    """Wait (on cgroup.events' change notification, not a sleep loop) until `cgroup` is empty."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(cgroup + "/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while b"populated 1" in os.pread(fd, 4096, 0):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(min(left, 0.1) * 1000)  # notified on change; 0.1 s bounds a missed one
        return True
    finally:
        os.close(fd)


def kill_cgroup(cgroup: str) -> None:
    """SIGKILL everything in `cgroup`: cgroup.kill where the kernel has it (5.14+: forks racing it
    are killed too), else each member (the caller's loop looks again)."""
    try:
        _write(cgroup + "/cgroup.kill", b"1")
        return
    except FileNotFoundError:
        if not os.path.isdir(cgroup):
            return
    for pid in cgroup_members(cgroup):
        if pid != os.getpid():
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class Scan:
    """One look at the process table for an action's processes: those carrying its mark, those in
    its session or process group, and the descendants of `roots` (the action itself while it is the
    one recorded, and what the worker's subreaper inherited since it started)."""

    def __init__(self, mark_value: str | None, session: int | None, roots: Iterable[int]) -> None:
        self.needle = None if mark_value is None else f"\0{MARK}={mark_value}\0".encode()
        self.session, self.roots = session, set(roots)

    def find(self) -> set[int]:
        me = os.getpid()
        parent: dict[int, int] = {}
        found: set[int] = set()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            pid = int(name)
            fields = _stat_fields(pid)
            if fields is None or not identity.running(pid, fields[0].decode()):
                continue  # gone, or dead and waiting to be reaped
            parent[pid] = int(fields[1])
            if self.session is not None and self.session in (int(fields[2]), int(fields[3])):
                found.add(pid)
            elif self.needle is not None and self._marked(pid):
                found.add(pid)
        for pid in parent:  # descendants of the roots, whatever their environment or session
            chain: list[int] = []
            p = pid
            while p in parent and p not in self.roots and p not in found and len(chain) < 64:
                chain.append(p)
                p = parent[p]
            if p in self.roots or p in found:
                found.update(chain)
        found.update(p for p in self.roots if p in parent)
        return found

    def _marked(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return self.needle in b"\0" + fh.read()  # type: ignore[operator]  # one whole NAME=VALUE
        except OSError:
            return False


def _stat_fields(pid: int) -> list[bytes] | None:
    """state, ppid, pgrp, session, ... of /proc/PID/stat (after the command name)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def end_all(find: Callable[[], set[int]], cgroup: str | None, note: Note, wait: float = KILL_WAIT) -> list[int]:
    """SIGKILL everything `find()` and `cgroup` hold, and look again, until nothing is left; give
    up only when `wait` s pass without fewer processes left (they are in uninterruptible sleep),
    and return those.  A SIGKILLed process on a busy machine may take a while to be scheduled and
    exit: that is progress, not a reason to give up."""
    deadline = time.monotonic() + wait
    fewest: int | None = None
    while True:
        left: set[int] = set()
        if cgroup is not None:
            kill_cgroup(cgroup)
            wait_unpopulated(cgroup, min(0.5, max(0.0, deadline - time.monotonic())))
            left = set(cgroup_members(cgroup))
        found = find()
        if found - left:
            new = sorted(found - left)
            note(f"SIGKILL to {len(new)} process(es): " + ", ".join(map(str, new[:20])) + (" ..." if len(new) > 20 else ""))
        for pid in found:
            left.add(pid)
            _signal(pid, signal.SIGKILL)
        if not left:
            return []
        if fewest is None or len(left) < fewest:
            fewest, deadline = len(left), time.monotonic() + wait
        elif time.monotonic() >= deadline:
            note("still alive after SIGKILL (uninterruptible sleep?): " + ", ".join(map(str, sorted(left))))
            return sorted(left)
        wait_pids(left, 0.1)  # they leave as soon as they are scheduled


class Mover:
    """The worker's moves of itself into a cgroup, each one write of "0" to its cgroup.procs, made by
    a thread of its own: a move waits in the kernel for an RCU grace period (Cgroups), the worker
    meanwhile does not.  `begin(cgroup)` starts one, `wait()` returns when it is done and raises
    what its open or write raised.

    The thread lives as long as the worker (made at the first move) and runs C library code only
    with the GIL, or blocked in a system call (the read of its pipe, the move's open, write and
    close): so while the main thread holds the GIL, this thread holds no lock of the C library's,
    and the raw clone3 of clone.py is safe beside it (a thread that exits would not be: glibc's
    thread teardown frees its malloc cache under an arena lock, without the GIL).  After each
    system call it waits for the GIL, up to 5 ms while the main thread runs (sys.getswitchinterval)."""

    def __init__(self) -> None:
        self.busy = False
        self._target = ""
        self._error: OSError | None = None
        self._jobs = -1  # the write end of the thread's pipe: one byte per move
        self._done: threading.Event | None = None

    def begin(self, cgroup: str) -> None:
        assert not self.busy
        if self._done is None:
            import threading  # (~1 ms: where clone3 works, the first move is made when the worker is idle)
            self._done = threading.Event()
            jobs, self._jobs = os.pipe2(os.O_CLOEXEC)
            # start() returns once the thread runs Python: its C start-up is over.
            threading.Thread(target=self._serve, args=(jobs,), name="cgroup mover", daemon=True).start()
        self._target, self._error, self.busy = cgroup, None, True
        self._done.clear()
        os.write(self._jobs, b"m")

    def _serve(self, jobs: int) -> None:
        assert self._done is not None
        while os.read(jobs, 1):
            try:
                _write(self._target + "/cgroup.procs", b"0")
            except OSError as exc:
                self._error = exc
            self._done.set()

    def wait(self) -> None:
        if self.busy:
            assert self._done is not None
            self._done.wait()
            self.busy = False
            if self._error is not None:
                raise self._error


class Cgroups:
    """The action cgroups of one worker, made under its own cgroup; one in use at a time (`slot`).

    Moving a process between cgroups takes the kernel's threadgroup lock for writing, which waits
    for an RCU grace period unless the hierarchy is mounted with `favordynmods`: 11-28 ms after a
    quiet spell (measured on 6.18), and ~10-20 us of CPU each; it holds cgroup_mutex meanwhile, so
    a clone3 into a cgroup waits for it too (forks elsewhere do not).  So no event waits for a move:
    the worker *lives* in the slot and posix_spawns from there (the child starts inside: no window
    to fork before a move); where it is not in the slot yet -- its first action, the first after
    one left processes behind -- it clones the action straight into the slot (clone.py), and moves
    in once it has nothing to run (`idle`), off any event's path.  It moves out only before it
    kills the slot (a timeout) and when an action left processes behind (the old slot is left to
    them, removed once empty).  Where clone3 cannot start a child in a cgroup (`refused`), a spawn
    outside the slot waits for the move instead: the first one, begun at `start`, overlaps the
    worker's start."""

    def __init__(self, state_dir: str) -> None:
        self.token = cgroup_prefix(state_dir)
        self.me = identity.ProcessId(0, 0)  # this worker, in the slots' names (set by `start`)
        self.home: str | None = None
        self.slot: str | None = None
        self.inside = False  # the worker is in `slot`
        self.refused: str | None = None  # why clone3 cannot start a child in a cgroup here, if it cannot
        self._made = 0
        self._mover = Mover()

    def start(self, home: str | None) -> str | None:
        """Make a slot under `home` (our own cgroup, own_cgroup()) and find out whether clone3 can
        start a child in it (where it cannot, begin the move into it); None if cgroups can be used,
        else why not."""
        if home is None:
            return "no cgroup v2 hierarchy mounted"
        self.home, self.me = home, identity.me()
        try:
            slot = self._new_slot()
        except OSError as exc:
            self.home = self.slot = None
            return f"cannot make a cgroup in {home} ({exc.strerror})"
        from notify_launcher import clone  # ctypes: only a worker with cgroups
        self.refused = clone.refused()
        if self.refused is not None:
            self._mover.begin(slot)
        return None

    def _settle(self) -> None:
        """Wait for a move in flight; raises what it raised, but for a slot removed before we got
        in (a leaving worker's sweep saw it empty): then the caller makes another."""
        if not self._mover.busy:
            return
        try:
            self._mover.wait()
            self.inside = True
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise
            self.slot = None

    def _new_slot(self) -> str:
        assert self.home is not None
        self.sweep()
        self._made += 1
        slot = f"{self.home}/{slot_name(self.token, self.me, self._made)}"
        os.mkdir(slot)
        self.slot = slot
        return slot

    def enter(self) -> tuple[str, int | None]:
        """Ready to spawn into the slot (a new one if the last was left to an action's processes):
        (the slot, None) once the worker is in it, so that what it spawns starts there; else, unless
        clone3 is `refused`, (the slot, an fd of it, close-on-exec) for the spawn to clone the child
        into, the worker's own move left to `idle`.  A move in flight is waited for first (a clone3
        into a cgroup would wait for it anyway).  Raises OSError."""
        assert self.home is not None
        self._settle()
        if self.inside or self.refused is not None:
            return self.move_in(), None
        slot = self.slot or self._new_slot()
        try:
            return slot, os.open(slot, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed under us (a leaving worker's sweep saw it empty)
            slot = self._new_slot()
            return slot, os.open(slot, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def move_in(self) -> str:
        """Be in the slot (a new one if there is none, or if it was removed under us), waiting for
        the move; the slot.  Raises OSError."""
        assert self.home is not None
        self._settle()
        slot = self.slot or self._new_slot()
        if not self.inside:
            try:
                _write(slot + "/cgroup.procs", b"0")
            except FileNotFoundError:
                slot = self._new_slot()
                _write(slot + "/cgroup.procs", b"0")
            self.inside = True
        return slot

    def idle(self) -> None:
        """The worker has nothing to run: begin its move into the slot (made now if there is none)
        unless it is there, so that the next spawn is a posix_spawn from inside.  What the move
        meets is raised by the next spawn's `enter`."""
        if self.home is None or self.inside or self._mover.busy:
            return
        try:
            slot = self.slot or self._new_slot()
        except OSError:
            return  # the next spawn tries again
        self._mover.begin(slot)

    def leave(self) -> None:
        """Out of the slot, into our own cgroup again (a move into it still in flight is waited for
        first: the worker must not arrive in a slot that is being killed); raises OSError."""
        assert self.home is not None
        self._settle()
        if self.inside:
            _write(self.home + "/cgroup.procs", b"0")
            self.inside = False

    def release(self, slot: str) -> set[int]:
        """Move every process in `slot` and below it (a root action may make sub-cgroups of its own:
        what it put there is the action's too) but us into our own cgroup (their forks racing the move
        are moved by the next pass), then remove the emptied sub-cgroups; the pids moved.  Raises
        OSError if some cannot be moved."""
        assert self.home is not None
        moved: set[int] = set()
        for _ in range(RELEASE_PASSES):
            pids = [pid for group in _subtree(slot) for pid in cgroup_members(group) if pid != os.getpid()]
            if not pids:
                _remove_below(slot)
                return moved
            for pid in pids:
                try:
                    _write(self.home + "/cgroup.procs", str(pid).encode())
                    moved.add(pid)
                except ProcessLookupError:
                    pass  # gone meanwhile
        raise OSError(errno.EBUSY, f"processes still forking in {slot}")

    def retire(self) -> None:
        """Leave the slot to the processes an action left in it; the next spawn is into a new one."""
        self.leave()
        self.slot = None

    def sweep(self) -> None:
        """Remove empty action cgroups whose worker is gone or that are ours but not in use: what
        dead workers (SIGKILLed, of any state directory) and actions' leftovers left behind."""
        assert self.home is not None
        for name in os.listdir(self.home):
            path = f"{self.home}/{name}"
            if not name.startswith(CGROUP_PREFIX) or path == self.slot or populated(path):
                continue
            token = name[:len(self.token)]  # any state directory's (the same length: cgroup_prefix)
            worker = slot_worker(token, name)
            if worker is None:
                continue  # not an action cgroup's name (slot_name): someone else's, whatever its prefix
            if name.startswith(self.token) or not identity.lives(*worker):
                _remove_below(path, itself=True)

    def close(self) -> None:
        """When the worker leaves: out of the slot, and the empty cgroups gone."""
        if self.home is None:
            return
        try:
            self.retire()
            self.sweep()
        except OSError:
            pass


def children() -> set[int]:
    """Our direct children, from the kernel's list (cheap: no /proc scan).  Raw os.read, not a text
    file object (5 us instead of 12)."""
    chunks = []
    try:
        fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY | os.O_CLOEXEC)
        try:
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
    except OSError:
        return set()
    return {int(pid) for pid in b"".join(chunks).split()}


def wait_pids(pids: Iterable[int], timeout: float) -> None:
    """Wait until every one of `pids` has exited (or `timeout` s), on pidfds, not a sleep loop."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except OSError:
            pass  # gone already
    try:
        deadline = time.monotonic() + timeout
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        waiting = len(fds)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for fd, _ in poller.poll(int(left * 1000) + 1):
                poller.unregister(fd)
                waiting -= 1
    finally:
        for fd in fds:
            os.close(fd)


class Box:
    """One action's processes: `spawn` starts the action inside (its cgroup, or with its mark);
    `members`, `wait_gone`, `end` and `leftovers` find them again, whichever mechanism holds them."""

    def __init__(self, cgroups: Cgroups | None, mark_value: str) -> None:
        self.cgroups, self.mark_value = cgroups, mark_value
        self.cgroup: str | None = None
        self.pid = 0
        self._before: set[int] = set()
        self.unreleased: str | None = None  # why what the action left could not be released, if so

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        return dict(env, **{MARK: self.mark_value})

    def spawn(self, start: Callable[[int | None], T]) -> T:
        """Call `start(into)`, which spawns the action, inside the action's cgroup if there is one:
        `into` None, the worker is in it (or there is none) and the child starts where the worker
        is; else `into` is an fd of the cgroup to clone the child into (Cgroups.enter, closed
        after).  Should that clone fail (nothing started), the worker moves into the cgroup and
        spawns from there."""
        into = None
        if self.cgroups is not None and self.cgroups.home is not None:
            try:
                self.cgroup, into = self.cgroups.enter()
            except OSError:
                self.cgroups.home = None  # found by scanning from now on (the log said how at start)
        self._before = children()  # background processes earlier actions left: not this action's
        if into is None:
            return start(None)
        from notify_launcher.clone import CloneFailed  # imported already: Cgroups.start's probe
        try:
            return start(into)
        except CloneFailed:
            pass  # (a cgroup removed meanwhile, or a fork the kernel refuses: the posix_spawn says so)
        finally:
            os.close(into)
        assert self.cgroups is not None
        try:
            self.cgroup = self.cgroups.move_in()
        except OSError:
            self.cgroups.home, self.cgroup = None, None
        return start(None)

    def started(self, pid: int) -> None:
        self.pid = pid

    def _scan(self) -> Scan:
        return Scan(self.mark_value, self.pid, [self.pid, *(children() - self._before - {self.pid})])

    def isolate(self) -> None:
        """The worker out of the action's cgroup (if it is in it, or on its way in: Cgroups.leave),
        so that killing the cgroup cannot kill it.  Should that fail, this action is found by
        scanning instead, and cgroups are used no more."""
        if self.cgroup is not None and self.cgroups is not None:
            try:
                self.cgroups.leave()
            except OSError:
                self.cgroups.home, self.cgroup = None, None

    def members(self) -> set[int]:
        """Every live process of the action's, the action itself included while it runs: its
        cgroup's, and -- on every way, as a recovering worker looks -- what carries its mark, is in
        its session or descends from it (root may move a process out of the cgroup; it keeps those)."""
        found = self._scan().find()
        if self.cgroup is not None:
            found |= set(cgroup_members(self.cgroup))
        return found - {os.getpid()}

    def wait_gone(self, pids: Iterable[int], timeout: float) -> None:
        if self.cgroup is not None and self.cgroups is not None and not self.cgroups.inside:
            wait_unpopulated(self.cgroup, timeout)
        else:
            wait_pids(pids, timeout)

    def end(self, note: Note) -> list[int]:
        """SIGKILL every process of the action's until none is left (see end_all)."""
        self.isolate()
        return end_all(self._scan().find, self.cgroup, note)

    def leftovers(self, release: bool) -> list[int]:
        """After the action exited: what it left running.  Its orphans are re-parented to the worker
        (the subreaper), so they are our new children; in a cgroup, every member but the worker.
        `release` (a normal exit): they are no longer the action's -- moved out of its cgroup into
        the worker's own, so that no timeout nor recovering worker ends them (an action may start
        a daemon: `haproxy -D`).  A cgroup still holding any (not released, or a move failed) is
        left to them; the next action is spawned into another."""
        left = children() - self._before - {self.pid}
        if self.cgroup is not None and self.cgroups is not None:
            try:
                if release and left:  # (something left has an orphan, re-parented to us: none, no read)
                    try:
                        left |= self.cgroups.release(self.cgroup)
                    except OSError as exc:
                        release = False  # what could not be moved keeps the cgroup
                        self.unreleased = f"{exc.strerror or exc}; they stay in {self.cgroup}"
                if (left and not release) or (not self.cgroups.inside and populated(self.cgroup)):
                    self.cgroups.retire()
            except OSError:
                pass  # the next spawn tries again, and scans if it cannot
        return sorted(left)


class Containment:
    """A worker's way of containing its actions: `start()` picks it (cgroups where they can be used),
    `way()` says which; `box(seq)` is one action's; `end_recorded` ends a dead worker's action."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.cgroups = Cgroups(state_dir)
        self.home: str | None = None  # our own cgroup, as found before moving into a slot
        self._why_not: str | None = None
        self._way = ""

    def start(self) -> None:
        """Pick the way: cgroups if a slot can be made, and whether the first action is cloned into
        it (Cgroups).  Called first thing in a worker's life: where clone3 is refused, the move the
        first spawn then waits for (an RCU grace period, 11-28 ms) overlaps the worker's imports, its
        lock and its state files, none of which needs it."""
        if os.environ.get(NO_CGROUPS) == "yes":
            self._why_not = f"{NO_CGROUPS}=yes"
            return
        self.home = own_cgroup()
        self._why_not = self.cgroups.start(self.home)

    def way(self) -> str:
        """One line for the log saying how actions are contained (where the first spawn waits for the
        worker's move, once the move is done: whether it could be made)."""
        if self._way:
            return self._way
        why_not = self._why_not
        if why_not is None and self.cgroups.refused is None:
            self._way = f"actions contained in cgroups under {self.cgroups.home}"
            return self._way
        if why_not is None:
            try:
                self.cgroups.move_in()
                self._way = (f"actions contained in cgroups under {self.cgroups.home}; clone3 into a cgroup "
                             f"refused ({self.cgroups.refused}): the worker moves into an action's cgroup before "
                             f"it spawns the action, and where it is not in it yet that waits for the kernel")
                return self._way
            except OSError as exc:
                why_not = f"cannot enter {self.cgroups.slot} ({exc.strerror})"
                self.cgroups.home = None
        self._way = f"actions contained by their {MARK} mark, the subreaper and their session (no cgroup: {why_not})"
        return self._way

    def idle(self) -> None:
        """The worker has nothing to run: its own move into the action cgroup, off the events' path."""
        if self.cgroups.home is not None:
            self.cgroups.idle()

    def box(self, seq: int, role: str = "action") -> Box:
        """Event `seq`'s action's (or on_failure's) box, with a new mark; an action's is recorded in
        MARK_FILE first (a state directory that cannot be written then loses only that fallback of
        recovery without cgroups: the start record's pid and session remain)."""
        value = mark(seq, role)
        if role == "action":
            try:
                fd = os.open(os.path.join(self.state_dir, MARK_FILE),
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, f"{seq} {value}".encode())
                finally:
                    os.close(fd)
            except OSError:
                pass
        return Box(self.cgroups if self.cgroups.home is not None else None, value)

    def end_orphaned(self, note: Note) -> list[int]:
        """End everything in the action cgroups of this state directory (found by name in our own
        cgroup: cgroup_prefix, then the worker's pid) whose worker is gone: an action, a command of
        a rule, on_failure or stop_action a SIGKILLed worker left, with or without any record of
        it.  (What actions released is not in them.)  Returns what could not be ended."""
        left: list[int] = []
        for path, worker, start in self._named():
            if identity.lives(worker, start):
                continue
            if populated(path):
                note(f"worker pid {worker} is gone; ending what it left running in its action cgroup {path}")
                left += end_all(set, path, note)
            _remove_below(path, itself=True)
        return left

    def live_workers(self) -> set[int]:
        """Other workers of this state directory's path with an action's processes alive: each lives in
        an action cgroup named by its pid (Cgroups), found in our own cgroup.  There are any only
        when someone removed worker.lock (or the whole directory) under a live worker: it leaves
        once its action ends (Worker._owner), and two workers must never run actions at once.  A
        worker ending a timed-out action has left its slot (Box.isolate) while the action's tree
        lives on through kill_grace: it counts while it lives (its pid and start time, in the slot's
        name; a name of an older version's has no start: then while its pid is in the slot or back in
        our cgroup)."""
        found = set()
        home: list[int] | None = None
        for path, worker, start in self._named():
            if worker == os.getpid() or (start is not None and not identity.lives(worker, start)):
                continue
            members = cgroup_members(path)
            if not set(members) - {worker}:  # empty, or the worker idle in it (it starts nothing: its lock is gone)
                continue
            if worker not in members and home is None:
                home = cgroup_members(self.home) if self.home is not None else []
            if worker in members or (home is not None and worker in home):
                found.add(worker)
        return found

    def _named(self) -> list[tuple[str, int, int | None]]:
        """(path, worker pid, its start time if the name has it: slot_worker) of this state
        directory's action cgroups in our own cgroup."""
        home = self.home  # (own_cgroup() names our slot once we moved into it)
        if home is None:
            return []
        token = cgroup_prefix(self.state_dir)
        try:
            names = os.listdir(home)
        except OSError:
            return []
        workers = ((name, slot_worker(token, name)) for name in names)
        return [(f"{home}/{name}", *worker) for name, worker in workers if worker is not None]

    def end_recorded(self, seq: int, pid: int | None, started: tuple[int, int] | None, cgroup: str | None,
                     note: Note) -> list[int]:
        """End every process of event `seq`'s action, started by a worker that died: its cgroup (as
        recorded), everything carrying its mark, and -- if `pid` is still the action (its start time
        within `started`, identity.py) -- its session and process group.  Returns what could not be
        ended."""
        session = None
        if pid is not None and started is not None and identity.started_between(pid, *started):
            note(f"ending the dead worker's action pid {pid}")
            session = pid
        scan = Scan(recorded_mark(self.state_dir, seq), session, [session] if session is not None else [])
        live = cgroup if cgroup is not None and os.path.isdir(cgroup) else None
        if live is not None:
            note(f"ending everything in its cgroup {live}")
        return end_all(scan.find, live, note)

    def close(self) -> None:
        self.cgroups.close()
