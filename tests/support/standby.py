"""What the tests see of the standby worker and the readers it watches: pidfds read from /proc."""

from __future__ import annotations

import os
import signal
import socket
from functools import partial

from support import processes
from support.launcher import Launcher
from support.standin import Keepalived


def watched_by(pid: int) -> set[int]:
    """The pids `pid` holds a pidfd on (a worker: the readers it stands by for; a reader: its
    worker); empty if it is gone."""
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[pidfd]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                found |= {int(line.split()[1]) for line in fh if line.startswith("Pid:")}
        except OSError:
            continue
    return found


def worker(launcher: Launcher) -> int:
    """The worker worker.pid names, if it is running; else 0."""
    try:
        pid = int((launcher.state / "worker.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pid if processes.running(pid) else 0


def stood_by_for(launcher: Launcher, *readers: int) -> bool:
    """A running worker listens on the doorbell and watches every one of `readers`: the promise that
    each living reader has a standby (its next event waits for no fork)."""
    pid = worker(launcher)
    return bool(pid) and (launcher.state / "doorbell.sock").exists() and set(readers) <= watched_by(pid)


def pid(k: Keepalived) -> int:
    """The reader keepalived's stand-in `k` runs."""
    assert k.proc is not None
    return k.proc.pid


def second_reader_queued_behind(launcher: Launcher) -> tuple[Keepalived, Keepalived, int]:
    """Reader R1 stood by by the standby W; R2 finds doorbell.sock refusing (a worker's socket not yet
    bound anew, as when two readers ring while a killed standby's replacement starts), spawns its own
    worker -- queued behind worker.lock, which W holds, its hello to R2 still due -- and, ringing
    again, is heard by W once W listens anew.  Returns (k1, k2, W) with W standing by for both."""
    k1 = launcher.keepalived("--linger", "0")
    k2 = Keepalived(launcher.argv("--linger", "0"), str(launcher.dir / "second.fifo"))
    launcher.standins.append(k2)
    k1.start()
    holder = launcher.wait_standby()
    launcher.wait_for("the standby watching the first reader", partial(stood_by_for, launcher, pid(k1)))
    doorbell = str(launcher.state / "doorbell.sock")
    os.unlink(doorbell)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(doorbell)  # a socket file nobody reads: connect() is refused
    stale.close()
    k2.start()
    readers = {pid(k1), pid(k2)}
    launcher.wait_for("the second reader's own worker, queued behind worker.lock",
                      lambda: f"waiting for the worker lock (held by pid {holder})" in launcher.log_text())
    os.unlink(doorbell)
    os.kill(holder, signal.SIGCHLD)  # the standby binds its socket anew (what a starting worker does)
    launcher.wait_for("the standby watching both readers", partial(stood_by_for, launcher, *readers), timeout=30)
    return k1, k2, holder
