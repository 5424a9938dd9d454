"""Run one action: argv only (event fields are never put into a shell string), its own session,
output into the log line by line, a timeout that ends the whole tree.

Every process the action starts is kept in its Box (containment.py: a cgroup where one can be
made, else a mark its processes inherit, the subreaper and the session), so the timeout ends all of
them -- setsid'd, double-forked, or forked while being killed -- and goes on until none is left.
Deadlines and durations are on the monotonic clock, and an action's exit is read before its
deadline is judged.
"""

from __future__ import annotations

TYPE_CHECKING = False

import os
import select
import signal
import time

from notify_launcher import security
from notify_launcher.containment import Box
from notify_launcher.journal import Entry

MAX_OUTPUT_LINE = 4096

if TYPE_CHECKING:
    from collections.abc import Callable

    Output = Callable[[str, str], None]  # (stream name, line)
    Note = Callable[[str], None]

TICK = 1.0  # s: the longest wait while an action runs, so a stall of the worker is seen (and said)
STALL = 1.0  # s: a wait that returns this much later than asked means the worker was not scheduled
LISTED = 20  # processes named in one log line


class Result:
    """How an action ended.  `error` is set when it could not be started at all."""

    __slots__ = ("exit_code", "signal", "duration", "timed_out", "error", "stalled")

    def __init__(self, exit_code: int | None, signal: int | None, duration: float, timed_out: bool = False,
                 error: str | None = None, stalled: float = 0.0) -> None:
        self.exit_code, self.signal, self.duration, self.timed_out = exit_code, signal, duration, timed_out
        self.error = error
        self.stalled = stalled  # s the worker was not scheduled while it ran (the duration includes them)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def describe(self) -> str:
        if self.error is not None:
            return f"could not start: {self.error}"
        if self.signal is not None:
            how = f"killed by {signal_name(self.signal)}"
        else:
            how = f"exit {self.exit_code}"
        return f"timed out, {how}" if self.timed_out else how


