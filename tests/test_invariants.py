"""The invariants checker (support.invariants) itself: silent on a clean run, and each kind of broken
invariant named.  The broken runs are made with the package's own writers (journal, progress, log)
and the real recorder, as a broken launcher would leave them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from notify_launcher.actions import RELEASED
from notify_launcher.config import Settings
from notify_launcher.events import Event
from notify_launcher.journal import JournalWriter
from notify_launcher.log import Log
from notify_launcher.progress import ProgressLog
from notify_launcher.records import EndRecord
from notify_launcher.settingsfile import publish
from notify_launcher.statedir import StatePaths
from support import VI, invariants, processes, recorder
from support.launcher import Launcher

STOP = Event("READER", "reader", "STOP")


def test_a_clean_run_passes_and_is_counted(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    for state in ("BACKUP", "MASTER", "FAULT"):
        k.write(VI.format(state))
    launcher.settle(3)
    k.stop([VI.format("STOP")])
    launcher.settle(5)
    report = launcher.check()
    assert (report.events, report.runs, report.stops) == (5, 4, 1), report
    assert not report.notes, report  # tree tracking on


class Run:
    """A state directory, log and records as a launcher run leaves them, written by hand."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.paths = StatePaths(str(tmp / "state"))
        os.mkdir(self.paths.root, 0o700)
        self.journal = JournalWriter(self.paths.journal)
        self.progress = ProgressLog(self.paths.progress)
        self.reader = Log(str(tmp / "launcher.log"), "reader")
        self.worker = Log(str(tmp / "launcher.log"), "worker")
        self.rec = tmp / recorder.RECORDS
        self.handler = recorder.install(tmp / "handler.sh", records=self.rec)
        recorder.track_trees(self.rec)

    def receive(self, event: Event) -> int:
        seq = self.journal.append(event, time.time(), 1)
        self.reader.info(seq, event, "received")
        return seq

    def act(self, seq: int, event: Event, *, end: bool = True) -> None:
        """The recorder's action for it, as the worker runs it; then the end line and record."""
        subprocess.run([str(self.handler), *event.fields()], env=dict(os.environ, NL_SEQ=str(seq)), check=True)
        if end:
            self.end(seq, event)

    def end(self, seq: int, event: Event) -> None:
        self.worker.info(seq, event, "action ended: exit 0 after 0.002s")
        self.progress.record(EndRecord(op="end", seq=seq, t=time.time(), key=event.key, event=str(event),
                                       state=event.state, result="exit 0", ok=True))

    def report(self, **options: object) -> invariants.Report:
        return invariants.inspect_run(self.paths.root, **options)  # type: ignore[arg-type]


def _vi(state: str) -> Event:
    return Event("INSTANCE", "VI_1", state, 100)


def test_lost_duplicated_and_out_of_order_are_named(tmp_path: Path) -> None:
    run = Run(tmp_path)
    for state in ("BACKUP", "MASTER", "FAULT", "BACKUP"):
        run.receive(_vi(state))
    run.act(2, _vi("MASTER"))
    run.act(1, _vi("BACKUP"))  # after #2
    run.act(3, _vi("FAULT"))
    run.act(3, _vi("FAULT"))  # twice; #4 never
    report = run.report()
    assert report.lost == ['#4 INSTANCE "VI_1" BACKUP 100: journaled 1x, ended 0x'], report
    assert any(text.startswith('#3 INSTANCE "VI_1" FAULT 100: ended 2x') for text in report.duplicated), report
    assert "#3: its action ran to its end 2 times, 0 workers died on it" in report.duplicated, report
    assert any(text.startswith("#1 ended after #2") for text in report.out_of_order), report
    assert "action #1 (INSTANCE VI_1 BACKUP 100) started after #2" in report.out_of_order, report
    with pytest.raises(AssertionError, match="lost"):
        invariants.check_run(run.paths.root)


def test_a_reused_number_is_named(tmp_path: Path) -> None:
    """The torn-journal case: the last line cut in half, a new reader gives its number again, and
    that event never runs (the progress file has the number done)."""
    run = Run(tmp_path)
    for state in ("BACKUP", "MASTER"):
        run.act(run.receive(_vi(state)), _vi(state))
    data = Path(run.paths.journal).read_bytes()
    with open(run.paths.journal, "r+b") as fh:  # #2's line lost whole
        fh.truncate(data.rfind(b"\n", 0, len(data) - 1) + 1)
    run.journal = JournalWriter(run.paths.journal, floor=lambda: 0)  # a next reader blind to the progress file
    assert run.receive(_vi("FAULT")) == 2
    report = run.report()
    assert any(text.startswith("#2 given 2 times") for text in report.numbering), report
    assert report.lost == ['#2 INSTANCE "VI_1" FAULT 100: journaled 2x, ended 1x'], report


def test_overlapping_and_surviving_trees_are_named(tmp_path: Path) -> None:
    """An action whose setsid'd child outlives it: the next action starts beside that tree, and the
    child is still alive at the end."""
    run = Run(tmp_path)
    for state in ("BACKUP", "MASTER"):
        run.receive(_vi(state))
    leaver = recorder.install(tmp_path / "leaver.sh", records=run.rec, then="setsid sleep 60 </dev/null >/dev/null 2>&1 &")
    subprocess.run([str(leaver), *_vi("BACKUP").fields()], env=dict(os.environ, NL_SEQ="1"), check=True)
    run.end(1, _vi("BACKUP"))
    try:
        run.act(2, _vi("MASTER"))
        report = run.report()
        assert report.overlaps == ["#2 started while the process tree of #1 was alive"], report
        assert len(report.left_alive) == 1 and "of #1's action tree" in report.left_alive[0], report
    finally:
        _end_trees(run)
    assert not run.report().left_alive


