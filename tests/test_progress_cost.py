"""The progress file's cost stays flat in the number of names and the length of history.

Measured in bytes (what a compaction reads, what a follower reads), never in time: the worker
compacts only when the file doubled since its last compaction, and `wait` reads what was appended
since its last poll.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from notify_launcher import history
from notify_launcher.history import TRIM_FLOOR, History
from notify_launcher.ledger import KEEP_HISTORY, PROGRESS_FLOOR
from notify_launcher.events import Event
from notify_launcher.journal import JournalWriter
from notify_launcher.progress import Follower, ProgressLog, encode, replay
from notify_launcher.records import EndRecord, StartRecord, TotalsRecord, TryRecord
from notify_launcher.statedir import StatePaths
from notify_launcher.status import StatusReader
from support import LAUNCHER
from support.launcher import Launcher
from support.recorder import SLEEPS, sleep_line

KINDS = ("INSTANCE", "GROUP", "RS")


def _event(log: ProgressLog, seq: int, names: int) -> int:
    """Write one event's try, start and end records, as a worker does; the bytes written."""
    n = seq % names
    key = f"{KINDS[n % 3]} name-{n}"
    event, state = f'{key.split()[0]} "{key.split()[1]}" MASTER 100', "MASTER"
    recs = [TryRecord(op="try", seq=seq, worker=4242),
            StartRecord(op="start", seq=seq, t=1.7e9 + seq, key=key, event=event, state=state, pid=5000 + seq,
                        pid_start_min=10, pid_start_max=11, worker=4242, worker_start=9),
            EndRecord(op="end", seq=seq, t=1.7e9 + seq, key=key, event=event, state=state, result="exit 0",
                      ok=True, duration=0.002, exit=0, signal=None, timed_out=False, worker=4242)]
    for rec in recs:
        assert log.record(rec) is None
    return sum(len(encode(rec)) for rec in recs)


def _compact_as_the_worker_does(log: ProgressLog, hist: History) -> bool:
    if log.due(PROGRESS_FLOOR):
        log.compact(hist)
        return True
    return False


def test_compaction_work_per_event_is_bounded_with_5000_names_and_100000_events(tmp_path: Path) -> None:
    """Every compaction reads at most about twice what was written since the one before, so the total
    read by compactions stays within a constant factor of what was written; the progress file never
    exceeds twice what a compaction must keep (each name's last end) or the floor, and the history
    file never twice what it must keep (the last KEEP_HISTORY ends) or its floor.  A worker
    restarted half-way takes both baselines over from the file (its totals record)."""
    path, hist_path = str(tmp_path / "progress"), str(tmp_path / "history")
    names, events = 5000, 100_000
    log, hist = ProgressLog(path), History(hist_path, KEEP_HISTORY)
    written = compacted_bytes = compactions = 0
    for seq in range(1, events + 1):
        added = _event(log, seq, names)
        written += added
        if seq == events // 2:  # a new worker: it learns the baselines from the file, as Ledger.start does
            log, hist = ProgressLog(path), History(hist_path, KEEP_HISTORY)
            snap = replay(path)
            log.baseline, hist.kept = snap.compacted, snap.history_kept
            assert log.baseline > 0 and hist.kept > 0
        # never more than twice what the last compaction kept (or the floor), plus this event
        assert log.size() <= max(PROGRESS_FLOOR, 2 * log.baseline) + added, (seq, log.size(), log.baseline)
        size = log.size()
        if _compact_as_the_worker_does(log, hist):
            compacted_bytes += size  # what the compaction reads
            compactions += 1
            # its cost is paid by what was appended since the last one
            assert compacted_bytes <= 3 * written + PROGRESS_FLOOR, (seq, compacted_bytes, written)
            assert os.path.getsize(hist_path) <= max(TRIM_FLOOR, 2 * hist.kept), (seq, hist.kept)
    snap = replay(path)
    assert len(snap.last) == names and snap.done_seq == events
    assert [e["seq"] for e in history.last(hist_path, path, KEEP_HISTORY)] == list(range(events - 999, events + 1))
    # what the history file must keep: its last trim kept KEEP_HISTORY ends (~300 bytes each here)
    assert KEEP_HISTORY * 200 <= hist.kept <= KEEP_HISTORY * 400, hist.kept
    assert 2 <= compactions <= 60, compactions
    log.compact(hist)
    assert os.path.getsize(path) == log.baseline == replay(path).compacted  # what a compaction must keep


