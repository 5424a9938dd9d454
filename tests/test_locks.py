"""worker.lock and standby.lock through their one owner (locks.py), with real locks and processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from notify_launcher import identity
from notify_launcher.locks import (WorkerLock, open_standby, release_standby, standby_held, try_standby,
                                   wait_standby, lock_holder)
from notify_launcher.statedir import StatePaths, ensure_state_dir

TRY_WORKER_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_TRUNC)  # a try of Debian 12's filelock 3.9: O_TRUNC, then flock
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(1)
"""

def _paths(tmp: Path) -> StatePaths:
    return ensure_state_dir(str(tmp / "state"))


def _try_in_another_process(code: str, *args: str) -> int:
    return subprocess.run([sys.executable, "-c", code, *args], timeout=60).returncode


def test_a_queued_workers_tries_leave_the_worker_lock_ours(tmp_path: Path) -> None:
    """A worker queued on worker.lock opens it at every try (Debian 12's filelock with O_TRUNC,
    which changes the file's times): the holder still owns it, and is named as its holder."""
    paths = _paths(tmp_path)
    lock = WorkerLock(paths)
    lock.take(lambda holder: None)
    try:
        assert _try_in_another_process(TRY_WORKER_LOCK, paths.worker_lock) == 1, "the lock was not held"
        assert lock.ours()
        assert lock_holder(paths.worker_lock) == identity.me()
    finally:
        lock.release()
    assert lock_holder(paths.worker_lock) is None


def test_a_replaced_worker_lock_is_not_ours(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    lock = WorkerLock(paths)
    lock.take(lambda holder: None)
    try:
        os.unlink(paths.worker_lock)
        os.close(os.open(paths.worker_lock, os.O_RDWR | os.O_CREAT, 0o600))
        assert not lock.ours()
    finally:
        lock.release()


def test_a_waiting_worker_is_told_who_holds_the_worker_lock(tmp_path: Path) -> None:
    """The second taker hears the holder's identity once, then waits until the holder lets go."""
    paths = _paths(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys
from notify_launcher.locks import WorkerLock
from notify_launcher.statedir import StatePaths
lock = WorkerLock(StatePaths({paths.root!r}))
lock.take(lambda holder: None)
print("held", flush=True)
sys.stdin.read()
lock.release()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        told: list[identity.ProcessId | None] = []

        def waiting(who: identity.ProcessId | None) -> None:
            told.append(who)
            assert holder.stdin is not None
            holder.stdin.close()  # now let it go: take() must wait for that

        lock = WorkerLock(paths)
        lock.take(waiting)
        assert told == [identity.of(holder.pid)] and lock.ours()
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_standby_lock_is_handed_over_and_seen_held(tmp_path: Path) -> None:
    """The reader's try takes standby.lock once; a second try (another reader) finds a worker queued;
    a systemd unit's worker waiting on it gets it when it is released."""
    paths = _paths(tmp_path)
    fd, other = open_standby(paths), open_standby(paths)
    assert try_standby(fd)
    try:
        assert not try_standby(other)
        os.close(other)
        assert standby_held(paths)
        waiter = f"""
from notify_launcher.locks import wait_standby
from notify_launcher.statedir import StatePaths
raise SystemExit(0 if wait_standby(StatePaths({paths.root!r}), 0.1) is None else 1)
"""
        assert _try_in_another_process(waiter) == 0, "a held standby.lock was taken"
    finally:
        release_standby(fd)
    assert not standby_held(paths)
    release = wait_standby(paths, 0)
    assert release is not None and standby_held(paths)
    release()
