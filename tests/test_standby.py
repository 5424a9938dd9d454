"""A worker stands by whenever a reader lives: no event after an idle of any length, nor
the first one after a reload, waits for a fork and the worker's imports.

Real readers (the keepalived stand-in), real double-forked workers, real signals; the `launcher`
fixture ends every process a test leaves.  Each test runs
with `--linger 0`: the standby stays even though a lingering worker would leave the moment its
queue is empty."""

from __future__ import annotations

import json
import os
import signal

import psutil

from support import VI
from support.launcher import Launcher


def _action_workers(launcher: Launcher) -> list[int]:
    """The worker pid of every action start, from the progress records."""
    lines = (launcher.state / "progress").read_text().splitlines()
    return [rec["worker"] for rec in map(json.loads, lines) if rec.get("op") == "start"]


def test_the_standby_spawned_at_start_runs_every_event_however_long_the_idle(launcher: Launcher) -> None:
    k = launcher.keepalived("--linger", "0")
    k.start()
    standby = launcher.wait_standby()
    for n, state in enumerate(["BACKUP", "MASTER", "BACKUP"], start=1):
        k.write(VI.format(state))
        launcher.settle(n)  # idle: with linger 0, only standing by keeps the worker here
    assert _action_workers(launcher) == [standby] * 3
    k.stop([VI.format("STOP")])


def test_a_standby_that_dies_or_leaves_is_replaced_while_the_reader_lives(launcher: Launcher) -> None:
    k = launcher.keepalived("--linger", "0")
    k.start()
    first = launcher.wait_standby()
    os.kill(first, signal.SIGKILL)
    launcher.wait_for("a new standby after SIGKILL", lambda: launcher.wait_standby() != first)
    second = launcher.wait_standby()
    os.kill(second, signal.SIGTERM)  # an orderly exit is replaced too
    launcher.wait_for("a new standby after SIGTERM", lambda: launcher.wait_standby() not in (first, second))
    third = launcher.wait_standby()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    assert _action_workers(launcher) == [third]
    assert "died without finishing" in launcher.log_text()
    k.stop([VI.format("STOP")])


def test_the_standby_leaves_after_linger_once_no_reader_lives(launcher: Launcher) -> None:
    k = launcher.keepalived("--linger", "0")
    k.start()
    standby = psutil.Process(launcher.wait_standby())
    k.stop([VI.format("STOP")])
    standby.wait(timeout=60)  # raises if the standby does not leave after the reader
    assert _action_workers(launcher) == [standby.pid]  # the STOP action, by the standby


def test_after_a_reload_the_same_standby_serves_the_new_reader(launcher: Launcher) -> None:
    k = launcher.keepalived("--linger", "0")
    k.start()
    standby = launcher.wait_standby()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    old = k.proc
    assert old is not None
    k.reload().join()
    assert old.poll() is not None
    launcher.wait_for("the RELOAD record of the old reader", lambda: launcher.last_seq() >= 2)
    k.write(VI.format("BACKUP"))
    launcher.settle(3)
    assert _action_workers(launcher) == [standby] * 2  # MASTER, BACKUP (the RELOAD record runs nothing)
    k.stop([VI.format("STOP")])


def test_an_event_whose_reader_died_before_ringing_runs_at_once(launcher: Launcher) -> None:
    """A reader SIGKILLed after it journaled an event but before its ring (strace kills it at its
    first sendto): the standby worker, woken by the reader's pidfd, reads the journal then and runs
    the event, instead of leaving it for `linger` (600 s here) to pass."""
    import subprocess

    k = launcher.keepalived("--linger", "600")
    k.start()
    launcher.wait_standby()
    reader = k.proc.pid  # type: ignore[union-attr]
    tracer = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-p", str(reader), "-e", "trace=sendto",
                               "-e", "inject=sendto:signal=KILL:when=1"])
    try:
        launcher.wait_for("strace attached", lambda: _traced(reader))
        k.write(VI.format("MASTER"))
        launcher.wait_for("#1 journaled", lambda: launcher.last_seq() >= 1)
        tracer.wait(10)
    finally:
        if tracer.poll() is None:
            tracer.terminate()
            tracer.wait(5)
    launcher.settle(1)
    assert [r.seq for r in launcher.starts()] == [1]
    launcher.unchecked = "the reader was SIGKILLed holding no line: nothing to check beyond #1's start"


def _traced(pid: int) -> bool:
    """A tracer is attached to `pid` (TracerPid in its status)."""
    with open(f"/proc/{pid}/status") as fh:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in fh)
