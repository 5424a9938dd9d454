"""Reader hand-overs keep keepalived's order and lose nothing: reloads one after the other, a stop
right after a reload, a reload during a burst that never lets the pipe be empty, and service mode
following keepalived's FIFO.  Real readers and FIFOs through the keepalived stand-in; strace holds
an old reader's read, SIGSTOP a starting reader (found by the red team, turn.py's tickets).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from support import VI, processes, tmpfs
from support.invariants import inspect_run
from support.launcher import Launcher
from support.marks import needs
from support.standin import Keepalived
from notify_launcher import identity
from notify_launcher.journal import spill_name
from notify_launcher.turn import lock_path

needs_strace = needs("strace (Debian's strace: scripts/setup installs it)", shutil.which("strace") is not None)


def _journaled(launcher: Launcher, initials: str) -> list[str]:
    """Names of the INSTANCE events whose name starts with one of `initials`, in journal order."""
    out = []
    for line in launcher.log_text().splitlines():
        if "| received" in line and "INSTANCE" in line and " #- " not in line:  # (spilled: numbered later)
            seq, name = int(line.split(" #", 1)[1].split()[0]), line.split('"')[1]
            if name[0] in initials:
                out.append((seq, name))
    return [name for _, name in sorted(out)]


def _seqs(launcher: Launcher, workers_too: bool = False) -> dict[str, int]:
    """Each journaled event (as the log shows it) -> its number: from the readers' `received` lines,
    and with `workers_too` from any line naming it under a number (a reader whose window closed
    right after its append logs no `received`)."""
    out: dict[str, int] = {}
    for line in launcher.log_text().splitlines():
        if (workers_too or "| received" in line) and " #" in line and " | " in line and " #- " not in line:
            seq, event = line.split(" #", 1)[1].split(" | ")[0].split(" ", 1)
            if seq.isdigit():
                out.setdefault(event, int(seq))
    return out


def _holds_ticket(lock: str, pid: int) -> bool:
    """`pid` holds a POSIX record lock (its ticket) on `lock` (/proc/locks)."""
    st = os.stat(lock)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as fh:
        return any(f[1] == "POSIX" and f[4] == str(pid) and f[5] == where
                   for f in (row.split() for row in fh) if len(f) >= 6)


def _old_reader_holding_x(launcher: Launcher, k: Keepalived, usec: int = 850_000) -> subprocess.Popen[bytes]:
    """keepalived started and #1 settled; then the reader reads X0..X2 and its read returns only `usec`
    later (strace: a reader that lost the CPU between its read and its journal append, within
    keepalived's 1 s); returns the tracer, to wait() for once the reader is gone."""
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    assert k.proc is not None
    tracer = processes.hold_first_read(k.proc.pid, usec)
    for i in range(3):
        assert k.write(f'INSTANCE "X{i}" MASTER 100')
    launcher.wait_for("the old reader's read of X", lambda: k.unread() == 0)
    return tracer


def _reload_then_stop(launcher: Launcher, k: Keepalived) -> None:
    """A reload onto the same FIFO, then keepalived's stop as soon as the new reader catches SIGTERM
    (a stop in its Python start-up is a stated limit); returns once the old reader is gone."""
    killer = k.reload(same_fifo=True)
    assert k.proc is not None
    new = k.proc.pid
    launcher.wait_for("the new reader catches SIGTERM", lambda: processes.catches_sigterm(new), timeout=30)
    k.stop([VI.format("STOP")])
    killer.join()


@pytest.mark.parametrize("held", [False, True], ids=["as-is", "middle-reader-stopped"])
def test_two_reloads_in_a_row_journal_the_middle_fifo_before_the_newest(launcher: Launcher, held: bool) -> None:
    """keepalived reloads twice in a row, making a new FIFO each time (its usual reload).  The middle
    reader B got its SIGTERM while it started, so it waits 0.1 s for the next reader before it
    reads the rest of its own FIFO; the newest, C, is up meanwhile.  C must not journal its lines
    (written after the second reload) before B has journaled B's (written before it).  `held`: B
    is stopped (SIGSTOP: a reader that lost the CPU as it started) from the moment it catches
    SIGTERM until C holds its ticket; C waits for B all the same, whose ticket is older."""
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    k.reload()
    assert k.proc is not None
    b = k.proc.pid
    launcher.wait_for("B catches SIGTERM", lambda: processes.catches_sigterm(b), timeout=30)
    if held:
        os.kill(b, signal.SIGSTOP)
    try:
        for i in range(3):
            assert k.write(f'INSTANCE "Y{i}" MASTER 100')  # into FIFO #2, B's
        k.reload()
        assert k.proc is not None
        c = k.proc.pid
        for i in range(3):
            assert k.write(f'INSTANCE "Z{i}" MASTER 100')  # into FIFO #3, C's
        if held:
            lock = lock_path(str(launcher.fifo), str(launcher.state))
            launcher.wait_for("C holds its ticket", lambda: _holds_ticket(lock, c), timeout=30)
    finally:
        if held:
            os.kill(b, signal.SIGCONT)
    launcher.wait_for("every line journaled", lambda: launcher.last_seq() >= 8, timeout=30)
    launcher.wait_idle()
    assert _journaled(launcher, "YZ") == ["Y0", "Y1", "Y2", "Z0", "Z1", "Z2"], launcher.log_text()[-3000:]


@needs_strace
def test_a_stop_right_after_a_reload_journals_the_readers_stop_after_the_old_readers_lines(
        launcher: Launcher) -> None:
    """keepalived stops right after a reload (shared FIFO) while the old reader A still holds lines it
    read before the reload (its read held 0.7 s in the kernel: past the new reader's grace, and short
    of its window with room for a busy machine's scheduling, which adds to strace's delay).  The new
    reader B, stopped, waits for A beyond its own grace, to the end of its window: its READER
    reader STOP (which runs stop_action) must come after every line keepalived wrote before it."""
    k = launcher.keepalived()
    tracer = _old_reader_holding_x(launcher, k, 700_000)
    try:
        _reload_then_stop(launcher, k)
    finally:
        tracer.wait(timeout=60)
    launcher.wait_idle()
    seqs = _seqs(launcher)
    stop = seqs.get("READER reader STOP")
    assert stop is not None, launcher.log_text()[-3000:]
    after = {event: seq for event, seq in seqs.items() if seq > stop and not event.startswith("READER")}
    assert not after, (f"READER reader STOP (#{stop}) journaled before {after}", launcher.log_text()[-3000:])


def test_a_reload_during_a_burst_that_never_pauses_loses_no_line_unsaid(launcher: Launcher) -> None:
    """A reload (shared FIFO) while a writer keeps the pipe from ever being empty for 1.3 s (a burst:
    what does not fit is dropped by the writer, as keepalived does).  The old reader must still see
    the next reader and its grace between chunks, and every line it read is journaled or counted
    in a LOST line (the fixture's check: written lines journaled, or drops logged)."""
    k = launcher.keepalived("--handler", "")  # events only logged: tens of thousands end fast
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    started = threading.Event()

    def burst() -> None:
        end = time.monotonic() + 1.3
        started.set()
        i = 0
        while time.monotonic() < end:
            k.write(f'INSTANCE "B{i}" MASTER 100')
            i += 1

    writer = threading.Thread(target=burst)
    writer.start()
    started.wait()
    launcher.wait_for("the burst under way", lambda: launcher.last_seq() >= 200)
    killer = k.reload(same_fifo=True)
    writer.join()
    killer.join()
    launcher.unchecked = "checked here, with a longer timeout"
    k.stop([])
    launcher.check(timeout=300)


@needs("root (mounts a small tmpfs)", os.geteuid() == 0)
def test_service_mode_says_what_it_could_not_journal_when_it_is_stopped(launcher: Launcher) -> None:
    """`notify-launcher serve` holds events in memory while the state file system is full; stopped
    then (SIGTERM), it says in a LOST line what it could not journal (invariant 4)."""
    with tmpfs.mounted(launcher.state, "256k", before_unmount=launcher.end_processes):
        argv = launcher.argv()
        proc = subprocess.Popen([argv[0], "serve", *argv[1:], "--fifo", str(launcher.fifo)])
        try:
            launcher.wait_started()
            os.mkfifo(launcher.fifo, 0o600)
            fd = os.open(launcher.fifo, os.O_RDWR | os.O_NONBLOCK)
            first = VI.format("BACKUP")
            os.write(fd, (first + "\n").encode())
            launcher.settle(1)
            tmpfs.fill_file_system(launcher.state / "filler")
            written = 1
            while "cannot write the journal" not in launcher.log_text():  # the journal's last page fills too
                assert written < 2000, launcher.log_text()[-2000:]
                written += 1
                os.write(fd, f'INSTANCE "VI_1" MASTER {written}\n'.encode())
                launcher.wait_for(f"line {written} journaled, or the journal full",
                                  lambda n=written: (log := launcher.log_text()).count("| received") >= n
                                  or "cannot write the journal" in log)
            proc.terminate()
            assert proc.wait(timeout=30) == 0
            (launcher.state / "filler").unlink()
            os.close(fd)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        launcher.unchecked = "checked here, while the tmpfs is mounted"
        assert "LOST: " in launcher.log_text(), launcher.log_text()[-2000:]
        launcher.check(expect_lines=[first] + [f'INSTANCE "VI_1" MASTER {n}' for n in range(2, written + 1)])


def test_service_mode_reads_the_fifo_keepalived_makes_at_a_reload_before_the_pipe_fills(launcher: Launcher) -> None:
    """`notify-launcher serve` follows keepalived's FIFO: at a reload keepalived unlinks it, makes a new
    one and writes into it at once.  2,000 RS lines (more than a pipe holds) written then, a few
    ms apart: none is dropped, so the service found the new FIFO in time."""
    argv = launcher.argv("--handler", "")
    proc = subprocess.Popen([argv[0], "serve", *argv[1:], "--fifo", str(launcher.fifo)])
    try:
        launcher.wait_started()
        os.mkfifo(launcher.fifo, 0o600)
        fd = os.open(launcher.fifo, os.O_RDWR | os.O_NONBLOCK)
        os.write(fd, (VI.format("BACKUP") + "\n").encode())
        launcher.settle(1)
        os.close(fd)  # keepalived reloads: fifo_close (EOF, unlink) ...
        os.unlink(launcher.fifo)
        time.sleep(0.005)  # ... parses its configuration (the scenario's pace) ...
        os.mkfifo(launcher.fifo, 0o600)  # ... fifo_open: a new FIFO, written into at once
        fd = os.open(launcher.fifo, os.O_RDWR | os.O_NONBLOCK)
        written = dropped = 0
        for i in range(2000):
            try:
                os.write(fd, f"RS [192.168.{i // 250}.{i % 250 + 1}]:tcp:80 [10.0.0.10]:tcp:80 UP\n".encode())
                written += 1
            except OSError as exc:
                assert exc.errno == errno.EAGAIN
                dropped += 1
            time.sleep(0.0002)  # the writer's pace: part of the scenario
        launcher.settle(1 + written)
        os.close(fd)
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    launcher.unchecked = "the stand-in wrote no line: checked here"
    assert dropped == 0, (dropped, [line[11:23] for line in launcher.log_text().splitlines()
                                    if "following it" in line or "reading" in line])


def test_a_reload_while_the_reader_starts_leaves_it_the_lines_of_its_own_fifo(launcher: Launcher) -> None:
    """keepalived writes its first lines into FIFO #1 and reloads while the reader is still starting
    (stopped from the moment it catches SIGTERM to the reload's end: its config, checks and state
    directory, 20-40 ms, still ahead): the reload unlinks FIFO #1 and makes FIFO #2 at the path.
    The reader reads FIFO #1, the one keepalived started it on (opened before it catches SIGTERM),
    not the next reader's: keepalived's first lines are journaled, then the next reader's."""
    k = launcher.keepalived()
    k.start()
    assert k.proc is not None
    first = k.proc.pid
    launcher.wait_for("the reader catches SIGTERM", lambda: processes.catches_sigterm(first), timeout=30)
    os.kill(first, signal.SIGSTOP)
    try:
        for i in range(3):
            assert k.write(f'INSTANCE "W{i}" MASTER 100')  # keepalived's first lines, into FIFO #1
        k.reload()  # FIFO #1 unlinked; FIFO #2 and the next reader
        for i in range(3):
            assert k.write(f'INSTANCE "Z{i}" MASTER 100')  # into FIFO #2
    finally:
        os.kill(first, signal.SIGCONT)
    launcher.wait_for("every line journaled", lambda: launcher.last_seq() >= 7, timeout=30)
    launcher.wait_idle()
    assert _journaled(launcher, "WZ") == ["W0", "W1", "W2", "Z0", "Z1", "Z2"], launcher.log_text()[-3000:]

@contextmanager
def _lock_busy_after_x(launcher: Launcher, k: Keepalived) -> Iterator[None]:
    """The journal's lock held (a stalled holder) while keepalived writes X0-X2, until the reader
    has spilled them; let go at the block's end."""
    journal = os.open(launcher.state / "journal", os.O_RDONLY)
    try:
        fcntl.flock(journal, fcntl.LOCK_EX)
        for i in range(3):
            assert k.write(f'INSTANCE "X{i}" MASTER 100')
        launcher.wait_for("A spilled X", lambda: launcher.log_text().count("kept in the spill file") >= 3)
        yield
    finally:
        fcntl.flock(journal, fcntl.LOCK_UN)
        os.close(journal)


def test_a_reload_while_the_journal_lock_is_busy_keeps_the_order_of_the_two_readers(launcher: Launcher) -> None:
    """The journal's lock stays busy over 50 ms across a reload (journal.py's spill case: a holder
    stopped, a stalling disk) while the worker runs a long action.  The old reader A spills X0-X2
    and its READER RELOAD; the new reader B spills Z0-Z2.  The lock comes free and Z3 comes: A,
    still in its window, numbers its spilled events before it lets its ticket go, so B's come after
    them (before, B numbered its own first, and A's waited for the worker: red team)."""
    gate = launcher.gate_backup()
    k = launcher.first_action_running()
    try:
        with _lock_busy_after_x(launcher, k):
            k.reload()
            launcher.wait_for("A spilled its READER", lambda: launcher.log_text().count("kept in the spill file") >= 4)
            for i in range(3):
                assert k.write(f'INSTANCE "Z{i}" MASTER 100')
            launcher.wait_for("B spilled Z", lambda: launcher.log_text().count("kept in the spill file") >= 7)
        assert k.write('INSTANCE "Z3" MASTER 100')
        launcher.wait_for("B journaled Z3", lambda: '"Z3" MASTER 100 | received' in launcher.log_text())
    finally:
        gate.touch()
    launcher.wait_for("all numbered", lambda: len(_journaled(launcher, "XZ")) >= 7, timeout=30)
    launcher.wait_idle()
    assert _journaled(launcher, "XZ") == ["X0", "X1", "X2", "Z0", "Z1", "Z2", "Z3"], launcher.log_text()[-4000:]


RS = "RS [192.168.{}.{}]:tcp:80 [10.0.0.10]:tcp:80 UP"


@needs_strace
@pytest.mark.parametrize("stop", [False, True], ids=["reload", "reload-then-stop"])
def test_an_old_reader_that_gets_the_cpu_back_late_says_what_it_could_not_journal(launcher: Launcher,
                                                                                   stop: bool) -> None:
    """The old reader A had read the first lines of a burst when it lost the CPU (its read held
    0.7 s in the kernel, strace also slowing it as a loaded machine would); 1,000 RS lines follow.
    keepalived reloads (a new FIFO: the lines are A's to read), or (`stop`) reloads on the shared
    FIFO and stops right after (an LVS site).  A runs its SIGTERM handler only when it gets the
    CPU back; it must not count keepalived's window from then (the next reader, already running,
    shows when the SIGTERM came at the latest), so whatever it cannot journal before keepalived's
    SIGKILL is said in a LOST line (invariant 4; the fixture's check: journaled or counted), and a
    stop's READER reader STOP is journaled (red team)."""
    if stop:
        launcher.stop_action()
    k = launcher.keepalived("--handler", "")
    tracer = _old_reader_holding_x(launcher, k, 700_000)  # (0.3 s left: the LOST line is written in time, even on a busy machine)
    try:
        if stop:
            killer = k.reload(same_fifo=True)
            assert k.proc is not None
            new = k.proc.pid
            launcher.wait_for("the new reader catches SIGTERM", lambda: processes.catches_sigterm(new), timeout=30)
        for i in range(1000):
            assert k.write(RS.format(i // 250, i % 250 + 1))
        if stop:
            k.stop([VI.format("STOP")])
        else:
            killer = k.reload()
        killer.join()
    finally:
        tracer.wait(timeout=60)
    launcher.unchecked = "checked here"
    if not stop:
        k.stop([VI.format("STOP")])
    launcher.check()
    seqs = _seqs(launcher)
    assert "READER reader STOP" in seqs, launcher.log_text()[-3000:]
    assert seqs.get(VI.format("STOP"), 0) < seqs["READER reader STOP"], launcher.log_text()[-3000:]


def _next_pid(pid: int) -> None:
    """The next process forked on this machine gets a pid above `pid` (root: ns_last_pid)."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
        fh.write(str(pid))


@needs_strace
def test_a_stop_right_after_a_reload_while_the_old_reader_is_inside_a_long_read(launcher: Launcher) -> None:
    """A reload on a shared FIFO, and keepalived stops as soon as the next reader B catches SIGTERM.
    The old reader A caught its SIGTERM before B started and is inside one long read of 300 lines,
    its log writes taking 15 ms each (a slow disk, or no CPU): it must find B between those lines
    and end its window 0.1 s early, or B, waiting for A only up to its own SIGTERM + 0.85 s, reads
    beside it and journals keepalived's STOP line and READER reader STOP before lines A read before
    the reload (red team: 4 RS lines after them)."""
    k = launcher.keepalived("--handler", "")
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    assert k.proc is not None
    a = k.proc.pid
    tracer = processes.delay_exits(a, "write", str(launcher.log), 15000)  # its log writes: no lock held meanwhile
    try:
        for i in range(300):
            assert k.write(RS.format(i // 250, i % 250 + 1))
        launcher.wait_for("A is reading", lambda: k.unread() == 0)
        _reload_then_stop(launcher, k)
    finally:
        tracer.wait(timeout=60)
    launcher.unchecked = "lines A said LOST are allowed; the order is checked here"
    launcher.wait_idle()
    seqs = _seqs(launcher, workers_too=True)
    stop_line, reader_stop = seqs.get(VI.format("STOP")), seqs.get("READER reader STOP")
    assert stop_line is not None and reader_stop is not None, launcher.log_text()[-2000:]
    later = sorted(seq for event, seq in seqs.items() if seq > min(stop_line, reader_stop) and event.startswith("RS "))
    assert not later, (f"keepalived's STOP line #{stop_line} and READER reader STOP #{reader_stop} journaled "
                       f"before {len(later)} RS lines written before them", launcher.log_text()[-2000:])


@contextmanager
def _late_old_reader(launcher: Launcher, k: Keepalived, lines: int = 1000, usec: int = 5000) -> Iterator[int]:
    """keepalived started and #1 settled; then its reader A (yielded) is stopped (no CPU) with `lines`
    RS lines in its FIFO and its journal writes slow (`usec` each: a slow disk); A gets the CPU back
    as the block ends (its SIGTERM handler runs then), and is gone when this returns."""
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    assert k.proc is not None
    a = k.proc.pid
    tracer = processes.delay_exits(a, "write", str(launcher.state / "journal"), usec)
    try:
        os.kill(a, signal.SIGSTOP)
        try:
            for i in range(lines):
                assert k.write(RS.format(i // 250, i % 250 + 1))  # into A's FIFO
            yield a
        finally:
            os.kill(a, signal.SIGCONT)
    finally:
        tracer.wait(timeout=60)  # (strace leaves with A)


def _wait_until(t: float) -> None:
    """The scenario's next moment (monotonic `t`), not a wait for state: A must get the CPU back
    before keepalived's SIGKILL, so a machine too slow to keep to it cannot run the scenario."""
    left = t - time.monotonic()
    if left <= 0:
        pytest.skip("the machine was too slow for this scenario's moments (A must get the CPU back before "
                    "keepalived's SIGKILL)")
    time.sleep(left)


def _said_lost(launcher: Launcher, a: int) -> None:
    """Reader `a` wrote its LOST line (before keepalived's SIGKILL)."""
    a_lines = [line for line in launcher.log_text().splitlines() if f"reader[{a}]" in line]
    assert any("LOST: " in line for line in a_lines), ("A died without its LOST line", a_lines[-3:])


@needs_strace
@needs("root (ns_last_pid)", os.geteuid() == 0)
@pytest.mark.parametrize("wrap", [False, True], ids=["pids-in-order", "pids-wrapped"])
def test_a_late_handler_counts_its_window_from_the_first_next_reader_not_the_newest(launcher: Launcher,
                                                                                     wrap: bool) -> None:
    """Two reloads in a row, 0.3 s apart, on a FIFO keepalived keeps (so only the next reader can
    date the SIGTERM), while the first reader A is stopped with 1,000 lines in it (_late_old_reader).
    A gets the CPU back 0.6 s after its SIGTERM and must date that SIGTERM from B's start (20 ms
    after it), the first next reader, not C's -- which /proc lists first when the pids wrapped
    between B and C (red team: A counted from C, journaled past keepalived's SIGKILL and died with no
    LOST line)."""
    with open("/proc/sys/kernel/pid_max") as fh:
        pid_max = int(fh.read())
    k = launcher.keepalived("--handler", "")
    with _late_old_reader(launcher, k) as a:
        if wrap:
            _next_pid(pid_max - 400)
        t0 = time.monotonic()
        killer = k.reload(same_fifo=True)  # A's SIGTERM; B
        b = k.proc.pid
        launcher.wait_for("B catches SIGTERM", lambda: processes.catches_sigterm(b), timeout=30)
        _wait_until(t0 + 0.3)
        if wrap:
            _next_pid(a + 50)
        k.reload(same_fifo=True)  # B's SIGTERM; C
        c = k.proc.pid
        if (c < b) != wrap:
            pytest.skip(f"the pids did not come as planned (B {b}, C {c}): another process took them")
        launcher.wait_for("C catches SIGTERM", lambda: processes.catches_sigterm(c), timeout=30)
        _wait_until(t0 + 0.6)
    killer.join()
    launcher.unchecked = "what A could not read of its FIFO is not asked here: only A's LOST line"
    launcher.wait_for("C started", lambda: launcher.log_text().count("| reader started") >= 3, timeout=30)
    k.stop([VI.format("STOP")])
    _said_lost(launcher, a)


@needs_strace
@pytest.mark.parametrize("parse", [0.02, 0.4], ids=["small-config", "large-config"])
def test_a_late_handler_after_a_slow_reload_still_says_what_it_loses(launcher: Launcher, parse: float) -> None:
    """keepalived reloads a configuration that takes `parse` s to parse again (0.4 s: thousands of
    virtual servers) while the old reader A is stopped with 1,000 lines in its FIFO
    (_late_old_reader).  A runs its SIGTERM handler 0.6 s late: it must date keepalived's window
    from the unlink of its FIFO (right after the SIGTERM), not from the next reader's start (0.4 s
    after it), and say LOST before keepalived's SIGKILL (red team: it journaled on past the SIGKILL
    and died with no LOST line)."""
    k = launcher.keepalived("--handler", "")
    with _late_old_reader(launcher, k) as a:
        t0 = time.monotonic()
        killer = k.reload(parse=parse)
        _wait_until(t0 + 0.6)
    killer.join()
    launcher.unchecked = "what A could not read of its FIFO is not asked here: only A's LOST line"
    assert k.proc is not None
    b = k.proc.pid
    launcher.wait_for("B catches SIGTERM", lambda: processes.catches_sigterm(b), timeout=30)
    k.stop([VI.format("STOP")])
    _said_lost(launcher, a)


def test_an_old_readers_spill_left_past_its_window_is_numbered_before_the_next_readers_lines(
        launcher: Launcher) -> None:
    """The journal's lock stays busy (a stalled holder) through the old reader A's whole stop window
    at a reload, while the worker runs a long action: A spills X0-X2 and its READER RELOAD and
    leaves with them not numbered (its window closed first), letting its ticket go.  The lock then
    comes free and keepalived writes Z0-Z2 to the next reader B, which has no spill file of its
    own: its append numbers A's spilled events first, as A read them first (red team: B numbered
    Z0-Z2 at once, and the worker X0-X2 after them)."""
    gate = launcher.gate_backup()
    k = launcher.first_action_running()
    assert k.proc is not None
    a = k.proc.pid
    try:
        with _lock_busy_after_x(launcher, k):
            k.reload().join()  # A gone: it left within its window, its spill not numbered
            assert not processes.running(a)
        launcher.wait_for("B started", lambda: launcher.log_text().count("| reader started") >= 2, timeout=30)
        for i in range(3):
            assert k.write(f'INSTANCE "Z{i}" MASTER 100')
        launcher.wait_for("B journaled Z2", lambda: '"Z2" MASTER 100 | received' in launcher.log_text())
    finally:
        gate.touch()
    launcher.wait_for("all numbered", lambda: len(_journaled(launcher, "XZ")) >= 6, timeout=30)
    launcher.wait_idle()
    assert _journaled(launcher, "XZ") == ["X0", "X1", "X2", "Z0", "Z1", "Z2"], launcher.log_text()[-3000:]


@needs("root (ns_last_pid)", os.geteuid() == 0)
def test_spill_files_of_two_readers_are_numbered_in_the_readers_order_not_by_pid_text(launcher: Launcher) -> None:
    """The journal's lock stays busy across a reload while the worker runs a long action: the old
    reader A (pid 899x) spills X0-X2 and its READER RELOAD and leaves at its window's end; the next
    reader B (pid 1099x: the pids crossed a power of ten, or wrapped) spills Z0-Z2.  The lock comes
    free, the action ends, and the worker adopts A's spill file before B's, in the order the
    readers started (red team: in the order of their names as text, '1099x' before '899x')."""
    gate = launcher.gate_backup()
    _next_pid(8990)
    k = launcher.first_action_running()
    assert k.proc is not None
    a = k.proc.pid
    try:
        with _lock_busy_after_x(launcher, k):
            _next_pid(10990)
            killer = k.reload()
            b = k.proc.pid
            assert str(b) < str(a), ("pids not as planned", a, b)
            killer.join()  # A left at its window's end, its spill not numbered
            launcher.wait_for("B started", lambda: launcher.log_text().count("| reader started") >= 2, timeout=30)
            for i in range(3):
                assert k.write(f'INSTANCE "Z{i}" MASTER 100')
            launcher.wait_for("B spilled Z", lambda: launcher.log_text().count("kept in the spill file") >= 7)
    finally:
        gate.touch()
    launcher.wait_for("all numbered", lambda: len(_journaled(launcher, "XZ")) >= 6, timeout=30)
    launcher.wait_idle()
    assert _journaled(launcher, "XZ") == ["X0", "X1", "X2", "Z0", "Z1", "Z2"], \
        [line for line in launcher.log_text().splitlines() if "journaled late" in line]


@needs_strace
def test_an_old_reader_killed_between_numbering_its_spill_and_removing_it_runs_nothing_twice(
        launcher: Launcher) -> None:
    """The journal's lock is busy at a reload (a stalled holder) while the worker runs a long action:
    the old reader A spills X0-X2 and its READER RELOAD.  The lock comes free within A's window and
    A numbers its spill into the journal (#2-#5) -- but its write returns late (a slow disk: strace
    holds it), and keepalived's SIGKILL at +1 s comes before A removes its spill file.  The next
    reader B journals 150 RS lines (more than the journal's last 8 KiB).  A's spill file is adopted
    (by B before its first line, or by the worker) and its events are not numbered again: each
    action runs once (red team: the worker looked for them only in the journal's last 8 KiB and
    journaled them again as #156-#159)."""
    gate = launcher.gate_backup()
    k = launcher.first_action_running()
    assert k.proc is not None
    a = k.proc.pid
    a_stat = identity.stat(a)
    assert a_stat is not None
    tracer = None
    try:
        with _lock_busy_after_x(launcher, k):
            tracer = processes.delay_exits(a, "write", str(launcher.state / "journal"), 3_000_000)  # its next journal write: the unspill
            killer = k.reload()
            launcher.wait_for("A spilled its READER", lambda: launcher.log_text().count("kept in the spill file") >= 4)
        killer.join()  # A SIGKILLed at +1 s inside its unspill's write
        tracer.wait(timeout=60)
        assert os.listdir(launcher.state / "spill") == [spill_name(a_stat.start, a)], "A's spill file is left"
        launcher.wait_for("B started", lambda: launcher.log_text().count("| reader started") >= 2, timeout=30)
        for i in range(150):
            assert k.write(RS.format(i // 250, i % 250 + 1))
        launcher.wait_for("B journaled them", lambda: launcher.log_text().count("RS [") >= 150, timeout=30)
    finally:
        gate.touch()
    launcher.wait_idle()
    runs = [" ".join(r.args[:2]) for r in launcher.starts()]
    twice = sorted({run for run in runs if runs.count(run) > 1})
    assert not twice, (f"actions run twice: {twice}",
                       [line for line in launcher.log_text().splitlines() if "journaled late" in line][:6])
@needs_strace
def test_lines_left_in_a_replaced_fifo_when_the_window_closes_are_said_lost(launcher: Launcher) -> None:
    """keepalived reloads (a new FIFO at the path) while the old reader A is stopped with 1,000 lines in
    its FIFO (_late_old_reader), which no other reader will ever open.  A gets the CPU back 0.7 s
    after its SIGTERM and reads 4 KiB at a time (stopping); its window closes with most lines still
    in that FIFO: they are keepalived's, left for nobody, and the LOST line counts them with those
    it read (red team: 968 written lines never journaled, 56 drops logged)."""
    k = launcher.keepalived("--handler", "")
    with _late_old_reader(launcher, k):
        t0 = time.monotonic()
        killer = k.reload()  # A's SIGTERM, EOF; a new FIFO and B
        _wait_until(t0 + 0.7)
    killer.join()
    launcher.unchecked = "checked here"
    launcher.wait_for("B started", lambda: launcher.log_text().count("| reader started") >= 2, timeout=30)
    k.stop([VI.format("STOP")])
    run = inspect_run(launcher.state, launcher.dir, launcher.log, expect_lines=k.lines, stops=1)
    assert not run.unlogged_drops, (str(run)[:1500], [line for line in launcher.log_text().splitlines()
                                                      if "LOST: " in line][:1])


@needs_strace
def test_an_old_reader_whose_window_closes_mid_line_leaves_the_next_reader_whole_lines(launcher: Launcher) -> None:
    """A reload on a shared FIFO (an LVS site) while the old reader A is stopped with 500 lines in the
    pipe and journal writes of 20 ms (_late_old_reader).  A gets the CPU back once the next reader B
    waits for it, reads 4 KiB at a time (stopping), which end inside a line, and its window closes
    while it journals them.  The line its last read stopped inside is A's to read to its end (so B
    starts at a line) and to say LOST with the others (red team: B logged "line 1 rejected (unknown
    type ']:tcp:80' ...)", the first half gone with A unsaid)."""
    k = launcher.keepalived("--handler", "")
    with _late_old_reader(launcher, k, lines=500, usec=20000) as a:
        killer = k.reload(same_fifo=True)
        launcher.wait_for("B waits for A", lambda: launcher.log_text().count("| reader started") >= 2, timeout=30)
    killer.join()
    launcher.wait_for("A gone, B journaled", lambda: not processes.running(a) and launcher.last_seq() >= 2, timeout=30)
    launcher.wait_for("B read the rest", lambda: k.unread() == 0, timeout=30)
    launcher.unchecked = "checked here"
    k.stop([VI.format("STOP")])
    log = launcher.log_text()
    run = inspect_run(launcher.state, launcher.dir, launcher.log, expect_lines=k.lines, stops=1)
    rejected = [line for line in log.splitlines() if "rejected" in line]
    assert not rejected, ("a line torn in two", rejected, [line for line in log.splitlines() if "LOST: " in line][:1])
    assert run, str(run)
