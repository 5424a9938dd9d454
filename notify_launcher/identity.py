"""Which process is which: a pid and the kernel's start time of the process holding it.

Pids are reused, so a pid alone names whoever holds it *now*.  Every "is this still the same
process" in the launcher -- the worker named by worker.pid, the reader that rang the doorbell, the
worker that started a running action -- compares the pid's start time in clock ticks since boot
(field 22 of /proc/PID/stat) with the one recorded.  That number is set by the kernel at fork and
never moves: unlike psutil's `create_time` (boot time plus ticks, on the wall clock) it cannot
drift with an NTP step or a resumed VM, so no decision here depends on the wall clock.

A child's start time can also be bracketed without reading /proc while it execs: the kernel takes
it from CLOCK_BOOTTIME at fork, so `ticks()` read before and after a spawn encloses it
(`started_between`).  That is how the worker names the action it spawns.

Read from /proc directly, not through psutil: the reader uses this and must stay light.
"""

from __future__ import annotations

import os
import time

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_TICK_NS = 1_000_000_000 // TICKS_PER_SECOND


class ProcessId(tuple[int, int]):
    """A process as recorded: `start` tells it from a later process that was given its pid.  The
    pair (pid, start) itself, as callers compare, format and unpack it; a tuple subclass, not a
    typing.NamedTuple: typing costs the reader's start ~3 ms to import."""

    __slots__ = ()

    def __new__(cls, pid: int, start: int) -> ProcessId:
        return tuple.__new__(cls, (pid, start))

    def __getnewargs__(self) -> tuple[int, int]:  # copy and pickle call __new__ with these
        return (self[0], self[1])

    @property
    def pid(self) -> int:
        return self[0]

    @property
    def start(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return f"ProcessId(pid={self[0]!r}, start={self[1]!r})"


class ProcStat:
    """The fields of /proc/PID/stat the launcher needs."""

    __slots__ = ("ppid", "start", "pgrp", "state", "session")

    def __init__(self, ppid: int, start: int, pgrp: int, state: str, session: int) -> None:
        self.ppid, self.start, self.pgrp, self.session = ppid, start, pgrp, session
        self.state = state  # "Z": a zombie, dead but not reaped yet; "T": stopped (SIGSTOP); "t": traced


def stat(pid: int) -> ProcStat | None:
    """Parent, start time, process group, state and session of `pid`; None if there is no such process (or
    /proc cannot say).  The command name may hold spaces and parentheses: the fields start after
    its last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return ProcStat(int(fields[1]), int(fields[19]), int(fields[2]), fields[0].decode(), int(fields[3]))
    except (OSError, IndexError, ValueError, OverflowError):
        return None


def running(pid: int, state: str) -> bool:
    """Whether `pid`, whose /proc/PID/stat shows `state`, has a thread that runs.  That state is the
    main thread's: "Z" as soon as *it* exits, while the process runs on in its other threads (a
    daemon whose main() called pthread_exit) -- then /proc/PID/status counts more threads than that
    zombie one.  Every "does this process still live" in the launcher asks this."""
    if state not in ("Z", "X"):
        return True
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1]) > 1
    except (OSError, IndexError, ValueError):
        pass
    return False


def lives(pid: int, start: int | None = None) -> bool:
    """`pid` is a live process (running) -- the one that started at `start` if that is given, not a
    later one that was given its pid."""
    st = stat(pid)
    return st is not None and (start is None or st.start == start) and running(pid, st.state)


def of(pid: int) -> ProcessId | None:
    """`pid` as it is now; None if there is no such process."""
    st = stat(pid)
    return None if st is None else ProcessId(pid, st.start)


def me() -> ProcessId:
    """This process.  /proc/self always exists for a running process, unless /proc is not mounted:
    then the start is 0 and no later comparison can match it (nothing is acted on by mistake)."""
    pid = os.getpid()
    st = stat(pid)
    return ProcessId(pid, st.start if st is not None else 0)


def is_running(ident: ProcessId) -> bool:
    """The recorded process is the one now running under that pid (not a later one that reuses it)."""
    st = stat(ident.pid)
    return st is not None and st.start == ident.start


def ticks() -> int:
    """Now, as a start time: a process forked after this call has a start time >= its result, one
    forked before the call a start time <= it (the kernel's nsec_to_clock_t of CLOCK_BOOTTIME)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _TICK_NS


def age(pid: int) -> float | None:
    """How long ago, at least, `pid` started (s; its start time is whole clock ticks, rounded down):
    None if there is no such process."""
    st = stat(pid)
    return None if st is None else max(0.0, (ticks() - st.start - 1) / TICKS_PER_SECOND)


def started_between(pid: int, first: int, last: int) -> bool:
    """`pid` is the process spawned between `ticks()` calls that returned `first` and `last`, not a
    later one that was given its pid."""
    st = stat(pid)
    return st is not None and first <= st.start <= last
