"""The reader's and the worker's logic, in-process: built without side effects, driven step by step.

Real files, sockets and pipes in a temp dir; no fork (the process tests do that).  A bound
DoorbellListener plays the running worker, so a ring is answered and nothing is spawned.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import os
import pickle
import select
import shutil
import signal
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notify_launcher import pidfile
from notify_launcher.backlog import Backlog
from notify_launcher.config import Settings
from notify_launcher.events import Event, parse_line
from notify_launcher.handoff import Doorbell, DoorbellListener, WorkerWatch
from notify_launcher.identity import ProcessId, is_running
from notify_launcher.intake import Intake, pieces
from notify_launcher.journal import JournalWriter, read_all
from notify_launcher.locks import lock_holder
from notify_launcher.lines import LineSplitter
from notify_launcher.log import Log, Troubles
from notify_launcher.predecessor import Predecessor
from notify_launcher.registry import entry_path
from notify_launcher.reader import Reader
from notify_launcher.statedir import StatePaths, ensure_state_dir
from notify_launcher.stopping import SIBLING_CHECK, SIBLING_WAIT, STOP_QUIET, StopClassifier, Verdict
from notify_launcher.upkeep import KICK_MIN, BackOff, StateRepair
from notify_launcher.window import DEADLINE, StopWindow, WindowClosed
from notify_launcher.workerlink import WorkerLink
from support import VI_MASTER


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


# -- the reader's parts --------------------------------------------------------------------------

def _settings(tmp: Path, **settings: object) -> tuple[Settings, StatePaths]:
    paths = ensure_state_dir(str(tmp / "state"))
    return Settings(state_dir=paths.root, log_file=str(tmp / "log"), **settings), paths  # type: ignore[arg-type]


def _listening(paths: StatePaths) -> DoorbellListener:
    """A bound doorbell plays the running worker: a ring is answered and nothing is spawned."""
    worker_side = DoorbellListener(paths, os.pipe()[0])
    worker_side.open()
    return worker_side


def test_events_wait_in_memory_in_order_while_the_journal_cannot_be_written(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    backlog = Backlog(JournalWriter(paths.journal), Log(s.log_file, "reader"))
    journal = Path(paths.journal)
    journal.mkdir()  # not a file: every append fails (EISDIR), as on a broken disk
    journaled: list[tuple[int, str]] = []
    for state in ("BACKUP", "MASTER", "FAULT"):
        backlog.add(Event("INSTANCE", "VI_1", state, 100))
        failed = backlog.flush(lambda seq, event: journaled.append((seq, event.state)))
        assert failed is not None and failed.errno == errno.EISDIR
    assert [e.state for e in backlog.events()] == ["BACKUP", "MASTER", "FAULT"] and not journaled
    assert Path(s.log_file).read_text().count("cannot write the journal") == 1, "logged once, not once per event"
    journal.rmdir()
    assert backlog.flush(lambda seq, event: journaled.append((seq, event.state))) is None
    assert not backlog and journaled == [(1, "BACKUP"), (2, "MASTER"), (3, "FAULT")]
    assert [(e.seq, e.event.state) for e in read_all(str(journal))] == journaled
    assert "journal: working again" in Path(s.log_file).read_text()


def test_a_full_backlog_drops_its_oldest_event_and_says_so(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    backlog = Backlog(JournalWriter(paths.journal), Log(s.log_file, "reader"), limit=2)
    for state in ("BACKUP", "MASTER", "FAULT"):
        backlog.add(Event("INSTANCE", "VI_1", state, 100))
    assert [e.state for e in backlog.events()] == ["MASTER", "FAULT"]
    assert 'INSTANCE "VI_1" BACKUP 100 | DROPPED: more than 2 events wait' in Path(s.log_file).read_text()


def test_a_removed_state_directory_is_made_again(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    _listening(paths)
    log = Log(s.log_file, "reader")
    reader = Reader(s, paths, -1, str(tmp_path / "fifo"), log, WorkerLink(s, paths, select.poll(), log, "daemon"))
    reader.submit(VI_MASTER)
    shutil.rmtree(paths.root)
    reader.submit(VI_MASTER)  # fails (no directory), repairs, holds
    reader.submit(VI_MASTER)
    assert not reader.backlog
    assert os.stat(paths.root).st_mode & 0o777 == 0o700
    assert os.path.exists(paths.settings), "settings.json published again"
    assert [e.seq for e in read_all(paths.journal)] == [2, 3], "numbering went on above #1"


def test_state_repair_says_once_what_it_cannot_make_and_when_it_works_again(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    log = Log(s.log_file, "reader")
    repair = StateRepair(StatePaths(str(tmp_path / "file" / "state")), s, Doorbell(paths), Troubles(log))
    (tmp_path / "file").write_text("")  # a file where the parent directory should be
    assert not repair.repair() and not repair.repair()
    assert Path(s.log_file).read_text().count("cannot prepare the state directory") == 1
    (tmp_path / "file").unlink()
    assert repair.repair() and repair.published
    assert "state directory: working again" in Path(s.log_file).read_text()


def test_stop_grace_ends_early_once_every_instance_reported_stop() -> None:
    stop = StopClassifier(grace=0.5, next_reader=lambda: None)
    stop.sigterm(100.0)
    assert not stop.done(100.0)  # nothing known yet: wait for the STOP lines
    for line in ('INSTANCE "VI_1" MASTER 100', 'GROUP "G1" MASTER 0', 'INSTANCE "VI_1" STOP 100'):
        stop.saw([_parsed(line)], 100.1)
    assert not stop.done(100.1)
    stop.saw([_parsed('GROUP "G1" STOP 0')], 100.1)
    assert not stop.done(100.1), "a STOP line of one we never saw may follow in the same burst"
    assert stop.wake_in(100.1) == pytest.approx(STOP_QUIET)
    assert stop.done(100.1 + STOP_QUIET)
    assert stop.verdict(False, "fifo", lambda since: False) == Verdict("STOP", "SIGTERM: keepalived is stopping")


def test_a_next_reader_on_a_busy_fifo_ends_the_grace_at_once() -> None:
    """A reload during a burst on a shared FIFO: lines keep coming (never STOP_QUIET apart), and the
    next reader keepalived started must be seen anyway, or both readers read the FIFO side by side
    until the grace ends and one writer's lines are journaled out of order."""
    sibling: list[int] = []
    stop = StopClassifier(grace=0.5, next_reader=lambda: sibling[0] if sibling else None)
    stop.sigterm(100.0)
    stop.saw([_parsed('INSTANCE "B_1" MASTER 100')], 100.0)
    assert not stop.done(100.0)
    sibling.append(4242)  # keepalived started the next reader; the burst goes on
    for i in range(2, 6):
        now = 100.0 + i * 0.01
        stop.saw([_parsed(f'INSTANCE "B_{i}" MASTER 100')], now)
        if stop.done(now):
            break
    assert stop.done(now) and now < 100.0 + STOP_QUIET + SIBLING_CHECK, now
    assert stop.verdict(False, "fifo", lambda since: False).state == "RELOAD"


