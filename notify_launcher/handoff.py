"""How a journaled event reaches a worker without the reader ever waiting, and without strandings.

The protocol, both sides in one place:

Reader: at start, ring once: a worker that hears it knows us; if none does, spawn one, which
        stands by (imports done, listening) for as long as any reader it knows of lives, so no
        event waits for a fork and imports (issue 11: 33 ms after an idle longer than `linger`).
        Then, per event, append it to the journal and ring the doorbell (a datagram socket
        carrying the reader's pid and start time, so the worker can watch the reader's life, and
        not a later process that got the pid of a reader that rang and died).  A ring that
        is delivered (or a full socket buffer) means a running worker will still read the journal.
        If nobody answers, try to take standby.lock: held means a queued worker that has not read
        the journal yet (nor heard us: ring again once it listens, or it will not stand by for us);
        taken means spawn a worker and hand it the locked descriptor (the child inherits the lock;
        the reader drops its copy of the descriptor without unlocking).
Worker: (1) hold the inherited standby.lock; (2) take worker.lock (filelock, waiting for a running
        worker); (3) open the doorbell; (4) release standby.lock; (5) read the journal, run what is
        pending, wait for a ring, repeat.  Once no reader it has heard from lives and it has
        lingered long enough: close the doorbell, read the journal once more (run what came
        meanwhile, reopening the doorbell), release.

A worker that dies (SIGKILL, OOM) may have taken rings with it, so the reader watches it
(WorkerWatch) and, when it crashes, rings again: the ring finds nobody and spawns a worker, which
recovers the interrupted event.  A worker that leaves while the reader lives (SIGTERM, a replaced
state directory) is replaced the same way, so a standby is always there.

Why nothing is stranded: a worker reads the journal after opening the doorbell and again after
closing it, and the reader rings after appending; every ordering of the two leaves either a live
doorbell or a final re-read after the append.  Why a burst does not fork thousands of processes:
the reader spawns only while it can take standby.lock, which the new worker keeps until it listens;
so at most one worker runs and one waits.
"""

from __future__ import annotations

TYPE_CHECKING = False

import os
import select
import signal

from _socket import AF_UNIX, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, socket  # (not `socket`: _datagram_socket)

from notify_launcher import identity, locks, pidfile
from notify_launcher.statedir import StatePaths


TAKEOVER_WAIT = 10.0  # s a systemd unit's worker and its helper wait for each other on standby.lock


if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

    #: What a ring came to: a worker heard it; our spawned worker has not said hello yet; a worker
    #: will read the journal but has not heard us (another reader's spawned worker holds
    #: standby.lock and does not listen yet, or we woke one whose socket was removed); or we
    #: spawned one.
    Rang = Literal["heard", "spawning", "queued", "spawned"]


def _datagram_socket() -> socket:
    """`_socket`'s socket, not `socket`'s: that module's import (its enums, selectors) costs every
    reader's start ~2 ms, for nothing a datagram on a Unix socket needs."""
    return socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC)


class Doorbell:
    """The reader's side: ring after each append; spawn a worker when no one will read the journal."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self._sock = _datagram_socket()
        self._connected = False
        self._ring = "{} {}".format(*identity.me()).encode()  # the worker watches whoever rings
        self._standby = -1  # opened when first needed: a full disk at start-up must not stop the reader

    def reset(self) -> None:
        """Forget the connected worker and the standby.lock file: the state directory was made anew,
        so both are found again by path (a worker still bound to the old socket follows a removed
        journal and leaves)."""
        self.close()
        self._sock = _datagram_socket()

    def close(self) -> None:
        """Let go of the socket and the standby.lock file (whatever rings are sent stay sent)."""
        self._sock.close()
        self._connected = False
        if self._standby >= 0:
            os.close(self._standby)
            self._standby = -1

    def answered(self) -> bool:
        """One datagram to the worker; True if a worker will see it (or has rings queued already).

        The socket stays connected (no path lookup per event); a new worker binds a new socket at
        the same path, so a refused send reconnects once."""
        for _ in (0, 1):
            try:
                if not self._connected:
                    self._sock.connect(self.paths.doorbell)
                    self._connected = True
                self._sock.send(self._ring)
                return True
            except BlockingIOError:
                return True  # the worker is busy and already has rings queued
            except OSError:
                if not self._connected:
                    return False
                self._sock.close()
                self._sock = _datagram_socket()
                self._connected = False
        return False

    def ring(self, spawn: Callable[[int], object], spawning: bool, behind: bool = False) -> Rang:
        """Make sure a worker will read the journal; call `spawn(locked_standby_fd)` if none will.
        `spawning`: a spawned worker has not said hello yet (it will read the journal, and knows us).
        `behind`: where a worker holds worker.lock but no socket, spawn one to queue behind it (unless
        one is queued already) instead of only waking it: it may be leaving, past its last look at
        the journal."""
        if self.answered():
            return "heard"
        if spawning:
            return "spawning"
        if not behind and self._poked():
            return "queued"  # it binds a new socket and reads the journal, but has not heard us
        if self._standby < 0:
            self._standby = locks.open_standby(self.paths)
        if not locks.try_standby(self._standby):
            return "queued"
        standby, self._standby = self._standby, -1
        try:
            spawn(standby)
        except BaseException:
            locks.release_standby(standby)
            raise
        os.close(standby)  # the child's copy keeps the lock
        return "spawned"


    def _poked(self) -> bool:
        """No socket file, but a live worker holds worker.lock: someone removed doorbell.sock under it.
        Wake it with SIGCHLD -- the signal it wakes on to reap orphans, ignored by default, so a worker
        that has not set up its handlers yet cannot die of it -- and it binds a new socket and reads
        the journal (DoorbellListener.wait).  True if we did; spawning another worker instead would
        only queue it behind the lock, with every ring going nowhere."""
        if os.path.exists(self.paths.doorbell):
            return False  # a dead worker's socket, or a worker's we cannot reach: the caller spawns
        holder = locks.lock_holder(self.paths.worker_lock)
        if holder is None or holder.pid == os.getpid():
            return False
        try:
            os.kill(holder.pid, signal.SIGCHLD)
        except ProcessLookupError:
            return False
        return True


def _stale_doorbell(paths: StatePaths) -> bool:
    """The doorbell's socket file exists but nobody listens on it: its worker died."""
    probe = _datagram_socket()
    try:
        probe.connect(paths.doorbell)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