def test_a_released_leftover_is_no_overlap_but_an_unreleased_one_is(tmp_path: Path) -> None:
    """What an action that exited normally left running is released when the worker's log names it
    (actions.RELEASED): the next action beside it is no overlap, and it alive at the end is not
    left alive.  The same leftover with no such line (a timed-out action's) stays both."""
    run = Run(tmp_path)
    for state in ("BACKUP", "MASTER"):
        run.receive(_vi(state))
    pidfile = tmp_path / "leftover.pid"
    leaver = recorder.install(tmp_path / "leaver.sh", records=run.rec,
                              then=f"setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}")
    subprocess.run([str(leaver), *_vi("BACKUP").fields()], env=dict(os.environ, NL_SEQ="1"), check=True)
    run.end(1, _vi("BACKUP"))
    try:
        run.act(2, _vi("MASTER"))
        unreleased = run.report()
        assert unreleased.overlaps and unreleased.left_alive, unreleased
        run.worker.warn(1, _vi("BACKUP"), f"{RELEASED}: {pidfile.read_text().strip()} (sleep)")
        released = run.report()
        assert not released.overlaps and not released.left_alive, released
    finally:
        _end_trees(run)


def _end_trees(run: Run) -> None:
    """SIGKILL every process holding the run's tree lock, and wait until they are gone (a killed
    process holds the lock until it has exited)."""
    holders = []
    for pid, _, _ in invariants.tree_holders(run.rec.with_name(run.rec.name + recorder.TREE)):
        try:
            holders.append(processes.psutil.Process(pid))
        except processes.psutil.NoSuchProcess:
            pass
    processes.kill(holders)
    processes.wait_gone(holders, 30)


def test_lines_dropped_without_a_log_line_are_named(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.receive(_vi("BACKUP"))
    run.act(1, _vi("BACKUP"))
    written = [VI.format("BACKUP"), VI.format("MASTER")]
    report = run.report(expect_lines=written)
    assert len(report.unlogged_drops) == 1 and "INSTANCE \"VI_1\" MASTER 100" in report.unlogged_drops[0], report
    run.reader.error(None, None, "LOST: 1 events could not be journaled before exit")
    assert run.report(expect_lines=written), "a drop the log admits is no silent drop"


def test_a_line_journaled_twice_where_it_was_written_once_is_named(tmp_path: Path) -> None:
    """A spill file numbered twice (its writer killed after numbering it, before removing it): the
    line keepalived wrote once has two numbers, the second journaled late by the adopter.  A line
    written twice and journaled twice is no duplicate."""
    run = Run(tmp_path)
    for state in ("BACKUP", "MASTER", "BACKUP"):
        run.act(run.receive(_vi(state)), _vi(state))
    seq = run.journal.append(_vi("MASTER"), time.time(), 1)
    assert seq == 4
    run.worker.info(seq, _vi("MASTER"), "received (journaled late: spilled by pid 1 while the journal's lock was busy)")
    run.act(seq, _vi("MASTER"))
    report = run.report(expect_lines=[VI.format(state) for state in ("BACKUP", "MASTER", "BACKUP")])
    assert report.duplicated == ['INSTANCE "VI_1" MASTER 100: written 1x, journaled as #2, #4 (late: #4)'], report
    assert run.report(expect_lines=[VI.format(state) for state in ("BACKUP", "MASTER", "BACKUP", "MASTER")]), \
        "a line written twice may be journaled twice"


def test_a_drop_the_log_names_excuses_that_line_only(tmp_path: Path) -> None:
    """A written line missing from where it belongs (here journaled out of order) is not excused by a
    LOST line that names another event; it is by one naming it (as an event, or as a line read and
    not parsed), or by a LOST count beyond the lines it names."""
    run = Run(tmp_path)
    for seq, state in enumerate(("BACKUP", "FAULT", "MASTER"), 1):
        run.receive(_vi(state))
        run.act(seq, _vi(state))
    written = [VI.format("BACKUP"), VI.format("MASTER"), VI.format("FAULT")]
    run.reader.error(None, None, "LOST: 1 events not journaled (the window closed)")
    run.reader.error(None, _vi("STOP"), "LOST: not journaled")
    report = run.report(expect_lines=written)
    assert len(report.unlogged_drops) == 1 and 'INSTANCE "VI_1" FAULT 100' in report.unlogged_drops[0], report
    run.reader.error(None, None, "LOST: 1 events not journaled (the window closed; 1 of them lines read from "
                                 "the FIFO, not yet parsed)")
    run.reader.error(None, None, f"LOST: not journaled (read, not parsed): {VI.format('FAULT')}")
    assert run.report(expect_lines=written), "the drop of that line, said by name"
    run.reader.error(None, None, "LOST: 2 events not journaled (the window closed)")
    run.reader.error(None, _vi("STOP"), "LOST: not journaled")
    written.append(VI.format("BACKUP"))
    assert run.report(expect_lines=written), "one more counted than named"
    written.append(VI.format("MASTER"))
    assert run.report(expect_lines=written).unlogged_drops, "two more missing than said"


def test_a_stop_without_its_stop_action_is_named(tmp_path: Path) -> None:
    run = Run(tmp_path)
    assert run.report(stops=1).stop_window == ["keepalived stopped the reader 1x, 0 STOP journaled"]
    publish(run.paths, Settings(state_dir=run.paths.root, stop_action=("/bin/true",)))
    seq = run.receive(STOP)
    run.worker.info(seq, STOP, "no action configured for this event")
    report = run.report(stops=1)
    assert report.stop_window == ["#1 READER reader STOP: stop_action /bin/true never ended"], report
