"""Bytes without a final newline on the FIFO, through a real reader and worker: never dropped
without a log line, never glued onto keepalived's next line (docs/keepalived.md: keepalived writes
each line whole, with one write; an administrator's `echo -n` does not)."""

from __future__ import annotations

import os
import subprocess

from support import VI, processes
from support.launcher import Launcher


def _echo_n(launcher: Launcher, text: str) -> None:
    """An administrator's `echo -n TEXT > FIFO`: another writer, its own open, one write, close."""
    subprocess.run(["sh", "-c", 'printf %s "$1" > "$2"', "sh", text, str(launcher.fifo)], check=True, timeout=60)


def _actions(launcher: Launcher) -> list[list[str]]:
    return [r.args[:3] for r in launcher.starts()]


def test_an_echo_n_while_the_reader_runs_is_a_line_of_its_own_and_the_stop_lines_run(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    assert k.write(VI.format("MASTER"))
    launcher.settle(1)
    _echo_n(launcher, "hello")
    launcher.wait_for("the unterminated line in the log", lambda: "hello; taken as a line of its own" in launcher.log_text())
    report = k.stop([VI.format("STOP")])
    assert not report.killed
    launcher.settle(3)  # MASTER, STOP, READER STOP
    assert _actions(launcher) == [["INSTANCE", "VI_1", "MASTER"], ["INSTANCE", "VI_1", "STOP"]]
    log = launcher.log_text()
    assert "line 2 has no newline at its end (5 bytes, and nothing followed them): hello" in log
    assert "line 2 rejected (unknown type 'hello'" in log


def test_bytes_left_in_the_pipe_before_keepalived_stop_do_not_swallow_its_stop_line(launcher: Launcher) -> None:
    """What a reader finds when an `echo -n` came while no reader read: those bytes and keepalived's
    STOP line in the pipe as one run of bytes."""
    k = launcher.keepalived()
    k.start()
    assert k.write(VI.format("MASTER"))
    launcher.settle(1)
    report = k.stop(["garbage " + VI.format("STOP")])  # one write: the bytes as the pipe holds them
    assert not report.killed
    launcher.settle(3)
    assert _actions(launcher) == [["INSTANCE", "VI_1", "MASTER"], ["INSTANCE", "VI_1", "STOP"]]
    log = launcher.log_text()
    assert ("line 2 has no newline at its end (8 bytes, and a line keepalived writes came right after them): "
            "garbage ; taken as a line of its own") in log
    assert "READER reader STOP" in log


def test_a_whole_event_without_its_newline_runs_and_is_said(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    _echo_n(launcher, VI.format("BACKUP"))
    launcher.settle(1)
    assert _actions(launcher) == [["INSTANCE", "VI_1", "BACKUP"]]
    assert k.write(VI.format("MASTER"))
    launcher.settle(2)
    assert _actions(launcher) == [["INSTANCE", "VI_1", "BACKUP"], ["INSTANCE", "VI_1", "MASTER"]]
    assert f"line 1 has no newline at its end (26 bytes, and nothing followed them): {VI.format('BACKUP')}" \
        in launcher.log_text()
    k.stop([])


def test_bytes_without_a_newline_before_a_reload_are_not_dropped(launcher: Launcher) -> None:
    """A reload closes the FIFO (EOF): the old reader must not take what it holds with it."""
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    k.write_raw(VI.format("FAULT").encode())
    k.reload().join()
    launcher.settle(2)  # FAULT, READER RELOAD
    assert _actions(launcher) == [["INSTANCE", "VI_1", "FAULT"]]
    # (the stop waits for the next reader's start: a SIGTERM in its Python start-up is a stated limit)
    launcher.wait_for("the next reader started", lambda: launcher.log_text().count("| reader started") == 2)
    k.stop([])
def test_bytes_written_before_a_reload_while_the_reader_starts_are_not_dropped(launcher: Launcher) -> None:
    """keepalived reloads (SIGTERM, EOF, a new FIFO for the next reader) while the reader is still
    starting: the FIFO open, its loop not yet.  What keepalived wrote before the
    reload is in the old FIFO, which no other reader will ever open: the reader reads it before it
    leaves.  Before, seeing the next reader, it left the FIFO unread: the event was lost without a
    log line (red team, CI under load, 2026-12-05).  Whether the reload lands before the loop
    depends on the machine (that is when it failed); either way the event must run.  (Before the
    reader opens the FIFO nothing can be done: keepalived's close of the old one discards what it held.)"""
    k = launcher.keepalived()
    k.start()
    assert k.proc is not None
    fifo = os.path.realpath(k.fifo)
    launcher.wait_for("the reader to open the FIFO", lambda: fifo in processes.open_files(k.proc.pid))
    k.write_raw(VI.format("FAULT").encode())
    k.reload().join()
    launcher.settle(2)  # FAULT, READER RELOAD
    assert _actions(launcher) == [["INSTANCE", "VI_1", "FAULT"]]
    # (the stop waits for the next reader's start: a SIGTERM in its Python start-up is a stated limit)
    launcher.wait_for("the next reader started", lambda: launcher.log_text().count("| reader started") == 2)
    k.stop([])