def _state_after(state: Path, events: int, names: int) -> StatePaths:
    """A state directory after `events` events over `names` names, compacted as the worker does."""
    state.mkdir(mode=0o700)
    paths = StatePaths(str(state))
    log, hist = ProgressLog(paths.progress), History(paths.history, KEEP_HISTORY)
    for seq in range(1, events + 1):
        _event(log, seq, names)
        _compact_as_the_worker_does(log, hist)
    return paths


def test_status_reads_as_much_after_100000_events_as_after_100(tmp_path: Path) -> None:
    """`status` replays the progress file whole: it must hold no more after 100,000 events than
    after 100 (10 names) -- the history is in the history file, which `status` does not read.  The
    bytes read through status's reader, not a time; `history` still shows the last ones."""
    read = {}
    for events in (100, 100_000):
        paths = _state_after(tmp_path / str(events), events, 10)
        reader = StatusReader(paths)
        status = reader.read()
        reader.close()
        assert status.snapshot.done_seq == events and len(status.snapshot.last) == 10
        read[events] = reader.progress.bytes_read
        shown = history.last(paths.history, paths.progress, 50)
        assert [e["seq"] for e in shown] == list(range(events - 49, events + 1))
    assert read[100_000] <= 1.25 * read[100], read


def test_a_follower_reads_only_what_was_appended_and_starts_again_after_a_compaction(tmp_path: Path) -> None:
    """`wait` polls through a Follower: a poll reads the bytes appended since the last one, not the
    history; after a compaction (a new file at the path) it reads the compacted file once, and its
    state is the same as a full replay's."""
    path = str(tmp_path / "progress")
    log = ProgressLog(path)
    for seq in range(1, 3001):
        _event(log, seq, 50)
    follower = Follower(path)
    assert follower.read().done_seq == 3000
    before = follower.bytes_read
    added = _event(log, 3001, 50)
    snap = follower.read()
    assert snap.done_seq == 3001 and follower.bytes_read - before == added
    polls_before = follower.bytes_read
    assert follower.read().done_seq == 3001 and follower.bytes_read == polls_before  # nothing new: nothing read
    log.compact(History(str(tmp_path / "history"), KEEP_HISTORY))
    _event(log, 3002, 50)
    snap = follower.read()
    full = replay(path)
    assert (snap.done_seq, snap.last, snap.running, snap.trying) == (full.done_seq, full.last, full.running,
                                                                       full.trying)
    assert follower.bytes_read == os.path.getsize(path)
    follower.close()