class WorkerWatch:
    """The reader's eye on the worker: a crashed worker took rings with it, so ring again.

    A spawned worker writes its pid into a "hello" pipe once it holds worker.lock (EOF without a
    pid: it died before); the reader then holds a pidfd on it.  A worker that ends normally
    removes worker.pid first, so "the pidfd fired and worker.pid still names it" means a crash.
    Workers the reader did not spawn are found through worker.pid after a delivered ring.
    """

    def __init__(self, paths: StatePaths, poller: select.poll) -> None:
        self.paths, self.poller = paths, poller
        self.pidfd = -1
        self.pid = 0
        self.ident: identity.ProcessId | None = None  # the watched worker, pinned by the pidfd
        self.hellos: set[int] = set()
        self._reported: identity.ProcessId | None = None  # the worker whose crash we reported last

    def _follow(self, pid: int, named: identity.ProcessId | None = None) -> str | None:
        """Hold a pidfd on worker `pid`; when it came from worker.pid (`named`), check after opening
        the pidfd (which pins the process) that it is that worker and not a later process with the
        same pid."""
        if self.pidfd >= 0:
            self.poller.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        self.pid, self.ident = pid, None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return self._crash_or_none()
        if named is not None and not identity.is_running(named):
            os.close(pidfd)
            return self._crash_or_none()
        self.pidfd = pidfd
        self.ident = identity.of(pid)
        self.poller.register(self.pidfd, select.POLLIN)
        if self.ident != self._reported:  # (the same: a dead worker not reaped yet, which we reported)
            self._reported = None
        return None

    def _crash_or_none(self) -> str | None:
        """A worker that ends normally removes worker.pid and its doorbell first: either one left
        behind (the pid file may be missing: a full disk), or its successor's word in worker.died
        (the successor, queued behind it, rewrote both before we looked), means it died.  Found
        dead again (worker.pid names it until its replacement starts): reported already, and the
        ring that found it is what recovers it (a pidfd that fires is rung for again all the same)."""
        dead = self.ident or identity.ProcessId(self.pid, -1)  # (-1: a start no process has)
        if dead == self._reported or (self.ident is None and self._reported and self._reported.pid == self.pid):
            return None
        named = pidfile.read(self.paths)
        if (named == dead or (self.ident is None and named is not None and named.pid == self.pid)
                or _stale_doorbell(self.paths) or pidfile.died(self.paths, dead)):
            self._reported = dead
            return f"worker pid {self.pid} died without finishing"
        return None

    def follow_named(self) -> str | None:
        """Watch the worker named in worker.pid (or, without one, the holder of worker.lock) unless
        one is watched already; a crash report if it is dead."""
        if self.pidfd >= 0 or self.hellos:
            return None
        named = pidfile.read(self.paths) or locks.lock_holder(self.paths.worker_lock)
        return self._follow(named.pid, named) if named else None

    def new_child(self) -> tuple[int, int]:
        """A hello pipe for a worker about to be spawned: (the end we watch, the end to hand over)."""
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.hellos.add(r)
        self.poller.register(r, select.POLLIN)
        return r, w

    def abandon(self, hello: int) -> None:
        """The spawn failed (fork refused): nobody will say hello, nor leave, on `hello`."""
        self.hellos.discard(hello)
        self.poller.unregister(hello)
        os.close(hello)

    def owns(self, fd: int) -> bool:
        return fd == self.pidfd or fd in self.hellos

    def ready(self, fd: int) -> str | None:
        """`fd` polled readable: a crash report if a worker died leaving work behind, else None."""
        self.poller.unregister(fd)
        if fd in self.hellos:
            self.hellos.discard(fd)
            try:
                data = os.read(fd, 32)
            except BlockingIOError:
                data = b""
            os.close(fd)
            if not data.strip():
                return "a spawned worker exited before taking over"
            if data.startswith(b"unit "):
                return None  # a systemd unit took over; found through worker.pid after the next ring
            return self._follow(int(data))
        os.close(fd)
        self.pidfd = -1
        return self._crash_or_none()


