"""The Unix steps that make a process a daemon out of keepalived's reach, one function each.

keepalived ends its notify_fifo_script with SIGTERM and, one second later, SIGKILL to the script's
process group, and stops its VRRP child (the script's parent) too.  A worker must therefore be in
another session and process group, owe nothing to the reader's file descriptors, and not depend on
its parent.  Each function below is one of those requirements; the reader only pays for the
first fork.  (The systemd path, systemd_unit.py, uses the first two steps for its helper.)
"""

from __future__ import annotations

TYPE_CHECKING = False

import os
from types import ModuleType

from notify_launcher.errors import EXIT_SOFTWARE

if TYPE_CHECKING:
    from collections.abc import Callable


def spawn_detached(target: Callable[[], int], keep_fds: list[int], report: Callable[[Exception], None]) -> int:
    """The classic double fork, the reader's own fork being the first: fork; the child leaves the
    process group (setsid) and forks again, exiting at once; the grandchild finishes daemonizing with
    python-daemon (keeping `keep_fds` open) and runs `target`.  Returns the child's pid at once.
    Whatever any step raises goes to `report`: stderr is /dev/null by then (keepalived's, then
    python-daemon's), so without it a worker that cannot start (an import, a library's API) would
    die without a word and the queue would just stop.

    Only three processes exist at any moment (reader, exiting child, worker), where DaemonContext's own
    double fork after ours would make four.  The reader ignores SIGCHLD, so the kernel reaps the
    child: the reader never waits.
    """
    pid = os.fork()
    if pid:
        step_aside(pid)
        return pid
    status = EXIT_SOFTWARE  # if anything below raises
    try:
        leave_process_group()
        if os.fork():
            os._exit(0)  # the worker is not a session leader: it can never gain a controlling terminal
        reset_signals()
        close_inherited(keep_fds)
        ensure_standard_fds()
        daemonize(keep_fds)
        status = target()
    except Exception as exc:
        report(exc)
    finally:
        # Never return into the reader's code, never run its atexit handlers or flush its buffers.
        os._exit(status)


def step_aside(child: int) -> None:
    """Leave the CPU the kernel queued our new `child` on.  A forked child starts on its parent's CPU
    and waits there behind the parent (cache-hot) even while another CPU idles, so the worker's
    start-up would follow the rest of the reader's instead of running beside it (a perf sched trace
    of the first event at start: reader, its child and the worker all on CPU 0; CPU 1 idle).  The
    parent moves, not the child: pinned to the other CPUs, the kernel migrates us before the call
    returns, and our own mask, given back at once, leaves us there -- the child's is never touched,
    so no action ever inherits a narrowed one.  Nothing to do where only one CPU is allowed."""
    try:
        allowed = os.sched_getaffinity(0)
        with open(f"/proc/{child}/stat", "rb") as fh:
            queued_on = int(fh.read().rsplit(b")", 1)[1].split()[36])  # field 39, `processor`
        others = allowed - {queued_on}
        if others and others != allowed:
            try:
                os.sched_setaffinity(0, others)
            finally:
                os.sched_setaffinity(0, allowed)
    except (OSError, ValueError, IndexError):
        pass  # (the child gone already, no /proc, a CPU set changed under us: only a start-up overlap lost)


def drain(fd: int) -> None:
    """Empty a non-blocking pipe (a signal wakeup fd): what it held only had to wake poll()."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def leave_process_group() -> None:
    """First thing: keepalived signals the reader's whole process group (TERM, then KILL at +1 s).
    Until this call the child is in that group; it still has the reader's Python SIGTERM handler,
    which only sets a flag, so a TERM arriving before this point is harmless."""
    os.setsid()


def reset_signals() -> None:
    """Undo the reader's signal setup: SIGCHLD must be default again or subprocess cannot wait for
    actions (waitpid fails with ECHILD and exit codes are lost); the reader's SIGTERM handler and
    wakeup fd belong to the reader.  SIGPIPE stays ignored: the hello to a reader that was killed
    meanwhile must fail with EPIPE, not kill the worker.  (`signal` imported here: the reader imports
    this module, through turn.py, before cli catches SIGTERM, and `signal` brings enum, ~4.5 ms.)"""
    import signal

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Python's default: a reader gone must be EPIPE, not death
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def close_inherited(keep_fds: list[int]) -> None:
    """Close the reader's fds (all but stdio and `keep_fds`) at once, not only in python-daemon's open()
    after its import (~5 ms), nor never, in a systemd unit's helper that lives up to TAKEOVER_WAIT:
    a fork holding the FIFO is a reader end that never reads, and one holding the reader's flock on
    its read turn (turn.py) holds back the next reader if the reader is killed meanwhile."""
    keep = sorted({0, 1, 2, *keep_fds})
    above = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1  # (none above the highest open now)
    for low, high in zip(keep, [*keep[1:], above]):
        os.closerange(low + 1, high)


def ensure_standard_fds() -> None:
    """python-daemon redirects fds 0-2 with dup2 and fails if one of them is closed; an exotic parent
    may have closed them (keepalived gives /dev/null)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def daemonize(keep_fds: list[int]) -> None:
    """python-daemon does the rest of what a daemon owes Unix (the forks and setsid are done): chdir /
    (no mount kept busy), every inherited fd closed (the FIFO, the reader's log, the journal) but
    `keep_fds`, stdio on /dev/null, a sane umask.

    umask: python-daemon's default is 0, which would make world-writable files; 0o077 keeps
    everything private (files that must be shared are created with explicit modes)."""
    import daemon  # only workers pay for this import

    trim_fd_set(daemon.daemon)
    context = daemon.DaemonContext(umask=0o077, working_directory="/", detach_process=False,
                                   prevent_core=False, signal_map={}, files_preserve=keep_fds)
    context.open()


def trim_fd_set(module: ModuleType) -> None:
    """python-daemon 2.3.2 (Debian 12's) builds at import, and keeps for the process's whole life, a
    set of every fd number below the HARD RLIMIT_NOFILE (`daemon.daemon._total_file_descriptor_set`);
    open() sorts what of it is not kept, to close those fds.  Under systemd that limit is 524,288:
    ~40 MB stay resident in a worker that stands by for days, and open() takes ~65 ms more.  No fd
    above the highest one open now can be open, so the set cut down to that closes the same fds.

    python-daemon >= 3.0 keeps a range instead: nothing to do.  The import still builds the big set
    once (30-44 ms; ~1.3 MB of it stays with the allocator); lowering the hard limit around the import
    would spare that too, but only CAP_SYS_RESOURCE can give the actions their limit back, and root
    in a container (this project's test machines too) lacks it.  Figures: README, "Dependency floors"."""
    fds = getattr(module, "_total_file_descriptor_set", None)
    if isinstance(fds, set):
        fds.intersection_update(range(max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1))
