"""The state directory as an unlucky machine and a careless operator leave it: a torn journal, a
journal lock held by a stalled process, a compaction's fsync on a stalling disk, a removed doorbell,
a reload that changes the handler.  Real readers, workers, FIFOs, signals and strace's delay
injection; the invariants checker runs after each (the launcher fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable

import psutil
import pytest

from notify_launcher import containment
from support import LAUNCHER, VI, processes
from support.launcher import Launcher
from support.marks import needs
from support import recorder

QUIET = 'INSTANCE "VI_1" MASTER_RX_LOWER_PRI 100'  # journaled and run through, no action: fast


def _stop_ran(launcher: Launcher) -> bool:
    return any(r.args[:3] == ["READER", "reader", "STOP"] for r in launcher.starts())


def _two_events_and_a_stop(launcher: Launcher) -> None:
    """BACKUP, MASTER, then keepalived stops: three events run, and the worker has left."""
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("BACKUP"))
    k.write(VI.format("MASTER"))
    launcher.settle(2)
    k.stop([])
    launcher.settle(3)  # + the reader's STOP
    launcher.wait_for("the worker to leave", lambda: not launcher.launcher_processes())


def test_a_torn_journal_line_never_makes_the_next_event_look_done(launcher: Launcher) -> None:
    """Power loss mid-append leaves '3' of the journal's last line (the reader's STOP, which the
    progress file marks done); keepalived starts again.  The next event is numbered above the torn
    line's #3, so the worker does not take it for done: it runs."""
    _two_events_and_a_stop(launcher)
    journal = launcher.state / "journal"
    data = journal.read_bytes()
    journal.write_bytes(data[:data.rfind(b"\n", 0, len(data) - 1) + 2])  # '3' survived, its number unreadable
    again = launcher.keepalived()
    again.start()
    again.write(VI.format("FAULT"))
    launcher.wait_for("the FAULT event's action", lambda: any(r.args[2:3] == ["FAULT"] for r in launcher.starts()))
    assert [r.seq for r in launcher.starts()] == [1, 2, 4]
    log = launcher.log_text()
    assert "its last line was torn (a writer or the machine died while writing it) and is cut off: an event " \
           "whose number cannot be read (1 bytes: b'3')" in log, log[-3000:]
    again.stop([])


def test_the_stop_is_journaled_while_a_stopped_process_holds_the_journal_lock(launcher: Launcher) -> None:
    """A process holding the journal's lock is stopped (SIGSTOP; a frozen cgroup, a paused VM do the
    same).  The reader does not wait for the lock until keepalived's SIGKILL at +1 s: its events go
    into its spill file after 50 ms, and the worker journals and runs them (the STOP, its
    stop_action) once the lock is free."""
    launcher.stop_action()
    k = launcher.keepalived("--linger", "600")
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, signal, sys\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "os.kill(os.getpid(), signal.SIGSTOP)\n", str(launcher.state / "journal")])
    try:
        launcher.wait_for("the lock holder to stop", lambda: psutil.Process(holder.pid).status() == psutil.STATUS_STOPPED)
        report = k.stop([VI.format("STOP")])
        assert not report.killed, f"the reader was SIGKILLed at +1 s:\n{launcher.log_text()[-3000:]}"
        assert "the journal's lock stayed busy for 0.05s (held by pid" in launcher.log_text()
        assert not _stop_ran(launcher)
    finally:
        holder.kill()
        holder.wait()
    launcher.wait_for("the stop_action", lambda: _stop_ran(launcher))
    launcher.settle(3)
    log = launcher.log_text()
    assert "#3 READER reader STOP | received (journaled late: spilled by pid" in log, log[-3000:]
    assert not (launcher.state / "spill").exists()