def test_status_and_wait_stay_right_across_a_compaction_between_two_polls(launcher: Launcher) -> None:
    """A state directory with 840 KB of history; a poll sees the new event running, the real worker
    finishes it and compacts the file (a new, smaller file at the path), and the next poll of the
    same reader -- and a `wait` started while the action ran -- see it done: the follower starts
    again from the compacted file's beginning, never from its old offset."""
    launcher.unchecked = "the history written before the reader started is in no journal and no recorder"
    launcher.state.mkdir(mode=0o700)
    log = ProgressLog(str(launcher.state / "progress"))
    for seq in range(1, 1201):
        _event(log, seq, 50)
    assert log.due(PROGRESS_FLOOR)
    reader = StatusReader(StatePaths(str(launcher.state)))
    assert reader.read().idle and reader.read().snapshot.done_seq == 1200
    gate = launcher.dir / "gate"
    (launcher.dir / SLEEPS).write_text(sleep_line("*", "MASTER", 0, until=gate))
    k = launcher.keepalived()
    k.start()
    k.write('INSTANCE "VI_1" MASTER 100')
    launcher.wait_for("the MASTER action to run", lambda: reader.read().snapshot.running is not None)
    status = reader.read()
    assert not status.idle and status.snapshot.running is not None and status.snapshot.running["seq"] == 1201
    offset = reader.progress.bytes_read
    waiting = subprocess.Popen([LAUNCHER, "wait", "--state-dir", str(launcher.state), "--timeout", "120"])
    try:
        gate.touch()
        launcher.wait_for("the compaction", lambda: "progress compacted" in launcher.log_text())
        status = reader.read()
        assert waiting.wait(timeout=120) == 0
    finally:
        waiting.kill()
        waiting.wait()
    size = os.path.getsize(launcher.state / "progress")
    assert size < offset and reader.progress.bytes_read == size  # read again from the start
    full = replay(str(launcher.state / "progress"))
    assert status.idle and status.snapshot.done_seq == full.done_seq == 1201
    assert status.snapshot.last == full.last and status.snapshot.last["INSTANCE VI_1"]["seq"] == 1201
    assert len(status.snapshot.last) == 51 and not status.snapshot.damaged
    k.write('INSTANCE "VI_1" BACKUP 100')  # into the compacted file: the same reader sees it
    launcher.wait_for("the BACKUP event's end", lambda: replay(str(launcher.state / "progress")).done_seq == 1202)
    status = reader.read()
    assert status.snapshot.done_seq == 1202 and status.snapshot.last["INSTANCE VI_1"]["state"] == "BACKUP"
    reader.close()
    k.stop([])


