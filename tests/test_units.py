"""The reader's and the worker's logic, in-process: built without side effects, driven step by step.

Real files, sockets and pipes in a temp dir; no fork (the process tests do that).  A bound
DoorbellListener plays the running worker, so a ring is answered and nothing is spawned.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from notify_launcher import pidfile
from notify_launcher.config import Settings
from notify_launcher.events import Event
from notify_launcher.handoff import DoorbellListener, WorkerWatch
from notify_launcher.identity import is_running
from notify_launcher.journal import read_all
from notify_launcher.lines import LineSplitter
from notify_launcher.log import Log
from notify_launcher.reader import KICK_MIN, STOP_QUIET, Reader
from notify_launcher.statedir import ensure_state_dir

VI = Event("INSTANCE", "VI_1", "MASTER", 100)


# -- line splitting -----------------------------------------------------------------------------

@given(st.lists(st.binary(max_size=60), max_size=30), st.lists(st.integers(0, 400), max_size=10))
def test_lines_do_not_depend_on_where_reads_end(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"\n".join(lines) + b"\n"
    whole = LineSplitter(50).feed(stream)
    pieces, at, splitter = [], 0, LineSplitter(50)
    for cut in sorted(cuts):
        pieces += splitter.feed(stream[at:cut])
        at = max(at, cut)
    pieces += splitter.feed(stream[at:])
    assert pieces == whole
    assert all(len(line) <= 50 or b"\n" not in line for line in whole)


def test_an_overlong_line_is_handed_on_once_then_skipped_to_its_newline() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b"a" * 25) == [b"a" * 25]
    assert splitter.feed(b"b" * 25) == []
    assert splitter.feed(b"c\nok\n") == [b"ok"]


# -- the reader ---------------------------------------------------------------------------------

def _reader(tmp: Path, **settings: object) -> tuple[Reader, DoorbellListener]:
    paths = ensure_state_dir(str(tmp / "state"))
    s = Settings(state_dir=paths.root, log_file=str(tmp / "log"), **settings)  # type: ignore[arg-type]
    reader = Reader(s, paths, -1, str(tmp / "fifo"), Log(s.log_file, "reader"), "daemon")
    worker_side = DoorbellListener(paths, os.pipe()[0])
    worker_side.open()
    return reader, worker_side


def test_events_wait_in_memory_in_order_while_the_journal_cannot_be_written(tmp_path: Path) -> None:
    reader, _ = _reader(tmp_path)
    journal = Path(reader.paths.journal)
    journal.mkdir()  # not a file: every append fails (EISDIR), as on a broken disk
    for state in ("BACKUP", "MASTER", "FAULT"):
        reader._submit(Event("INSTANCE", "VI_1", state, 100))
    assert [e.state for e, _ in reader.backlog] == ["BACKUP", "MASTER", "FAULT"]
    log = Path(reader.settings.log_file).read_text()
    assert log.count("cannot write the journal") == 1, "logged once, not once per event"
    journal.rmdir()
    reader._flush_backlog()
    assert not reader.backlog
    assert [(e.seq, e.event.state) for e in read_all(str(journal))] == [(1, "BACKUP"), (2, "MASTER"), (3, "FAULT")]
    assert "journal: working again" in Path(reader.settings.log_file).read_text()


def test_a_removed_state_directory_is_made_again(tmp_path: Path) -> None:
    reader, _ = _reader(tmp_path)
    reader._submit(VI)
    for name in os.listdir(reader.paths.root):
        os.unlink(os.path.join(reader.paths.root, name))
    os.rmdir(reader.paths.root)
    reader._submit(VI)  # fails (no directory), repairs, holds
    reader._flush_backlog()
    assert not reader.backlog
    assert os.stat(reader.paths.root).st_mode & 0o777 == 0o700
    assert os.path.exists(reader.paths.settings), "settings.json published again"
    assert [e.seq for e in read_all(reader.paths.journal)] == [2], "numbering went on above #1"


def test_stop_grace_ends_early_once_every_instance_reported_stop(tmp_path: Path) -> None:
    reader, _ = _reader(tmp_path, stop_grace=0.5)
    reader.term_at = time.monotonic()
    assert not reader._stop_complete()  # nothing known yet: wait for the STOP lines
    reader._line(b'INSTANCE "VI_1" MASTER 100')
    reader._line(b'GROUP "G1" MASTER 0')
    reader._line(b'INSTANCE "VI_1" STOP 100')
    assert not reader._stop_complete()
    reader._line(b'GROUP "G1" STOP 0')
    assert not reader._stop_complete(), "a STOP line of one we never saw may follow in the same burst"
    reader._last_line_at -= STOP_QUIET
    assert reader._stop_complete()
    reader.states.clear()
    reader.term_at = time.monotonic() - 0.6
    assert reader._stop_complete(), "the grace is over"


def test_crash_back_off_grows_and_a_worker_taking_over_resets_it(tmp_path: Path) -> None:
    reader, _ = _reader(tmp_path)
    delays = []
    for _ in range(4):
        reader._worker_news("worker pid 1 died without finishing")
        assert reader._kick_at is not None
        delays.append(round(reader._kick_at - time.monotonic(), 1))
        reader._kick_at = None
    assert delays == [KICK_MIN, 2 * KICK_MIN, 4 * KICK_MIN, 8 * KICK_MIN]
    hello_w = reader.watch.new_child()
    os.write(hello_w, f"{os.getpid()}\n".encode())
    os.close(hello_w)
    for fd, _ in reader.poller.poll(1000):
        reader._watched(fd)
    assert reader._kick_delay == KICK_MIN and reader.watch.pid == os.getpid()


def test_an_unforeseen_state_word_is_warned_about_once(tmp_path: Path) -> None:
    reader, _ = _reader(tmp_path)
    for _ in range(3):
        reader._line(b'INSTANCE "VI_1" SLEEPY 100')
    log = Path(reader.settings.log_file).read_text()
    assert log.count("unknown state 'SLEEPY'") == 1
    assert [e.event.state for e in read_all(reader.paths.journal)] == ["SLEEPY"] * 3


# -- worker.pid ---------------------------------------------------------------------------------

def test_a_reused_pid_is_not_taken_for_the_worker(tmp_path: Path) -> None:
    paths = ensure_state_dir(str(tmp_path / "state"))
    pidfile.write(paths)
    named = pidfile.read(paths)
    assert named is not None and named.pid == os.getpid() and is_running(named)
    Path(paths.worker_pid).write_text(f"{os.getpid()} {named.start + 1}\n")  # same pid, another process
    watch = WorkerWatch(paths, select.poll())
    assert watch.follow_named() == f"worker pid {os.getpid()} died without finishing"
    assert watch.pidfd < 0, "must not watch a process that only shares the pid"
    pidfile.remove(paths, os.getpid() + 1)
    assert os.path.exists(paths.worker_pid), "a file naming another pid is not ours to remove"


# -- progress records ----------------------------------------------------------------------------

def test_replay_checks_only_keys_the_record_types_have() -> None:
    """The replay's table of required keys (what makes a JSON line a usable record) names fields of
    the TypedDicts the worker writes: a renamed field cannot leave the check behind."""
    from notify_launcher import progress

    for op, kind in (("try", progress.TryRecord), ("start", progress.StartRecord), ("end", progress.EndRecord)):
        assert set(progress._REQUIRED[op]) <= set(kind.__annotations__) - {"op"}, op


def test_the_worker_is_found_by_its_lock_when_it_has_no_pid_file(tmp_path: Path) -> None:
    """A worker that started on a full disk has no worker.pid; the reader still finds (and so
    watches) it as the holder of worker.lock, and a waiter on the lock is not taken for it."""
    import fcntl

    paths = ensure_state_dir(str(tmp_path / "state"))
    fd = os.open(paths.worker_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert pidfile.lock_holder(paths.worker_lock) is None
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = pidfile.lock_holder(paths.worker_lock)
        assert holder is not None and holder.pid == os.getpid() and is_running(holder)
        watch = WorkerWatch(paths, select.poll())
        assert watch.follow_named() is None and watch.pid == os.getpid() and watch.pidfd >= 0
    finally:
        os.close(fd)
