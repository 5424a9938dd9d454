"""The one process scanner: a setup's processes are those whose command line names its directory
(readers and workers get the setup's paths as arguments), and their descendants (actions' children).

`scan` reads /proc directly (cheap enough for the benchmarks' sampler to call it every few ms);
`find` and `family` give psutil objects; `end_all` is every setup's teardown: by PID, never by name.
A zombie counts as gone everywhere: its command line is empty, and init reaps orphans when it likes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from notify_launcher import identity, locks


def scan(needle: str) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every live process but this one whose command line contains `needle`."""
    me, raw_needle, out = os.getpid(), needle.encode(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        if raw_needle in raw:  # a zombie's (or an exiting process's) command line is empty
            out.append((int(name), [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]))
    return out


def find(needle: str) -> list[psutil.Process]:
    """`scan`, as psutil processes (those that have not gone meanwhile)."""
    out = []
    for pid, _ in scan(needle):
        try:
            out.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return out


def family(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """`procs` and all their descendants (each once)."""
    found = {p.pid: p for p in procs}
    for p in list(found.values()):
        try:
            for c in p.children(recursive=True):
                found.setdefault(c.pid, c)
        except psutil.Error:
            pass
    return list(found.values())


def ppid(pid: int) -> int:
    """The parent of `pid` (0: gone)."""
    st = identity.stat(pid)
    return 0 if st is None else st.ppid


def running(p: psutil.Process | int) -> bool:
    """The process exists and has a live thread (identity.lives: a zombie main thread with others
    running on counts as running)."""
    try:
        proc = p if isinstance(p, psutil.Process) else psutil.Process(p)
        return bool(proc.is_running() and identity.lives(proc.pid))
    except psutil.Error:
        return False


def with_pid(pid: int, mark: Path, cgroup: str | None = None) -> subprocess.Popen[bytes]:
    """A new process that gets `pid` (free now), as pid reuse would give it: ns_last_pid is set just
    below it before the fork, again when another fork on this machine took it first (root only).
    It sleeps, in the cgroup v2 directory `cgroup` if given (moved there before it execs); its
    command line names `mark` (the setup's dir), so the launcher fixture ends it."""
    sleep = [sys.executable, "-c", "import time; time.sleep(600)", str(mark)]
    argv = sleep if cgroup is None else ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, *sleep]
    for _ in range(500):
        with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
            fh.write(str(pid - 1))
        proc = subprocess.Popen(argv)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    raise AssertionError(f"could not start a process with pid {pid}: other forks took it 500 times")


def holds_lock(pid: int, path: Path) -> bool:
    """`pid` holds the flock on the file `path` (a process queued for it does not)."""
    holder = locks.lock_holder(str(path))
    return holder is not None and holder.pid == pid


def kill(procs: Iterable[psutil.Process], sig: int = signal.SIGKILL) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Wait (at most `timeout`) until none of `procs` runs; a zombie counts as gone."""
    deadline = time.monotonic() + timeout
    while any(running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)


def end_all(needle: str, term_grace: float = 0.0, timeout: float = 30.0) -> None:
    """End every process `scan(needle)` finds, and their descendants, by PID: SIGTERM first when
    `term_grace` is given (and that long to leave), then SIGKILL.  Repeated while processes started
    meanwhile (a worker, an action) show up, for at most `timeout`."""
    deadline = time.monotonic() + timeout
    term = term_grace > 0
    while (procs := family(find(needle))) and time.monotonic() < deadline:
        if term:
            kill(procs, signal.SIGTERM)
            wait_gone(procs, term_grace)
            term = False
        kill(procs)
        wait_gone(procs, 5)



def open_files(pid: int) -> set[str]:
    """What `pid`'s descriptors point at now (/proc/PID/fd)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    out = set()
    for name in names:
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return out

def catches_sigterm(pid: int) -> bool:
    """`pid` has a SIGTERM handler (SigCgt in /proc/PID/status): for a reader, cli's early one,
    installed right after its starter is noted, long before its loop."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            caught = next(int(line.split()[1], 16) for line in fh if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def traced(pid: int) -> bool:
    """A tracer (strace) is attached to `pid`."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in fh)
    except OSError:
        return False


def hold_first_read(pid: int, usec: int) -> subprocess.Popen[bytes]:
    """Attach strace to `pid` so that its next read(2) returns only `usec` microseconds after the kernel
    took the bytes (a reader that read lines, then lost the CPU before it journaled them); returns
    once attached.  The tracer ends with the process: wait() for it."""
    return _attached(pid, ["-e", "trace=read", "-e", f"inject=read:delay_exit={usec}:when=1"])


def delay_exits(pid: int, syscall: str, path: str, usec: int, when: str = "") -> subprocess.Popen[bytes]:
    """Attach strace to `pid` so that its `syscall`s on `path` (no other file's) return `usec`
    microseconds after they took effect (the process then did not run: no CPU, or a slow disk);
    `when`: which of them (strace's `when=`, e.g. "1": the first; default: all).  Returns once
    attached; wait() for the tracer once the process is gone."""
    step = f":when={when}" if when else ""
    return _attached(pid, ["-P", path, "-e", f"trace={syscall}", "-e", f"inject={syscall}:delay_exit={usec}{step}"])


def stop_after(pid: int, syscall: str, path: str, when: str = "1") -> subprocess.Popen[bytes]:
    """Attach strace to `pid` so that it stops (SIGSTOP, injected as the call enters; a stop takes
    effect once it returns) at its `syscall` number `when` on `path`: the call took effect, then
    the process did not run.  Returns once attached; see resume_once_pending."""
    return _attached(pid, ["-P", path, "-e", f"trace={syscall}", "-e", f"inject={syscall}:signal=SIGSTOP:when={when}"])


def resume_once_pending(pid: int, tracer: subprocess.Popen[bytes], signum: int) -> None:
    """Once `pid` is stopped with `signum` pending (it came while the process did not run: for a
    reader, SIGALRM, its stop window's deadline), detach `tracer` and let `pid` run on, at full
    speed (SIGCONT).  Gives up after 30 s (the caller's assertions say what happened)."""
    deadline = time.monotonic() + 30
    while not (_stopped(pid) and _pending(pid, signum)):
        if time.monotonic() > deadline or not running(pid):
            return
        time.sleep(0.0005)
    tracer.terminate()
    tracer.wait(timeout=30)
    os.kill(pid, signal.SIGCONT)


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    except OSError:
        return {}


def _stopped(pid: int) -> bool:
    return _status(pid).get("State", "")[:1] in ("T", "t")


def _pending(pid: int, signum: int) -> bool:
    """`signum` is pending for `pid` (its own, or its thread group's)."""
    status = _status(pid)
    return any(int(status.get(key, "0"), 16) & (1 << (signum - 1)) for key in ("SigPnd", "ShdPnd"))


def _attached(pid: int, options: list[str]) -> subprocess.Popen[bytes]:
    tracer = subprocess.Popen(["strace", "-qq", "-p", str(pid), "-o", "/dev/null", *options])
    deadline = time.monotonic() + 30
    while not traced(pid):
        if tracer.poll() is not None or time.monotonic() > deadline:
            tracer.kill()
            raise RuntimeError(f"strace could not attach to {pid}")
        time.sleep(0.001)
    return tracer


_OPENAT = {"x86_64": 257, "aarch64": 56}  # the openat syscall's number, per machine


def opening(pid: int, path: str) -> bool:
    """`pid` is stopped or blocked in openat(2) of `path` (/proc/PID/syscall: its number and
    arguments; the path read from its memory): e.g. held there by strace's delay injection."""
    try:
        with open(f"/proc/{pid}/syscall") as fh:
            fields = fh.read().split()
        if not fields or fields[0] != str(_OPENAT.get(os.uname().machine)):
            return False
        want = os.fsencode(path) + b"\0"
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(int(fields[2], 16))
            return mem.read(len(want)) == want
    except (OSError, ValueError, IndexError):
        return False