def test_stop_grace_ends_when_it_is_over_whatever_came() -> None:
    stop = StopClassifier(grace=0.5, next_reader=lambda: None)
    stop.sigterm(100.0)
    stop.sigterm(100.3)  # only the first SIGTERM starts the grace
    stop.saw([_parsed('INSTANCE "VI_1" MASTER 100')], 100.2)
    assert not stop.done(100.49) and stop.done(100.5)


def test_a_reader_started_after_us_makes_the_sigterm_a_reload() -> None:
    sibling: list[int] = []
    stop = StopClassifier(grace=0.5, next_reader=lambda: sibling[0] if sibling else None)
    stop.sigterm(100.0)
    assert not stop.done(100.0)
    sibling.append(4242)
    assert not stop.done(100.0 + SIBLING_CHECK / 2), "looked for it a moment ago"
    assert stop.done(100.0 + SIBLING_CHECK)
    verdict = stop.verdict(False, "fifo", lambda since: False)
    assert verdict.state == "RELOAD" and "pid 4242" in verdict.why and not verdict.keepalived_stops


def test_the_verdict_without_a_next_reader() -> None:
    stop = StopClassifier(grace=0.5, next_reader=lambda: None)
    assert stop.verdict(True, "f", lambda since: False).state == "EOF", "EOF without SIGTERM"
    stop.sigterm(1.0)
    assert stop.verdict(True, "f", lambda since: False).state == "RELOAD", "SIGTERM then EOF"
    assert stop.verdict(False, "f", lambda since: True) == Verdict("RELOAD", "SIGTERM, and f is a new FIFO: "
                                                                        "keepalived is reloading")
    assert stop.verdict(False, "f", lambda since: False).keepalived_stops


