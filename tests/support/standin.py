"""A keepalived stand-in: does to a notify_fifo_script what keepalived 2.2.7 does (docs/keepalived.md).

- creates the FIFO (mode 0600) and starts the script with the FIFO as the LAST argument, in its
  own process group, stdio on /dev/null, umask 0177, parent-death signal SIGTERM;
- then opens the FIFO O_RDWR|O_NONBLOCK and writes each line with one non-blocking write: when
  the pipe is full the line is dropped, as keepalived drops it (counted in `dropped`);
- stop: SIGTERM to the group, the STOP lines ~5 ms later, SIGKILL to the group at +1 s;
- reload: SIGTERM + EOF (FIFO closed and unlinked), a new FIFO (new inode) and a new script ~20 ms
  later, SIGKILL to the old group at +1 s.

Used by the tests, the demo and the benchmarks (support.standin); a command line too:
`python tests/support/standin.py --help`.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
KILL_AFTER = 1.0


def _child_setup() -> None:
    os.setpgid(0, 0)  # keepalived runs the script in a process group of its own (Popen's process_group is 3.11+)
    os.umask(0o177)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class StopReport:
    """What happened to the script during a stop: when it exited, whether SIGKILL was needed."""

    exit_after: float  # seconds from SIGTERM to the script's exit
    killed: bool
    returncode: int | None


class Keepalived:
    def __init__(self, script: list[str], fifo: str) -> None:
        self.script, self.fifo = script, fifo
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd = -1
        self.written = 0
        self.dropped = 0
        self.lines: list[str] = []  # every line written whole (the invariants checker expects each journaled)
        self.stops = 0  # stop() calls: each must journal a STOP (support.invariants)

    def start(self) -> None:
        try:
            os.unlink(self.fifo)
        except FileNotFoundError:
            pass
        os.mkfifo(self.fifo, 0o600)
        self._spawn()
        self.fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.script + [self.fifo], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_child_setup, close_fds=True)

    def write(self, line: str) -> bool:
        """One non-blocking write, as keepalived does; False (and counted) if the pipe was full."""
        try:
            os.write(self.fd, line.encode() + b"\n")
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            self.dropped += 1
            return False
        self.written += 1
        self.lines.append(line)
        return True

    def write_raw(self, data: bytes, timeout: float = 30) -> None:
        """Write bytes as they are (garbage tests), waiting while the pipe is full: unlike keepalived."""
        deadline = time.monotonic() + timeout
        while data:
            try:
                data = data[os.write(self.fd, data):]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the reader stopped reading the FIFO") from None
                time.sleep(0.001)

    def _term_then_kill(self) -> tuple[subprocess.Popen[bytes], float]:
        assert self.proc is not None
        proc, t0 = self.proc, time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        return proc, t0

    def stop(self, stop_lines: list[str], delay: float = 0.005) -> StopReport:
        """keepalived's shutdown: TERM to the group, STOP lines after it, KILL to the group at +1 s."""
        proc, t0 = self._term_then_kill()
        self.stops += 1
        time.sleep(delay)
        for line in stop_lines:
            self.write(line)
        report = _await_or_kill(proc, t0)
        os.close(self.fd)
        self.fd = -1
        os.unlink(self.fifo)
        return report

    def reload(self, same_fifo: bool = False) -> threading.Thread:
        """keepalived's reload: TERM + EOF to the old script, a new FIFO and script ~20 ms later.
        `same_fifo`: the new script gets the very same FIFO, still held open (keepalived reuses a FIFO
        that survived, docs/keepalived.md "Reload"): the old script sees no EOF.

        Returns the thread that SIGKILLs the old group at +1 s (join it to know the old one's fate)."""
        proc, t0 = self._term_then_kill()
        if not same_fifo:
            os.close(self.fd)
            os.unlink(self.fifo)
        killer = threading.Thread(target=_await_or_kill, args=(proc, t0), daemon=True)
        killer.start()
        time.sleep(0.02)
        if same_fifo:
            self._spawn()
        else:
            self.start()
        return killer


def _await_or_kill(proc: subprocess.Popen[bytes], t0: float) -> StopReport:
    try:
        proc.wait(timeout=max(0.0, t0 + KILL_AFTER - time.monotonic()))
        return StopReport(time.monotonic() - t0, False, proc.returncode)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return StopReport(time.monotonic() - t0, True, proc.returncode)


def main() -> None:
    p = argparse.ArgumentParser(description="Drive a notify_fifo_script as keepalived would.")
    p.add_argument("--fifo", required=True)
    p.add_argument("--line", action="append", default=[], help="line to write after start (repeatable)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between lines")
    p.add_argument("--stop-line", action="append", default=[], help="STOP line written after SIGTERM")
    p.add_argument("script", nargs=argparse.REMAINDER, help="the notify_fifo_script command")
    args = p.parse_args()
    k = Keepalived(args.script, args.fifo)
    k.start()
    for line in args.line:
        print(f"keepalived stand-in: writing {line}", flush=True)
        k.write(line)
        time.sleep(args.interval)
    print("keepalived stand-in: stopping (SIGTERM to the script's group, then STOP lines)", flush=True)
    report = k.stop(args.stop_line)
    fate = "was SIGKILLed at +1 s" if report.killed else f"exited {report.exit_after * 1000:.0f} ms after SIGTERM"
    print(f"keepalived stand-in: the reader {fate}", flush=True)


if __name__ == "__main__":
    main()
