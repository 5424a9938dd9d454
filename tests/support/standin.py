"""A keepalived stand-in: does to a notify_fifo_script what keepalived 2.2.7 does (docs/keepalived.md).

- creates the FIFO (mode 0600) and starts the script with the FIFO as the LAST argument, in its
  own process group, stdio on /dev/null, umask 0177, parent-death signal SIGTERM;
- then opens the FIFO O_RDWR|O_NONBLOCK and writes each line with one non-blocking write: when
  the pipe is full the line is dropped, as keepalived drops it (counted in `dropped`);
- stop: SIGTERM to the group, the STOP lines ~5 ms later, SIGKILL to the group at +1 s;
- reload: SIGTERM + EOF (FIFO closed and unlinked), a new FIFO (new inode) and a new script ~20 ms
  later, SIGKILL to the old group at +1 s.

`TwoChildren` is keepalived with a checker (docs/keepalived.md, "LVS sites"): a main process (a
child subreaper) with a VRRP child and a checker child that both write one FIFO, made before they
start (as the README tells LVS sites), and one of them, the owner, starts the script, exec'd in its
own process group with parent-death signal SIGTERM:

- `crash(child)`: SIGKILL to a child; main starts it again at once, and, if it is the owner, it
  starts a new script (the old one got SIGTERM from its parent's death, no EOF, no STOP line);
- `reload()`: SIGHUP to both (VRRP first): the owner sends SIGTERM to its script's group; each
  child closes the FIFO and opens it again (the same FIFO: nobody made it, nobody unlinks it); the
  owner starts the new script ~20 ms later and SIGKILLs the old group at +1 s;
- `stop()`: SIGTERM to both (VRRP first): the owner sends SIGTERM to its script's group; the VRRP
  child writes its STOP lines, the checker its DOWN lines (keepalived's `omega`), each on its own;
  the owner SIGKILLs the group at +1 s.

Used by the tests, the demo and the benchmarks (support.standin); a command line too:
`python tests/support/standin.py --help`.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
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

    def respawn(self) -> None:
        """Start the script again on the same FIFO, still held open (a supervisor restarting a killed
        script): what is in the pipe waits for the new one."""
        self._spawn()

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

    def unread(self) -> int:
        """Bytes in the pipe no reader has taken yet (FIONREAD on our end)."""
        return int(struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0])

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

    def stop(self, stop_lines: list[str], delay: float = 0.005, pause_after: int = 0, pause: float = 0.0) -> StopReport:
        """keepalived's shutdown: TERM to the group, STOP lines after it, KILL to the group at +1 s.
        `pause` s after the first `pause_after` STOP lines: keepalived without the CPU for a while."""
        proc, t0 = self._term_then_kill()
        self.stops += 1
        time.sleep(delay)
        for n, line in enumerate(stop_lines):
            if n == pause_after and pause:
                time.sleep(pause)
            self.write(line)
        report = _await_or_kill(proc, t0)
        os.close(self.fd)
        self.fd = -1
        if os.path.exists(self.fifo):  # (someone may have removed it before: keepalived unlinks what is there)
            os.unlink(self.fifo)
        return report

    def reload(self, same_fifo: bool = False, parse: float = 0.02) -> threading.Thread:
        """keepalived's reload: TERM + EOF to the old script, a new FIFO and script `parse` s later
        (keepalived parses its configuration meanwhile: ~20 ms for a small one, seconds for thousands
        of virtual servers).  `same_fifo`: the new script gets the very same FIFO, still held open
        (keepalived reuses a FIFO that survived, docs/keepalived.md "Reload"): no EOF.

        Returns the thread that SIGKILLs the old group at +1 s (join it to know the old one's fate)."""
        proc, t0 = self._term_then_kill()
        if not same_fifo:
            os.close(self.fd)
            os.unlink(self.fifo)
        killer = threading.Thread(target=_await_or_kill, args=(proc, t0), daemon=True)
        killer.start()
        time.sleep(parse)
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


PR_SET_CHILD_SUBREAPER = 36
CHILDREN = ("vrrp", "checker")  # keepalived's order when it signals them (main.c children_term)


class TwoChildren:
    """keepalived with a checker, in a process of its own (`main`), driven line by line over a pipe.

    Each method returns once main has done the step: the lines are in the FIFO (or counted as
    dropped), a new script is started.  `scripts()` names the scripts the owner child now running
    started, in order."""

    def __init__(self, script: list[str], fifo: str, owner: str) -> None:
        assert owner in CHILDREN
        self.script, self.fifo, self.owner = script, fifo, owner
        self.proc: subprocess.Popen[str] | None = None
        self.dropped = 0

    def start(self) -> None:
        if not os.path.exists(self.fifo):
            os.mkfifo(self.fifo, 0o600)
        self.proc = subprocess.Popen([sys.executable, __file__, "--two-children", self.fifo, self.owner, "--",
                                      *self.script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, text=True, start_new_session=True)
        self._ask("ready")

    def _ask(self, *words: str) -> list[str]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if answer[:1] != ["ok"]:
            raise RuntimeError(f"the two-children stand-in answered {answer} to {words}")
        return answer[1:]

    def write(self, child: str, line: str) -> bool:
        """One non-blocking write of `line` by `child`; False (and counted) if the pipe was full."""
        written = self._ask("write", child, line)[0] == "1"
        self.dropped += not written
        return written

    def crash(self, child: str) -> None:
        self._ask("crash", child)

    def reload(self) -> None:
        self._ask("reload")

    def stop(self, vrrp_lines: list[str], checker_lines: list[str]) -> None:
        """keepalived's stop; returns once both children exited (each after its script, at most +1 s)."""
        self._ask("stop", json.dumps([vrrp_lines, checker_lines]).replace(" ", "\x1f"))
        assert self.proc is not None
        self.proc.wait(10)

    def scripts(self) -> list[int]:
        return [int(p) for p in self._ask("scripts")]

    def children(self) -> dict[str, int]:
        return dict(zip(CHILDREN, map(int, self._ask("children"))))

    def close(self) -> None:
        """Teardown whatever happened: main and its children by PID (the scripts are the test's)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


class _Child:
    """One keepalived child in main: its pid and the socket main commands it through."""

    def __init__(self, name: str, main: _Main) -> None:
        self.name, self.main = name, main
        self.pid = -1
        self.sock: socket.socket | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            try:
                _child_loop(self.name, self.main, theirs)
            finally:
                os._exit(0)
        theirs.close()
        if self.sock is not None:
            self.sock.close()
        self.pid, self.sock = pid, ours
        self.ask("ready")

    def send(self, *words: str) -> None:
        assert self.sock is not None
        self.sock.sendall((" ".join(words) + "\n").encode())

    def answer(self) -> list[str]:
        assert self.sock is not None
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"{self.name} child {self.pid} is gone")
            data += chunk
        return data.decode().split()

    def ask(self, *words: str) -> list[str]:
        self.send(*words)
        return self.answer()


class _Main:
    def __init__(self, fifo: str, owner: str, script: list[str]) -> None:
        self.fifo, self.owner, self.script = fifo, owner, script
        self.children = {name: _Child(name, self) for name in CHILDREN}

    def run(self) -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # orphaned scripts are reaped by the kernel
        for child in self.children.values():
            child.start()
        for line in sys.stdin:
            cmd, *args = line.split(" ", 2)
            cmd = cmd.strip()
            reply = getattr(self, f"do_{cmd}")(*[a.strip() for a in args])
            print("ok", *reply, flush=True)
            if cmd == "stop":
                return

    def do_ready(self) -> list[str]:
        return []

    def do_write(self, child: str, line: str) -> list[str]:
        return self.children[child].ask("write", line)

    def do_crash(self, name: str) -> list[str]:
        child = self.children[name]
        os.kill(child.pid, signal.SIGKILL)
        while True:  # keepalived respawns once it saw the child's death
            try:
                os.kill(child.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.001)
        child.start()
        return []

    def do_reload(self) -> list[str]:
        for child in self.children.values():
            child.send("reload")
        for child in self.children.values():
            child.answer()
        return []

    def do_stop(self, lines: str) -> list[str]:
        vrrp, checker = json.loads(lines.replace("\x1f", " "))
        self.children["vrrp"].send("stop", json.dumps(vrrp).replace(" ", "\x1f"))
        self.children["checker"].send("stop", json.dumps(checker).replace(" ", "\x1f"))
        for child in self.children.values():
            child.answer()
        return []

    def do_scripts(self) -> list[str]:
        return [str(p) for p in self.children[self.owner].ask("scripts")]

    def do_children(self) -> list[str]:
        return [str(c.pid) for c in self.children.values()]


def _child_loop(name: str, main: _Main, sock: socket.socket) -> None:
    """One keepalived child: open the FIFO, start the script if we own it, then obey main."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    owner = name == main.owner
    scripts: list[subprocess.Popen[bytes]] = []
    fd = os.open(main.fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def spawn() -> None:
        scripts.append(subprocess.Popen(main.script + [main.fifo], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_child_setup, close_fds=True))

    def kill_later(proc: subprocess.Popen[bytes]) -> threading.Thread:
        killer = threading.Thread(target=_await_or_kill, args=(proc, time.monotonic()), daemon=True)
        killer.start()
        return killer

    if owner:
        spawn()
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        cmd, _, arg = line.decode().partition(" ")
        if cmd == "ready":
            sock.sendall(b"ready\n")
        elif cmd == "write":
            try:
                os.write(fd, arg.encode() + b"\n")
                sock.sendall(b"1\n")
            except BlockingIOError:
                sock.sendall(b"0\n")
        elif cmd == "scripts":
            sock.sendall((" ".join(str(p.pid) for p in scripts) + "\n").encode())
        elif cmd == "reload":
            if owner:
                os.killpg(scripts[-1].pid, signal.SIGTERM)
                kill_later(scripts[-1])
            os.close(fd)
            time.sleep(0.02)  # keepalived parses its configuration again
            fd = os.open(main.fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            if owner:
                spawn()
            sock.sendall(b"reloaded\n")
        elif cmd == "stop":
            killer = None
            if owner:
                os.killpg(scripts[-1].pid, signal.SIGTERM)
                killer = kill_later(scripts[-1])
            time.sleep(0.005 if name == "vrrp" else 0.0)  # VRRP releases its interfaces first
            for stop_line in json.loads(arg.replace("\x1f", " ")):
                try:
                    os.write(fd, stop_line.encode() + b"\n")
                except BlockingIOError:
                    pass
            if killer is not None:
                killer.join()
            sock.sendall(b"stopped\n")
            return


def main() -> None:
    if sys.argv[1:2] == ["--two-children"]:
        fifo, owner, _, *script = sys.argv[2:]
        _Main(fifo, owner, script).run()
        return
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