def test_a_sigterm_while_starting_is_a_reload_only_when_the_next_reader_runs() -> None:
    for sibling, verdict in ((4242, Verdict("RELOAD", "SIGTERM while starting, and keepalived started the next "
                                                      "reader (pid 4242): a reload; leaving f to it unread")),
                             (None, None)):
        stop = StopClassifier(grace=0.5, term_at=time.monotonic() - SIBLING_WAIT, next_reader=lambda s=sibling: s)
        assert stop.at_start("f") == verdict


def test_back_off_grows_to_its_limit_and_resets() -> None:
    backoff = BackOff(low=0.1, high=0.5)
    delays = []
    for _ in range(5):
        backoff.later(10.0)
        backoff.later(10.0)  # one retry pending at a time
        assert backoff.due_at is not None and not backoff.due(backoff.due_at - 0.01)
        delays.append(round(backoff.due_at - 10.0, 2))
        assert backoff.due(backoff.due_at) and backoff.due_at is None
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    backoff.later(10.0)
    assert backoff.due_at == pytest.approx(10.1)


def test_a_worker_crash_is_rung_for_with_back_off_and_a_worker_taking_over_resets_it(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    _listening(paths)
    poller = select.poll()
    link = WorkerLink(s, paths, poller, Log(s.log_file, "reader"), "daemon")
    for _ in range(3):
        link.backoff.later(time.monotonic())
        link.backoff.due_at = None
    assert link.backoff.delay == 8 * KICK_MIN
    _, hello_w = link.watch.new_child()
    os.write(hello_w, f"{os.getpid()}\n".encode())
    os.close(hello_w)
    for fd, _ in poller.poll(1000):
        assert link.owns(fd)
        link.watched(fd, stopping=False)
    assert link.backoff.delay == KICK_MIN and link.watch.pid == os.getpid()
    _, hello_w = link.watch.new_child()
    os.close(hello_w)  # a spawned worker that died before taking over
    for fd, _ in poller.poll(1000):
        link.watched(fd, stopping=False)
    assert link.wake_at is not None
    assert "a spawned worker exited before taking over; starting another in 0.1s" in Path(s.log_file).read_text()


def test_an_unforeseen_state_word_is_warned_about_once(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    intake = Intake(paths, Log(s.log_file, "reader"))
    events = [e for raw in intake.split(b'INSTANCE "VI_1" SLEEPY 100\n' * 3) for e in intake.line(raw)]
    assert [e.state for e in events] == ["SLEEPY"] * 3
    assert Path(s.log_file).read_text().count("unknown state 'SLEEPY'") == 1


def test_a_rejected_line_is_logged_with_its_number_and_counted(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    intake = Intake(paths, Log(s.log_file, "reader"))
    assert [intake.line(raw) for raw in intake.split(b'INSTANCE "VI_1" MASTER 100\nhello\n')] == [[VI_MASTER], []]
    assert intake.lines == 2
    assert "line 2 rejected (unknown type 'hello' (expected INSTANCE, GROUP, VS or RS)): hello" in \
        Path(s.log_file).read_text()
    assert Path(paths.rejected).read_text().strip() == "1"


def test_bytes_without_a_newline_are_a_line_of_their_own_once_the_writer_wrote_no_more(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    intake = Intake(paths, Log(s.log_file, "reader"))
    assert intake.split(b'INSTANCE "VI_1" MASTER 100\nINSTANCE "VI_1" BACK') == [b'INSTANCE "VI_1" MASTER 100']
    assert intake.split(b"UP 100") == []
    assert intake.split(None) == [b'INSTANCE "VI_1" BACKUP 100']
    assert intake.split(None) == []
    assert intake.split(b"\n\0") == [b""] and intake.split(None) == [], "NULs alone: keepalived's end of a line"
    assert intake.line(b"hello", unterminated=True) == []
    log = Path(s.log_file).read_text()
    assert "line 1 has no newline at its end (5 bytes, and nothing followed them): hello; taken as a line of its own" in log
    assert "line 1 rejected (unknown type 'hello'" in log


def test_a_line_glued_after_bytes_without_a_newline_is_cut_off_them(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    intake = Intake(paths, Log(s.log_file, "reader"))
    stop = Event("INSTANCE", "VI_1", "STOP", 100)
    assert intake.line(b'helloINSTANCE "VI_1" STOP 100') == [stop]
    assert intake.line(b'INSTANCE "VI_1" MASTER 100INSTANCE "VI_1" STOP 100') == [VI_MASTER, stop]
    assert intake.line(b'INSTANCE "VI_1" MASTER 100 INSTANCE "VI_1" STOP') == [], "no whole line at the end"
    assert intake.lines == 5
    log = Path(s.log_file).read_text()
    assert ("line 1 has no newline at its end (5 bytes, and a line keepalived writes came right after them): "
            "hello; taken as a line of its own") in log
    assert "line 1 rejected (unknown type 'hello'" in log and "line 5 rejected (malformed VRRP line" in log


@given(st.lists(st.sampled_from([b'INSTANCE "V" MASTER 1', b'GROUP "G" STOP 0', b"VS FWM 7 UP", b"x", b"RS ", b'"',
                                 b" ", b"\0", b"VS"]), max_size=8))
def test_pieces_of_a_rejected_line_are_it_or_a_head_and_a_whole_line(parts: list[bytes]) -> None:
    raw = b"".join(parts)
    cut = pieces(raw)
    assert b"".join(cut) == raw and len(cut) in (1, 2)
    if len(cut) == 2:
        assert cut[0] and isinstance(parse_line(cut[1]), Event)


def test_a_rejected_line_is_counted_later_while_the_count_is_locked(tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    intake = Intake(paths, Log(s.log_file, "reader"))
    fd = os.open(paths.rejected, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another reader, stopped while it counts
    assert intake.line(b"one") == [] and intake.uncounted == 1
    os.close(fd)
    assert intake.line(b"two") == [] and intake.uncounted == 0
    assert Path(paths.rejected).read_text() == "2\n"
    assert "cannot count" not in Path(s.log_file).read_text()


def test_the_stop_window_never_closes_between_an_effect_and_its_record() -> None:
    """SIGALRM inside a held step (an effect and its record) raises WindowClosed at the step's end,
    not in between; inside a step's pause (a wait before its effects) it is raised there."""
    window = StopWindow()
    done: list[str] = []
    try:
        window.open(time.monotonic())
        with pytest.raises(WindowClosed, match=r"^test_units\.py:\d+ test_the_stop_window_never.*, raised at the end"):
            with window.held():
                done.append("effect")
                os.kill(os.getpid(), signal.SIGALRM)  # the window closes here
                done.append("record")
        assert done == ["effect", "record"]
        window.last_words()  # (its timer: the wait below ends in the reserve's SIGALRM)
        with pytest.raises(WindowClosed, match=r"^window\.py:\d+ pause$"):
            with window.held():
                window.pause(60)
                done.append("an effect after the wait")
        assert done == ["effect", "record"]
    finally:
        window.close()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_the_stop_window_ends_a_wait_on_a_lock_another_process_holds(tmp_path: Path) -> None:
    holder = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    waiter = os.open(tmp_path / "lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    window = StopWindow()
    try:
        window.open(time.monotonic() - DEADLINE + 0.05)  # SIGTERM came DEADLINE - 50 ms ago
        window.open(time.monotonic())  # a second SIGTERM does not move the deadline
        with pytest.raises(WindowClosed, match=r"^test_units\.py:\d+ test_the_stop_window_ends_a_wait"):
            fcntl.flock(waiter, fcntl.LOCK_EX)
        window.last_words()
        with pytest.raises(WindowClosed):
            fcntl.flock(waiter, fcntl.LOCK_EX)
    finally:
        window.close()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.close(holder)
        os.close(waiter)


def test_the_registry_names_the_state_directory_that_served_a_fifo_and_trusts_only_its_own_entries(
        tmp_path: Path) -> None:
    s, paths = _settings(tmp_path)
    registry = str(tmp_path / "fifos")
    fifo = str(tmp_path / "a fifo")
    os.mkfifo(fifo)
    gone = Path(entry_path(str(tmp_path / "gone%2F"), registry))
    gone.parent.mkdir(mode=0o700)
    gone.write_text("/somewhere")
    first = Predecessor(s, paths, fifo, Log(s.log_file, "reader"), registry)
    first.start()
    entry = Path(entry_path(fifo, registry))
    assert entry.read_text() == paths.root and entry.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(registry)) == sorted([entry.name, gone.name]), (
        "no entry is pruned: a FIFO is briefly absent during every keepalived reload")
    assert first.other is None and first.journal() is None, "no predecessor: our own journal"
    other = ensure_state_dir(str(tmp_path / "other"))
    entry.write_text(other.root)
    entry.chmod(0o666)  # anybody could have written it: not trusted
    second = Predecessor(s, paths, fifo, Log(s.log_file, "reader"), registry)
    second.start()
    assert second.other is None and entry.read_text() == paths.root
    entry.write_text(other.root)  # trusted, but no worker lives there: nothing to queue behind
    entry.chmod(0o600)
    third = Predecessor(s, paths, fifo, Log(s.log_file, "reader"), registry)
    third.start()
    assert third.other is None and entry.read_text() == paths.root
    JournalWriter(other.journal).append(VI_MASTER, time.time(), 1)  # work, but no worker lives there to do it
    entry.write_text(other.root)
    fourth = Predecessor(s, paths, fifo, Log(s.log_file, "reader"), registry)
    fourth.start()
    assert fourth.other is None, "nothing runs there: nothing to queue behind"
    assert (f"it holds work no worker runs (1 pending): that runs when a reader of {other.root} starts again; "
            f"ours runs in {paths.root}, now") in Path(s.log_file).read_text()


def _parsed(line: str) -> Event:
    event = parse_line(line.encode())
    assert isinstance(event, Event)
    return event


# -- worker.pid ---------------------------------------------------------------------------------

def test_a_process_id_copies_and_pickles_as_itself() -> None:
    """A ProcessId goes where values go (copy, pickle: a Value holding one, a multiprocessing queue)."""
    ident = ProcessId(1234, 5678)
    for twin in (copy.copy(ident), copy.deepcopy(ident), pickle.loads(pickle.dumps(ident))):
        assert type(twin) is ProcessId and twin == ident and (twin.pid, twin.start) == (1234, 5678)


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
    from notify_launcher import progress, records

    for op, kind in (("try", records.TryRecord), ("start", records.StartRecord), ("end", records.EndRecord)):
        assert set(progress.REQUIRED[op]) <= set(kind.__annotations__) - {"op"}, op


def test_the_worker_is_found_by_its_lock_when_it_has_no_pid_file(tmp_path: Path) -> None:
    """A worker that started on a full disk has no worker.pid; the reader still finds (and so
    watches) it as the holder of worker.lock, and a waiter on the lock is not taken for it."""
    import fcntl

    paths = ensure_state_dir(str(tmp_path / "state"))
    fd = os.open(paths.worker_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert lock_holder(paths.worker_lock) is None
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = lock_holder(paths.worker_lock)
        assert holder is not None and holder.pid == os.getpid() and is_running(holder)
        watch = WorkerWatch(paths, select.poll())
        assert watch.follow_named() is None and watch.pid == os.getpid() and watch.pidfd >= 0
    finally:
        os.close(fd)