def test_status_prints_a_summary_and_the_table_of_thousands_only_with_all(tmp_path: Path) -> None:
    """3,000 names: `status` says how many are in which state and which last action failed, in a few
    lines; `--all` lists every one; `--json` holds every one and the same summary."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    log = ProgressLog(str(state / "progress"))
    for seq in range(1, 3001):
        _event(log, seq, 3000)
    log.record(EndRecord(op="end", seq=3001, t=1.8e9, key="RS broken", event="RS broken DOWN", state="DOWN",
                         result="exit 1", ok=False))
    run = [LAUNCHER, "status", "--state-dir", str(state)]
    short = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "names: 3001 (1000 GROUP, 1000 INSTANCE, 1001 RS); states: 1 DOWN, 3000 MASTER" in short, short
    assert "last action failed: 1: RS broken" in short and len(short.splitlines()) < 10, short
    every = subprocess.run([*run, "--all"], capture_output=True, text=True, check=True).stdout
    assert len(every.splitlines()) > 3001 and "GROUP name-2998" in every
    doc = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, check=True).stdout)
    assert len(doc["instances"]) == 3001 and doc["summary"]["failed"] == ["RS broken"]
    assert doc["summary"]["types"] == {"GROUP": 1000, "INSTANCE": 1000, "RS": 1001}


def test_a_follower_starts_again_when_a_torn_record_is_cut_and_the_file_grows_past_where_it_was(
        tmp_path: Path) -> None:
    """A worker dies mid-record; a poll reads the torn bytes; the next worker cuts them off (same
    file, ProgressLog) and appends its own records, past the old offset before the next poll.  The
    follower must see the new records, not glue the torn bytes to what follows its offset."""
    path = tmp_path / "progress"
    log = ProgressLog(str(path))
    _event(log, 1, 10)
    with open(path, "ab") as fh:
        fh.write(encode(TryRecord(op="try", seq=2, worker=1))[:-20])  # torn
    follower = Follower(str(path))
    assert follower.read().done_seq == 1
    log = ProgressLog(str(path))  # the next worker: cuts the torn bytes
    assert log.cut
    _event(log, 2, 10)
    snap = follower.read()
    assert snap.done_seq == 2 and not snap.damaged and snap.trying == 0, snap
    follower.close()


def _end(seq: int, names: int) -> EndRecord:
    key = f"{KINDS[seq % names % 3]} name-{seq % names}"
    return EndRecord(op="end", seq=seq, t=1.7e9 + seq, key=key, event=f"{key} MASTER", state="MASTER",
                     result="exit 0", ok=True)


def test_a_progress_file_an_older_version_compacted_reads_right_and_its_history_moves_over(tmp_path: Path) -> None:
    """An older version's compacted file holds the last 1000 ends with each name's last and no
    `history` key in its totals record: status and history read it as before; the next
    compaction moves its ends into the history file, none twice, the last KEEP_HISTORY kept."""
    paths = StatePaths(str(tmp_path))
    ends = {seq: _end(seq, 30) for seq in range(1, 1501)}
    kept = sorted({*range(501, 1501), *(max(s for s in ends if s % 30 == n) for n in range(30))})
    body = b"".join(encode(ends[seq]) for seq in kept)
    totals = TotalsRecord(op="totals", seq=1500, counts={}, kept=len(body))
    Path(paths.progress).write_bytes(encode(totals) + body)
    log = ProgressLog(paths.progress)
    for seq in range(1501, 1521):
        assert log.record(_end(seq, 30)) is None
    reader = StatusReader(paths)
    snap = reader.read().snapshot
    reader.close()
    assert snap.done_seq == 1520 and len(snap.last) == 30 and not snap.damaged
    assert [e["seq"] for e in history.last(paths.history, paths.progress, 2000)] == list(range(501, 1521))
    log.compact(History(paths.history, KEEP_HISTORY))  # 1,020 ends appended, then trimmed to the last 1,000
    assert [e["seq"] for e in history.read(paths.history)] == list(range(521, 1521))
    assert replay(paths.progress).last == snap.last and len(replay(paths.progress, keep_ends=1 << 30).ends) == 30
    assert [e["seq"] for e in history.last(paths.history, paths.progress, 2000)] == list(range(521, 1521))


def test_a_compaction_cut_short_anywhere_loses_no_history_and_repeats_none(tmp_path: Path) -> None:
    """A worker dies after appending the ends to the history file but before replacing the progress
    file; the next one dies half-way through its own append (a torn record): the ends are then in
    both files, and the third worker's compaction appends each once, cutting the torn bytes.  The
    history shown meanwhile is the same at every step."""
    paths = StatePaths(str(tmp_path))
    log = ProgressLog(paths.progress)
    for seq in range(1, 301):
        assert log.record(_end(seq, 10)) is None
    History(paths.history, KEEP_HISTORY).append(replay(paths.progress, keep_ends=1 << 30).ends)  # then it died
    shown = [e["seq"] for e in history.last(paths.history, paths.progress, 1000)]
    assert shown == list(range(1, 301))
    for seq in range(301, 311):
        assert log.record(_end(seq, 10)) is None
    with open(paths.history, "ab") as fh:
        fh.write(encode(_end(301, 10))[:-30])  # the next worker died in its append
    assert [e["seq"] for e in history.last(paths.history, paths.progress, 1000)] == list(range(1, 311))
    ProgressLog(paths.progress).compact(History(paths.history, KEEP_HISTORY))
    assert [e["seq"] for e in history.read(paths.history)] == list(range(1, 311))
    assert Path(paths.history).read_bytes().endswith(b"\n")
    assert [e["seq"] for e in history.last(paths.history, paths.progress, 1000)] == list(range(1, 311))


def test_numbering_does_not_restart_below_the_history_when_journal_and_progress_are_removed(tmp_path: Path) -> None:
    """The history file outlives a removed journal and progress file: the next event's number is
    above its last end, so the history goes on in order (an append skips ends at or below its last)."""
    paths = StatePaths(str(tmp_path))
    log = ProgressLog(paths.progress)
    for seq in range(1, 21):
        assert log.record(_end(seq, 10)) is None
    log.compact(History(paths.history, KEEP_HISTORY))
    os.unlink(paths.progress)
    assert JournalWriter(paths.journal).append(Event("INSTANCE", "VI_1", "MASTER", 100), 1.0, 1) == 21