def signal_name(signum: int) -> str:
    """SIGTERM, SIGRTMIN+6, or "signal 99": any number a wait status can carry has a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        pass
    if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    return f"signal {signum}"


class Child:
    """A spawned action: its pid, a pidfd to wait on, and its exit status once reaped.

    Spawned with posix_spawn where it can be (`spawn`, posixspawn.py), not subprocess.Popen: two
    thirds of the worker's CPU per spawn and ~60 us less before the action runs (benchmarks/README.md);
    the worker is the only one who reaps it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None  # as subprocess has it: -N for a death by signal N

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self.pidfd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status; None if it still runs after `timeout` s."""
        if self.returncode is None:
            select.select([self.pidfd], [], [], timeout)
        return self.poll()

    def send(self, signum: int) -> None:
        """Safe by pid: until we reap it, the pid cannot name another process."""
        if self.returncode is None:
            os.kill(self.pid, signum)


def _name(pid: int) -> str:
    try:
        import psutil  # here: a worker's first spawn must not wait for its import (~15 ms)
    except ImportError:  # a half-installed system: say so where the name would be, go on
        return "? (psutil is not installed)"
    try:
        p = psutil.Process(pid)
        return " ".join(p.cmdline())[:200] or p.name()
    except psutil.Error:
        return "?"


#: What a finished action left running is released: no longer its tree (README, docs/invariants.md).
RELEASED = "left running in the background (released: not killed, no longer contained)"
#: The same, when they could not be moved out of the action's cgroup: it is left to them (no later
#: timeout reaches it) and the next action runs in a new one, so for docs/invariants.md §2 it is alike.
KEPT = "left running in the background (not killed; not moved out of the action's cgroup"


def _describe(pid: int) -> str:
    name = _name(pid)
    return f"{pid} ({'gone' if name == '?' else name})"


class _Budget:
    """The bytes of output one action may still put into the log (output_limit, both streams
    together), and how many more it wrote: the log is root's disk, the output may be anyone's."""

    def __init__(self, limit: int) -> None:
        self.left, self.dropped = limit, 0

    def take(self, size: int) -> bool:
        """Whether `size` more bytes are logged; once one is not, nothing more is."""
        if self.dropped or size > self.left:
            self.left, self.dropped = 0, self.dropped + size
            return False
        self.left -= size
        return True


class _Lines:
    """Splits a stream's bytes into log lines (long lines are cut at MAX_OUTPUT_LINE); past the
    budget, bytes are only counted (the pipe is still drained: the action never blocks on it)."""

    def __init__(self, name: str, output: Output, budget: _Budget) -> None:
        self.name, self.output, self.budget, self.buf = name, output, budget, b""

    def feed(self, data: bytes) -> None:
        if self.budget.dropped:
            self.budget.dropped += len(data)
            return
        self.buf += data
        while True:
            cut = self.buf.find(b"\n")
            if cut < 0:
                if len(self.buf) < MAX_OUTPUT_LINE:
                    return
                cut = MAX_OUTPUT_LINE
            end = cut + 1 if self.buf[cut:cut + 1] == b"\n" else cut
            if self.budget.take(end):
                self.output(self.name, self.buf[:cut].decode("utf-8", "backslashreplace").rstrip("\r"))
                self.buf = self.buf[end:]
            else:
                self.budget.dropped += len(self.buf) - end
                self.buf = b""
                return

    def flush(self) -> None:
        if self.buf and self.budget.take(len(self.buf)):
            self.output(self.name, self.buf.decode("utf-8", "backslashreplace"))
        self.buf = b""


def end_tree(proc: Child, box: Box, grace: float, note: Note) -> None:
    """SIGTERM the action, then every other process of its (the box's); after `grace` s SIGKILL
    the action, then whatever else is left, and go on killing what they forked meanwhile until
    nothing is left.

    The action itself is awaited through its Child handle, so its own exit status is not lost."""
    box.isolate()  # the worker out of the action's cgroup before anything in it is killed
    others = sorted(box.members() - {proc.pid})
    listed = _listed([proc.pid, *others], named=True)  # named while they live (psutil's import may come first)
    proc.send(signal.SIGTERM)  # the action first: a script whose child died first would run on (its next line)
    for pid in others:
        _signal(pid, signal.SIGTERM)
    note("sent SIGTERM to " + listed)
    deadline = time.monotonic() + grace
    proc.wait(timeout=grace)
    box.wait_gone(others, max(0.0, deadline - time.monotonic()))
    alive = proc.poll() is None
    proc.send(signal.SIGKILL)  # first: an action that forks on cannot add to what is killed next
    survivors = ([proc.pid] if alive else []) + sorted(box.members() - {proc.pid})
    if survivors:
        note("still alive after the grace, sent SIGKILL to " + _listed(survivors))
    box.end(note)  # until nothing is left: also what was forked while we looked


def _listed(pids: list[int], named: bool = False, most: int = LISTED) -> str:
    """The first `most` pids (the first one bare, the others with their command lines if `named`),
    and how many more: a fork bomb's thousands of processes make no log line of megabytes."""
    shown = [str(pids[0]), *(_describe(p) if named else str(p) for p in pids[1:most])] if pids else []
    return ", ".join(shown) + (f" and {len(pids) - most} more" if len(pids) > most else "")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def event_env(entry: Entry, base: dict[str, str]) -> dict[str, str]:
    """The environment of an event's action (and of its on_failure): `base`, plus the event's fields."""
    e = entry.event
    return dict(base, NL_TYPE=e.type, NL_NAME=e.name, NL_STATE=e.state, NL_PRIORITY=str(e.priority),
                NL_SEQ=str(entry.seq), NL_VS=e.vs)


def reap_zombies() -> None:
    """Collect exited orphans the worker inherited as a subreaper.  Called before an action starts,
    when no action of ours is awaited (its Child handle reaps it), so any exited child may go."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


#: Every signal an action starts with at its default disposition: all but SIGKILL and SIGSTOP (they
#: have no other), the C library's internal 32 and 33 too.  An ignored signal stays ignored across
#: fork and exec: what the worker ignores (SIGPIPE, SIGHUP), what was ignored where keepalived or a
#: shell started the launcher (SIGQUIT, SIGUSR1...), and what glibc's posix_spawn ignores in its child.
_DEFAULT_SIGNALS = tuple(signum for signum in range(1, signal.NSIG) if signum not in (signal.SIGKILL, signal.SIGSTOP))


def spawn(argv: list[str], env: dict[str, str], ids: tuple[int, int] | None = None,
          into: int | None = None) -> tuple[Child, int, int]:
    """Start `argv` in a session of its own, stdin /dev/null, stdout and stderr into two pipes, as
    (uid, gid) `ids` if given, in the cgroup whose directory `into` (an fd) is if given (else in
    ours); (the child, the pipes' read ends).  Raises OSError if it cannot be executed, and
    clone.CloneFailed if it could not be started in `into` (nothing was started)."""
    env = nul_free(env)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    fds = [(devnull, 0), (out_w, 1), (err_w, 2)]
    try:
        if ids is None and into is None:
            from notify_launcher import posixspawn  # (ctypes: loaded already where cgroups are used)
            pid = posixspawn.spawn(argv, env, fds, _DEFAULT_SIGNALS)
        else:
            pid = _fork_exec(argv, env, fds, ids, into)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        for fd in (devnull, out_w, err_w):
            os.close(fd)
    return Child(pid), out_r, err_r


def nul_free(env: dict[str, str]) -> dict[str, str]:
    """`env` with each NUL written as `\\x00`, as the log shows it: values made from an action's
    output (NL_OUTPUT, NL_DETAIL) may hold any byte, and one NUL would make exec refuse the whole
    environment (ValueError), so the command -- on_failure, the alert -- would never run."""
    if not any("\0" in value for value in env.values()):
        return env
    return {name: value.replace("\0", "\\x00") for name, value in env.items()}


def _fork_exec(argv: list[str], env: dict[str, str], fds: list[tuple[int, int]], ids: tuple[int, int] | None,
               into: int | None) -> int:
    """What posix_spawn cannot: a child as another user, or born in another cgroup.  Fork (os.fork(),
    or clone.fork_into the cgroup `into`), then in the child what `spawn`'s posix_spawn does -- its
    own session, the three fds, every signal ignored back at default (a handler is reset by the
    exec; the C library refuses its internal signals, which keep the worker's disposition: ignored
    only if whoever started the launcher had them ignored), an empty signal mask --
    and for `ids` what keepalived does for a directive's user (set_script_env: setgid, setgroups
    to that one group, setuid) and cwd /; then exec.  The child runs Python until the exec: the
    worker's one other thread holds no lock across a fork (clone.py).  An exec failure comes back
    as its errno through a close-on-exec pipe, as subprocess does it."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        if into is None:
            pid = os.fork()
        else:
            from notify_launcher import clone  # imported already: the worker's probe (containment.py)
            pid = clone.fork_into(into)
    except BaseException:
        os.close(report_r)
        os.close(report_w)
        raise
    if pid == 0:  # the child: it never returns
        code = 0
        try:
            os.setsid()
            for fd, target in fds:
                os.dup2(fd, target)  # the copy is not close-on-exec
            for signum in _DEFAULT_SIGNALS:
                if signal.getsignal(signum) == signal.SIG_IGN:
                    try:
                        signal.signal(signum, signal.SIG_DFL)
                    except OSError:  # EINVAL: one the C library keeps for itself
                        pass
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            if ids is not None:
                uid, gid = ids
                os.setgid(gid)
                os.setgroups([gid])
                os.setuid(uid)
                os.chdir("/")
            os.execve(argv[0], argv, env)
        except OSError as exc:
            code = exc.errno or 0
        finally:
            os.write(report_w, str(code).encode())
            os._exit(127)
    os.close(report_w)
    try:
        report = b""
        while True:
            data = os.read(report_r, 64)
            if not data:
                break
            report += data
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        code = int(report)
        raise OSError(code, os.strerror(code))
    return pid


def run_action(argv: list[str], env: dict[str, str], timeout: float, kill_grace: float, output: Output,
               note: Note, started: Callable[[int], None], box: Box, output_limit: int,
               ids: tuple[int, int] | None = None) -> Result:
    """Run `argv` (as (uid, gid) `ids` if given) to completion or timeout, its processes kept in
    `box` (containment.py); report output lines (the first `output_limit` bytes; the rest counted
    in one note) and facts through the callbacks (`started(pid)` right after the spawn).  As root, a command someone else could have changed since the reader
    checked it is not run: that is the event's failure (security.py; the user it runs as may own it)."""
    refused = security.command_problem(argv, user=security.ROOT if ids is None else ids[0])
    if refused is not None:
        return Result(None, None, 0.0, error=refused)
    reap_zombies()
    t0 = time.monotonic()
    try:
        proc, out, err = box.spawn(lambda into: spawn(argv, box.environment(env), ids, into))
    except OSError as exc:
        return Result(None, None, time.monotonic() - t0, error=f"{argv[0]}: {exc.strerror}")
    box.started(proc.pid)
    try:
        budget = _Budget(output_limit)
        timed_out, stalled = _supervise(proc, {out: _Lines("out", output, budget), err: _Lines("err", output, budget)},
                                        box, t0, timeout, kill_grace, note, started)
    except BaseException:
        # Whatever failed on our side (a callback, the log, a full disk), the action must not run
        # on unsupervised: end its tree before the error becomes this event's failure.
        end_tree(proc, box, kill_grace, note)
        proc.wait()
        raise
    finally:
        os.close(out)
        os.close(err)
    duration = time.monotonic() - t0
    if budget.dropped:
        note(f"output truncated: {budget.dropped} more bytes not logged (output_limit {output_limit})")
    leftovers = box.leftovers(release=not timed_out)
    if leftovers and not timed_out:
        kept = "" if box.unreleased is None else f"{KEPT}: {box.unreleased})"
        note(f"{kept or RELEASED}: " + ", ".join(map(_describe, leftovers)))
    rc = proc.returncode
    assert rc is not None
    return Result(rc if rc >= 0 else None, -rc if rc < 0 else None, duration, timed_out, stalled=stalled)


def _supervise(proc: Child, streams: dict[int, _Lines], box: Box, t0: float, timeout: float,
               kill_grace: float, note: Note, started: Callable[[int], None]) -> tuple[bool, float]:
    """Report the start, relay the output, enforce the timeout; (timed out, seconds the worker was
    not scheduled meanwhile).  A finished action's exit is read before its deadline is judged: a
    worker that was stopped past the deadline (SIGSTOP, a frozen cgroup, a paused VM) records what
    the action did, and says it was stalled."""
    started(proc.pid)
    poller = select.poll()  # no fd of its own to make and close per action, unlike epoll
    for fd in streams:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    poller.register(proc.pidfd, select.POLLIN)
    deadline = t0 + timeout
    timed_out, stalled = False, 0.0
    while True:
        wait = min(TICK, max(0.0, deadline - time.monotonic()))
        asked = time.monotonic() + wait
        ready = poller.poll(int(wait * 1000) + 1)
        now = time.monotonic()
        if now - asked > STALL:
            stalled += now - asked
        if any(fd == proc.pidfd for fd, _ in ready):
            break
        for fd, _ in ready:
            if not _read(fd, streams[fd]):
                poller.unregister(fd)
        if now >= deadline:
            if proc.poll() is not None:
                break  # it had ended (a signal's EINTR after the deadline returns no fd at all)
            timed_out = True
            note(f"timeout of {timeout:g}s reached; ending the action's process tree")
            end_tree(proc, box, kill_grace, note)
            break
    proc.wait()
    for fd, lines in streams.items():  # what is still buffered; background writers are not awaited
        _read(fd, lines)
        lines.flush()
    if stalled:
        note(f"the worker was not scheduled for {stalled:.1f}s while the action ran (stopped, a frozen "
             f"cgroup, a paused VM): its result is the action's own, its duration includes that time")
    return timed_out, stalled


def _read(fd: int, lines: _Lines) -> bool:
    """Read what is available; False at end of stream."""
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        lines.feed(data)