def say_hello(fd: int) -> None:
    """The worker's side of the hello pipe: it holds worker.lock and listens now."""
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    except BrokenPipeError:
        pass  # the reader is gone; the next one finds us through worker.pid
    os.close(fd)


if TYPE_CHECKING:
    Woke = Literal["ring", "signal", "timeout", "reader gone"]


class DoorbellListener:
    """The worker's side, opened only while holding worker.lock (so one listener at a time).

    It also keeps a pidfd on every reader that rang: the worker stands by while any of them lives."""

    def __init__(self, paths: StatePaths, wakeup_fd: int, note: Callable[[str], None] = lambda text: None) -> None:
        self.path = paths.doorbell
        self.wakeup_fd = wakeup_fd
        self.note = note  # what the log must hear (a removed socket bound again)
        self._sock: socket | None = None
        self._ino = 0
        self.readers: dict[int, int] = {}  # pidfd -> pid of a living reader that rang

    def open(self) -> None:
        try:
            os.unlink(self.path)  # left by a worker that died; we hold the lock, so it is stale
        except FileNotFoundError:
            pass
        sock = _datagram_socket()
        sock.bind(self.path)
        self._sock = sock
        self._ino = os.stat(self.path).st_ino

    def _rebound(self) -> bool:
        """If our socket file is gone, bind a new one at the path (a stat when it is there; a file at
        the path that is not ours belongs to another worker, of a state directory made anew, and is
        left to it); True if we did."""
        try:
            os.stat(self.path)
            return False
        except FileNotFoundError:
            pass
        sock = _datagram_socket()
        try:
            sock.bind(self.path)
            ino = os.stat(self.path).st_ino
        except OSError:  # the state directory itself is gone: the worker's lock check handles that
            sock.close()
            return False
        assert self._sock is not None
        self._sock.close()
        self._sock, self._ino = sock, ino
        self.note(f"{self.path} was removed (rings to it reached nobody); listening on a new one, and reading "
                  f"the journal for what they announced")
        return True

    def close(self) -> None:
        """Stop listening; remove the socket file only if it is still ours (after a removed state
        directory, the path may belong to the next worker)."""
        if self._sock is None:
            return
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._sock.close()
        self._sock = None

    def wait(self, timeout: float | None) -> Woke:
        """Block until a ring, a signal on the wakeup fd, the end of a reader, or `timeout` (None:
        no limit); say which.  Whatever woke us, a socket file someone removed is bound again first
        (and said), and that counts as a ring: rings to the removed one reached nobody."""
        assert self._sock is not None
        ready, _, _ = select.select([self._sock.fileno(), self.wakeup_fd, *self.readers], [], [], timeout)
        if ready and self._rebound():
            return "ring"
        if self.wakeup_fd in ready:
            return "signal"
        if not ready:
            return "timeout"
        if self._sock.fileno() not in ready:
            for fd in ready:
                del self.readers[fd]
                os.close(fd)
            return "reader gone"
        callers: dict[int, int | None] = {}
        while True:
            try:
                caller = self._sock.recv(64).split()
            except BlockingIOError:
                break
            if 1 <= len(caller) <= 2 and all(f.isdigit() for f in caller):  # b"!": a ring naming no pid
                callers[int(caller[0])] = int(caller[1]) if len(caller) == 2 else None  # "PID": no start time
        self.know(callers)
        return "ring"

    def know(self, readers: dict[int, int | None]) -> None:
        """Watch the `readers` (pid -> start time in clock ticks, None if not known) we do not watch yet."""
        known = set(self.readers.values())
        for pid, start in readers.items():
            if pid in known:
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # it rang and left: nothing to stand by for
            # Checked after opening the pidfd (a matching start time now means the pidfd is that
            # reader's): a reader that rang and died while we ran an action may have left its pid
            # to another process, which may live for ever.
            if start is not None and identity.of(pid) != (pid, start):
                os.close(pidfd)
                continue
            self.readers[pidfd] = pid