@needs("strace (Debian's strace: scripts/setup installs it)", shutil.which("strace") is not None)
def test_the_stop_is_journaled_while_a_compaction_waits_on_a_stalling_disk(launcher: Launcher) -> None:
    """The worker compacts the journal while the disk stalls its fsync for 5 s (strace's delay
    injection).  The compaction's lock covers only the rename, not that fsync: the reader's STOP is
    journaled well before keepalived's SIGKILL at +1 s."""
    launcher.stop_action()
    k = launcher.keepalived("--linger", "600")
    k.start()
    worker = launcher.wait_standby()
    strace = subprocess.Popen(["strace", "-e", "trace=fsync", "-e", "inject=fsync:delay_enter=5000000",
                               "-p", str(worker)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert strace.stderr is not None
        line = strace.stderr.readline()
        assert "attached" in line, line
        for _ in range(1000):  # more than the 64 KiB that makes the worker compact once idle
            k.write(QUIET)
        k.write(VI.format("BACKUP"))
        launcher.wait_for("the compaction's fsync", lambda: (launcher.state / f"journal.{worker}.new").exists())
        report = k.stop([VI.format("STOP")])
        assert not report.killed, f"the reader was SIGKILLed at +1 s:\n{launcher.log_text()[-3000:]}"
        launcher.wait_for("the stop_action", lambda: _stop_ran(launcher))
        # it gave up on seeing the STOP appended meanwhile, and tries again once idle
        launcher.wait_for("the compaction", lambda: "journal compacted" in launcher.log_text())
    finally:
        strace.terminate()
        strace.wait()


def test_a_removed_doorbell_is_bound_again_and_the_next_event_runs(launcher: Launcher) -> None:
    """doorbell.sock removed while a worker stands by, then keepalived starts again: the new reader's
    rings go nowhere and the worker it spawns queues behind the lock.  The reader wakes the worker
    holding the lock, which binds a new socket, says so, and runs the event, long before that
    worker's linger (10 minutes here) would end it."""
    k = launcher.keepalived("--linger", "600")
    k.start()
    worker = launcher.wait_standby()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    (launcher.state / "doorbell.sock").unlink()
    k.stop([])
    launcher.settle(2)  # the reader's STOP: its ring reached the worker through its connected socket
    again = launcher.keepalived("--linger", "600")
    again.start()
    again.write(VI.format("MASTER"))
    launcher.wait_for("the MASTER event's action", lambda: any(r.args[2:3] == ["MASTER"] for r in launcher.starts()))
    assert [r.seq for r in launcher.starts()] == [1, 3]
    assert f"worker[{worker}] WARN  #- - | {launcher.state}/doorbell.sock was removed (rings to it reached " \
           f"nobody); listening on a new one" in launcher.log_text()
    assert (launcher.state / "doorbell.sock").exists()
    again.stop([])


def test_events_journaled_before_a_reload_run_with_the_handler_they_were_journaled_under(launcher: Launcher) -> None:
    """A reload that changes --handler while an event waits behind a running action: each event runs
    with the settings it was journaled under, not the new handler the worker reads from
    settings.json at its next batch."""
    first = launcher.handler
    second = launcher.dir / "second.sh"
    second.write_text(f"#!/bin/sh\nexec {first} second \"$@\"\n")
    second.chmod(0o755)
    gate = launcher.gate_backup()  # the BACKUP action runs until the gate opens: the next event waits behind it
    k = launcher.first_action_running("--linger", "600")
    k.write(VI.format("MASTER"))
    launcher.wait_for("the MASTER event journaled", lambda: launcher.last_seq() >= 2)
    k.script = launcher.argv("--linger", "600", "--handler", str(second))  # keepalived.conf changed
    k.reload().join()
    launcher.wait_for("the new reader's settings", lambda: str(second) in (launcher.state / "settings.json").read_text())
    k.write(VI.format("FAULT"))
    launcher.wait_for("the FAULT event journaled", lambda: launcher.last_seq() >= 4)  # (#3: the old reader's RELOAD)
    gate.touch()
    launcher.settle(4)
    runs = [" ".join(r.args[:4]) for r in launcher.starts()]
    assert runs == ["INSTANCE VI_1 BACKUP 100", "INSTANCE VI_1 MASTER 100", "second INSTANCE VI_1 FAULT"], runs
    k.stop([])


def test_damaged_and_torn_progress_records_are_said_and_never_glued_to_the_next(launcher: Launcher) -> None:
    """A record changed on disk and a record torn at the end (a worker or the machine died while
    writing it): the next worker cuts the torn tail off rather than append to it, logs both with
    their event's number rather than skip them silently, and every record it writes is intact."""
    _two_events_and_a_stop(launcher)
    progress = launcher.state / "progress"
    lines = progress.read_bytes().split(b"\n")
    first_end = next(n for n, line in enumerate(lines) if b'"op": "end", "seq": 1,' in line)
    lines[first_end] = lines[first_end].replace(b'"exit 0"', b'"exit 9"')
    progress.write_bytes(b"\n".join(lines) + b'{"op": "end", "seq": 3, "t')
    again = launcher.keepalived()
    again.start()
    again.write(VI.format("FAULT"))
    launcher.settle(4)
    assert [r.seq for r in launcher.starts()] == [1, 2, 4]  # #1's end damaged, but #2 ended after it
    log = launcher.log_text()
    assert f"ERROR #3 - | {progress}: its last record was torn" in log, log[-3000:]
    assert f"ERROR #1 - | {progress}: damaged record skipped" in log, log[-3000:]
    after = progress.read_bytes().split(b"\n")
    assert after[-1] == b"" and all(line.endswith(b'"}') for line in after[:-1] if line != lines[first_end]), after
    again.stop([])


def test_a_directory_in_spill_never_stops_the_queue(launcher: Launcher) -> None:
    """A directory in spill/ (an operator's mkdir, a restore) is logged and left alone: the worker
    reads its journal on, and the next event runs."""
    k = launcher.keepalived()
    k.start()
    assert k.write(VI.format("BACKUP"))
    launcher.wait_for("BACKUP's action", lambda: any(r.state == "BACKUP" for r in launcher.starts()))
    (launcher.state / "spill" / "999").mkdir(parents=True)
    assert k.write(VI.format("MASTER"))
    launcher.wait_for("MASTER's action", lambda: any(r.state == "MASTER" for r in launcher.starts()))
    k.stop([])
    launcher.wait_idle()
    assert f"{launcher.state}/spill/999 is a directory, not a spill file: left alone" in launcher.log_text()


CGROUPS = containment.own_cgroup() is not None and os.geteuid() == 0


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_a_state_directory_removed_mid_action_never_runs_two_actions(launcher: Launcher) -> None:
    """The state directory is removed while #1's action runs; the reader makes it again, journals
    #2 and spawns a worker for the new worker.lock.  That worker finds the first one alive in its
    action cgroup (named by the state directory's path) and waits for it to finish #1 and leave
    before it runs #2: never two actions at once (the fixture's checker: no overlap)."""
    gate = launcher.gate_backup()

    def then() -> None:
        assert [r.state for r in launcher.starts()] == ["BACKUP"]
        gate.touch()

    _state_dir_removed_mid_action(launcher, then)


def _state_dir_removed_mid_action(launcher: Launcher, then: Callable[[], None]) -> None:
    """#1 (BACKUP) runs; the state directory is removed and #2 (MASTER) written; once the new worker
    waits for the first one, `then()`; #2 runs, keepalived stops: never two actions at once."""
    k = launcher.first_action_running()
    shutil.rmtree(launcher.state)
    k.write(VI.format("MASTER"))
    launcher.wait_for("the second worker to wait", lambda: "waiting for it to leave" in launcher.log_text())
    then()
    launcher.wait_for("MASTER's action", lambda: any(r.state == "MASTER" for r in launcher.starts()))
    k.stop([])
    launcher.wait_idle()
    launcher.unchecked = ("the state directory was removed: the new one numbers from #1 again; "
                          "the overlap the checker would see is asserted on here")
    assert [r for r in launcher.records() if r.kind == "overlap"] == [], launcher.log_text()


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_a_new_worker_waits_for_the_old_one_through_its_timeouts_kill_grace(launcher: Launcher) -> None:
    """As above, but #1 times out and ignores SIGTERM: its worker leaves its action cgroup to end it
    (so that killing the cgroup cannot kill the worker) and the tree lives on through kill_grace.
    The new worker must wait through that too, not take the worker's leaving its cgroup for the
    action's end: before, it ran #2 while #1's tree was alive (records: `overlap 2 ... 1`).
    (Red team, 2026-12-05.)"""
    recorder.install(launcher.handler, records=launcher.rec, sleeps=launcher.dir / "sleeps",
                     then='if [ "$3" = BACKUP ]; then trap "" TERM; sleep 600; fi')
    ini = launcher.dir / "nl.ini"
    ini.write_text("[launcher]\nkill_grace = 5\n")
    launcher.extra_args += ["--config", str(ini), "--timeout", "2"]
    _state_dir_removed_mid_action(launcher, lambda: None)
    assert "timeout of 2s reached" in launcher.log_text()


@needs("strace", shutil.which("strace") is not None)
def test_a_worker_whose_lock_was_removed_mid_compaction_leaves_the_new_workers_files_alone(launcher: Launcher) -> None:
    """worker.lock and doorbell.sock are removed while the first worker compacts the progress file
    and its fsync stalls (a slow disk: strace delays it 8 s); keepalived reloads, and the new worker
    runs five new events meanwhile.  The first worker must not rename its copy, built before them,
    over the new worker's progress file: it asks right before the rename whether worker.lock is
    still its own.  Before, it did: `status` said done #N-6 though #N ran, and `wait` never
    returned (the journal's last event above the progress file's done mark; a later worker would
    run it again).  (Red team, 2026-12-05.)"""
    k = launcher.keepalived("--linger", "600")
    k.start()
    first = launcher.wait_standby()
    temp = launcher.state / f"progress.{first}.new"
    tracer = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-p", str(first), "-P", str(temp),
                               "-e", "trace=fsync", "-e", "inject=fsync:delay_enter=8000000:when=1"])
    try:
        launcher.wait_for("strace to attach", lambda: processes.traced(first))
        sent = 0
        while not temp.exists():  # bursts until a compaction starts (its temporary file), stalled in its fsync
            for i in range(sent, sent + 100):
                assert k.write(f'INSTANCE "VI_{i % 10}" {"MASTER" if i % 2 else "BACKUP"} 100')
            sent += 100
            launcher.settle(sent)
        (launcher.state / "worker.lock").unlink()
        (launcher.state / "doorbell.sock").unlink()
        k.reload().join()
        launcher.wait_for("the new reader", lambda: launcher.log_text().count("reader started") == 2)
        for state in ("BACKUP", "MASTER", "FAULT", "BACKUP", "MASTER"):
            assert k.write(VI.format(state))
        newest = sent + 5 + 1  # + the first reader's RELOAD
        launcher.settle(newest)
        launcher.wait_for("the stalled compaction to end", lambda: not temp.exists())
    finally:
        tracer.kill()
        tracer.wait()
    out = subprocess.run([LAUNCHER, "status", "--json", "--state-dir", str(launcher.state)],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["done_seq"] >= newest, out
    k.stop([])


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_a_removed_worker_lock_never_makes_a_live_worker_look_dead(launcher: Launcher) -> None:
    """worker.lock and doorbell.sock are removed while #1's action runs; keepalived reloads.  The
    new reader spawns a worker for a new worker.lock; it finds the first worker alive in its action
    cgroup, waits for it to finish #1 and leave, and never calls it dead: #1 runs once."""
    gate = launcher.gate_backup()
    k = launcher.first_action_running()
    first = int((launcher.state / "worker.pid").read_text().split()[0])
    (launcher.state / "worker.lock").unlink()
    (launcher.state / "doorbell.sock").unlink()
    k.reload()
    launcher.wait_for("the new reader", lambda: launcher.log_text().count("reader started") == 2)
    launcher.wait_for("the second worker to wait", lambda: "waiting for it to leave" in launcher.log_text())
    assert psutil.pid_exists(first)
    gate.touch()
    k.stop([])
    launcher.settle(3)
    assert [r.seq for r in launcher.starts() if r.seq == 1] == [1]
    assert "died while this event's action" not in launcher.log_text()


@pytest.mark.parametrize("made_by", ["the reader", "systemd"])
def test_a_brand_new_state_directory_logs_no_error(launcher: Launcher, made_by: str) -> None:
    """A fresh install: the reader makes the state directory (or finds it empty, as systemd's
    RuntimeDirectory= leaves it) and journals its first line before any worker ran.  The first
    worker finds no progress file, but none was ever written: nothing may say ERROR."""
    if made_by == "systemd":
        launcher.state.mkdir(mode=0o755)
    k = launcher.keepalived()
    k.start()
    assert k.write(VI.format("MASTER"))
    launcher.settle(1)
    k.stop([])
    log = launcher.log_text()
    assert "ERROR" not in log and "progress file missing" not in log, log


def test_a_removed_progress_file_is_said_with_the_events_that_run_again(launcher: Launcher) -> None:
    """The progress file is removed while the queue is idle: the next worker cannot know which
    journaled events finished; it says at ERROR which numbers run again before it runs them."""
    k = launcher.keepalived()
    k.start()
    assert k.write(VI.format("BACKUP"))
    assert k.write(VI.format("MASTER"))
    launcher.settle(2)
    k.stop([])
    launcher.settle(3)
    launcher.wait_for("the worker to leave", lambda: not launcher.launcher_processes())
    (launcher.state / "progress").unlink()
    again = launcher.keepalived()
    again.start()
    launcher.wait_started()
    assert again.write(VI.format("FAULT"))
    launcher.wait_for("FAULT's action", lambda: any(r.state == "FAULT" for r in launcher.starts()))
    again.stop([])
    assert "ERROR #- - | progress file missing: events #" in launcher.log_text()
    launcher.unchecked = "the events before the removal run again: the stated limit (docs/invariants.md, 1)"
