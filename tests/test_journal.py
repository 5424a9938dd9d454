"""The journal and the progress file: numbering across concurrent writers (two readers at a reload), torn
and changed lines, the spill file of a busy lock, settings versions, the follower."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext
from pathlib import Path

import pytest

from notify_launcher import identity, progress, settingsfile
from notify_launcher.config import Settings
from notify_launcher.errors import LauncherError
from notify_launcher.events import Event
from notify_launcher.journal import JournalFollower, JournalWriter, describe, spill_name
from notify_launcher.progress import ProgressLog, replay
from notify_launcher.records import EndRecord
from notify_launcher.statedir import StatePaths


def _append_many(path: str, name: str, count: int) -> None:
    writer = JournalWriter(path)
    for i in range(count):
        writer.append(Event("INSTANCE", name, "MASTER", i % 256), 0.0, os.getpid())


def test_concurrent_writers_get_unique_consecutive_numbers_in_file_order(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    JournalWriter(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, f"VI_{n}", 2000)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    entries, damaged = JournalFollower(path).read_new()
    assert damaged == []
    assert [e.seq for e in entries] == list(range(1, 6001))
    for n in range(3):  # each writer's own events keep their order
        mine = [e.event.priority for e in entries if e.event.name == f"VI_{n}"]
        assert mine == [i % 256 for i in range(2000)]


def test_torn_last_line_is_cut_and_reported_and_numbering_goes_on_above_it(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    writer = JournalWriter(path)
    writer.append(Event("INSTANCE", "VI_1", "BACKUP", 100), 1.0, 1)
    with open(path, "ab") as fh:  # a reader killed in the middle of its write
        fh.write(b"2\t1.0\t1\tINSTANCE\tVI_")
    follower = JournalFollower(path)
    assert [e.seq for e in follower.read_new()[0]] == [1]  # the torn line is not consumed
    said: list[tuple[str, str]] = []
    other = JournalWriter(path, report=lambda level, seq, event, text: said.append((level, text)))  # the next reader
    # #2 may have run before the machine died: its number is never given again
    assert other.append(Event("INSTANCE", "VI_1", "MASTER", 100), 2.0, 2) == 3
    assert len(said) == 1 and said[0][0] == "ERROR" and "event #2 (20 bytes: b'2\\t1.0" in said[0][1], said
    entries, damaged = follower.read_new()
    assert damaged == [] and [(e.seq, e.event.state) for e in entries] == [(3, "MASTER")]
    assert writer.append(Event("INSTANCE", "VI_1", "FAULT", 100), 3.0, 1) == 4


def test_journal_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        writer = JournalWriter(str(tmp_path / "journal"))
        writer.append(Event("INSTANCE", "VI_1", "MASTER", 100), 1.0, 1)
        writer.close()
    finally:
        os.umask(old)
    assert (tmp_path / "journal").stat().st_mode & 0o777 == 0o600


def test_compaction_keeps_numbering_and_moves_writers_to_the_new_file(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    writer = JournalWriter(path)
    for n in range(5):
        writer.append(Event("INSTANCE", "VI_1", "MASTER", n), 0.0, 1)
    follower = JournalFollower(path)
    assert len(follower.read_new()[0]) == 5
    writer.append(Event("INSTANCE", "VI_1", "BACKUP", 0), 0.0, 1)
    assert not follower.compact()  # #6 is not read yet: no compaction
    assert [e.seq for e in follower.read_new()[0]] == [6]
    old_inode = os.stat(path).st_ino
    assert follower.compact()
    assert os.stat(path).st_ino != old_inode
    assert os.path.getsize(path) < 100 and os.stat(path).st_mode & 0o777 == 0o600
    assert writer.append(Event("INSTANCE", "VI_1", "FAULT", 0), 0.0, 1) == 7  # the old writer follows
    assert [e.seq for e in follower.read_new()[0]] == [6, 7]  # 6 is the kept last entry
    assert [e.seq for e in JournalFollower(path).read_new()[0]] == [6, 7]


def _journal(tmp_path: Path, states: list[str]) -> str:
    path = str(tmp_path / "journal")
    writer = JournalWriter(path)
    for n, state in enumerate(states):
        writer.append(Event("INSTANCE", "VI_1", state, 100), float(n), 1)
    writer.close()
    return path


def test_a_line_cut_short_or_changed_that_still_parses_is_damage(tmp_path: Path) -> None:
    """"100" cut to "10" (or any byte changed) leaves a line that parses; its checksum does not."""
    path = _journal(tmp_path, ["BACKUP", "MASTER", "FAULT"])
    lines = Path(path).read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"\t100\t", b"\t10\t")
    Path(path).write_bytes(b"\n".join(lines))
    entries, damaged = JournalFollower(path).read_new()
    assert [e.seq for e in entries] == [1, 3]
    assert len(damaged) == 1 and describe(damaged[0]).startswith("event #2 (")


def test_each_damaged_line_after_the_last_intact_one_counts_as_a_number_given(tmp_path: Path) -> None:
    """Every single-bit flip of the last two lines of a journal (#11 and #12 pending, nothing done):
    the next event is numbered above #12, whatever the damaged digits read."""
    path = _journal(tmp_path, ["BACKUP", "MASTER"] * 6)
    clean = Path(path).read_bytes()
    first = clean.rfind(b"\n", 0, clean.rfind(b"\n", 0, len(clean) - 1)) + 1
    reused = []
    for at in range(first, len(clean) - 1):  # (the last newline kept: a torn line is another test)
        for bit in range(8):
            data = bytearray(clean)
            data[at] ^= 1 << bit
            Path(path).write_bytes(bytes(data))
            seq = JournalWriter(path).append(Event("INSTANCE", "VI_1", "FAULT", 100), 13.0, 1)
            if seq is None or seq <= 12:
                reused.append((at, bit, seq))
    assert reused == []


def test_numbering_is_above_the_progress_file_though_the_journal_has_intact_lines(tmp_path: Path) -> None:
    """The journal's last line torn so early that its number is lost, the progress file has #6 done:
    the next event is #7 (it was #6, which the worker took for done and never ran)."""
    path = _journal(tmp_path, ["BACKUP", "MASTER", "BACKUP", "MASTER", "BACKUP"])
    with open(path, "ab") as fh:
        fh.write(b"6")
    ProgressLog(str(tmp_path / "progress")).record(
        EndRecord(op="end", seq=6, t=6.0, key="INSTANCE VI_1", event="x", state="MASTER", result="exit 0", ok=True))
    assert JournalWriter(path).append(Event("INSTANCE", "VI_1", "FAULT", 100), 7.0, 1) == 7


def test_lines_of_older_versions_are_read_until_a_checksummed_line_came(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    legacy = [b"%d\t1.0\t1\tINSTANCE\tVI_1\tMASTER\t100\t\n" % n for n in (1, 2)]
    Path(path).write_bytes(b"".join(legacy))
    JournalWriter(path).append(Event("INSTANCE", "VI_1", "BACKUP", 100), 2.0, 1)
    with open(path, "ab") as fh:
        fh.write(b"4\t1.0\t1\tINSTANCE\tVI_1\tMASTER\t100\t\n")  # no checksum after one: damage
    entries, damaged = JournalFollower(path).read_new()
    assert [(e.seq, e.settings) for e in entries] == [(1, ""), (2, ""), (3, "")]
    assert damaged == [b"4\t1.0\t1\tINSTANCE\tVI_1\tMASTER\t100\t"]


def _hold_lock(path: str, ready: Connection, release: Connection) -> None:
    """Hold the journal's lock (as a stopped worker would) until told to let go."""
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.send(True)
    release.recv()


@contextmanager
def _lock_held(path: str) -> Iterator[ForkContext]:
    """The journal's lock held by another process (_hold_lock) for the block; yields the fork
    context for the block's own processes."""
    ctx = multiprocessing.get_context("fork")
    ready_r, ready_w = ctx.Pipe(False)
    release_r, release_w = ctx.Pipe(False)
    holder = ctx.Process(target=_hold_lock, args=(path, ready_w, release_r))
    holder.start()
    try:
        assert ready_r.recv()
        yield ctx
    finally:
        release_w.send(True)
        holder.join()


def _append_states(path: str, states: list[str]) -> None:
    writer = JournalWriter(path)
    for n, state in enumerate(states):
        assert writer.append(Event("INSTANCE", "VI_1", state, 100), float(n), os.getpid()) is None


def test_a_busy_lock_spills_and_the_writers_next_append_journals_in_order(tmp_path: Path) -> None:
    path = _journal(tmp_path, ["BACKUP"])
    with _lock_held(path):
        writer = JournalWriter(path)
        assert writer.append(Event("INSTANCE", "VI_1", "MASTER", 100), 1.0, 7) is None
        assert writer.append(Event("INSTANCE", "VI_1", "FAULT", 100), 2.0, 7) is None
        spill = tmp_path / "spill" / spill_name(identity.me().start, os.getpid())
        assert len(spill.read_bytes().splitlines()) == 2
    assert writer.append(Event("INSTANCE", "VI_1", "BACKUP", 100), 3.0, 7) == 4
    assert not spill.exists()
    entries, damaged = JournalFollower(path).read_new()
    assert damaged == [] and [(e.seq, e.event.state) for e in entries] == \
        [(1, "BACKUP"), (2, "MASTER"), (3, "FAULT"), (4, "BACKUP")]


def test_the_worker_adopts_the_spill_of_a_writer_that_died(tmp_path: Path) -> None:
    path = _journal(tmp_path, ["BACKUP"])
    follower = JournalFollower(path)
    assert [e.seq for e in follower.read_new()[0]] == [1]
    with _lock_held(path) as ctx:
        writer = ctx.Process(target=_append_states, args=(path, ["MASTER", "FAULT"]))
        writer.start()
        writer.join()
        assert writer.exitcode == 0
    entries, damaged = follower.read_new()
    assert damaged == [] and [(e.seq, e.event.state) for e in entries] == [(2, "MASTER"), (3, "FAULT")]
    assert not (tmp_path / "spill").exists()


def test_anything_in_spill_that_is_no_regular_file_is_said_once_and_left_alone(tmp_path: Path) -> None:
    """A directory, a symlink and a FIFO in spill/ never raise on the worker's read: each is logged
    once by name and kind, left where it is, and the journal's events are read on; pending() is
    not fooled into a read that never ends."""
    path = _journal(tmp_path, ["BACKUP"])
    spill = tmp_path / "spill"
    spill.mkdir()
    (spill / "999").mkdir()
    (spill / "998").symlink_to("/etc/passwd")
    os.mkfifo(spill / "997")
    said: list[tuple[str, str]] = []
    follower = JournalFollower(path, report=lambda level, seq, event, text: said.append((level, text)))
    for _ in range(2):
        entries, damaged = follower.read_new()
        assert damaged == [] and [e.seq for e in entries] in ([1], [])
    assert not follower.pending()
    assert sorted(said) == [("ERROR", f"{spill}/997 is a FIFO, not a spill file: left alone, not adopted; "
                                      f"events in it are not run (move it away once you have looked at it)"),
                            ("ERROR", f"{spill}/998 is a symbolic link: left alone, not adopted; events in it "
                                      f"are not run (move it away once you have looked at it)"),
                            ("ERROR", f"{spill}/999 is a directory, not a spill file: left alone, not adopted; "
                                      f"events in it are not run (move it away once you have looked at it)")]
    assert sorted(os.listdir(spill)) == ["997", "998", "999"]
    JournalWriter(path).append(Event("INSTANCE", "VI_1", "MASTER", 100), 1.0, 1)
    assert follower.pending() and [e.seq for e in follower.read_new()[0]] == [2]


def test_each_entry_names_its_settings_and_compaction_removes_versions_nothing_names(tmp_path: Path) -> None:
    paths = StatePaths(str(tmp_path))
    old, new = Settings(handler=("/bin/old",)), Settings(handler=("/bin/new",))
    first = JournalWriter(paths.journal, version=settingsfile.version(old))
    first.append(Event("INSTANCE", "VI_1", "BACKUP", 100), 1.0, 1)
    settingsfile.publish(paths, new)  # a reload: the next reader's settings are the newest
    second = JournalWriter(paths.journal, version=settingsfile.version(new))
    second.append(Event("INSTANCE", "VI_1", "MASTER", 100), 2.0, 2)
    follower = JournalFollower(paths.journal)
    entries = follower.read_new()[0]
    assert [settingsfile.for_entry(paths, e).handler for e in entries] == [("/bin/old",), ("/bin/new",)]
    assert follower.compact()
    assert os.listdir(paths.settings_versions) == [f"{settingsfile.version(new).id}.json"]
    # the old reader still runs: it writes its version again before its next entry names it
    assert first.append(Event("INSTANCE", "VI_1", "FAULT", 100), 3.0, 1) == 3
    entry = follower.read_new()[0][-1]
    assert settingsfile.for_entry(paths, entry).handler == ("/bin/old",)


def test_progress_records_detect_their_own_damage(tmp_path: Path) -> None:
    """A record changed (#2's end now says #3) or torn is skipped and reported, never counted as done;
    a worker opening the file cuts the torn one off and keeps it to log."""
    path = str(tmp_path / "progress")
    log = ProgressLog(path)
    for seq in (1, 2):
        log.record(EndRecord(op="end", seq=seq, t=1.0, key="INSTANCE VI_1", event="x", state="MASTER",
                             result="exit 0", ok=True))
    data = Path(path).read_bytes().replace(b'"seq": 2', b'"seq": 3')
    Path(path).write_bytes(data + b'{"op": "end", "seq": 4, "t"')
    snap = replay(path)
    assert snap.done_seq == 1 and len(snap.damaged) == 2
    assert [progress.damaged_seq(line) for line in snap.damaged] == [3, 4]
    assert ProgressLog(path).cut == b'{"op": "end", "seq": 4, "t"'
    assert Path(path).read_bytes() == data


def test_a_settings_version_damaged_or_missing_is_an_error_naming_the_file_and_the_event(tmp_path: Path) -> None:
    paths = StatePaths(str(tmp_path))
    writer = JournalWriter(paths.journal, version=settingsfile.version(Settings(handler=("/bin/h",))))
    writer.append(Event("INSTANCE", "VI_1", "MASTER", 100), 1.0, 1)
    entry = JournalFollower(paths.journal).read_new()[0][0]
    path = settingsfile.version_path(paths, entry.settings)
    Path(path).write_text(Path(path).read_text().replace("/bin/h", "/bin/x"))  # changed: no longer its name
    with pytest.raises(LauncherError, match=f"^{path}, the settings event #1 was journaled under, is damaged"):
        settingsfile.for_entry(paths, entry)
    os.unlink(path)
    with pytest.raises(LauncherError, match=f"^{path}, the settings event #1 was journaled under, cannot be read"):
        settingsfile.for_entry(paths, entry)


def _spill_then_number(path: str, kept: str) -> None:
    """A writer that spills MASTER and FAULT (the lock held by another open file), keeps a second link
    to its spill file, then numbers it: the link is the file as a writer killed after its journal
    write, before it removed the file, leaves it."""
    writer = JournalWriter(path)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    for n, state in enumerate(["MASTER", "FAULT"], 1):
        assert writer.append(Event("INSTANCE", "VI_1", state, 100), float(n), os.getpid()) is None
    os.close(fd)
    spill = os.path.join(os.path.dirname(path), "spill")
    (name,) = os.listdir(spill)
    os.link(os.path.join(spill, name), f"{kept}-{name}")
    assert writer.unspill()


@pytest.mark.parametrize("step", ["before-its-append", "after-its-append"])
def test_a_spill_file_left_by_a_writer_killed_while_numbering_it_is_numbered_exactly_once(
        tmp_path: Path, step: str) -> None:
    """A writer killed while it numbers its spill file, before its journal write or after it (and
    its fsync) but before it removed the file, leaves the file as it was then.  Its events are then
    in the journal exactly once: numbered by the adopter when the write had not happened, not
    numbered again when it had -- however much was appended since (far beyond the journal's last
    8 KiB) -- and the worker does not compact the journal while such a file waits (the adopter
    looks in the journal for what was written)."""
    path = _journal(tmp_path, ["BACKUP"])
    before = os.path.getsize(path)
    child = multiprocessing.get_context("fork").Process(target=_spill_then_number, args=(path, str(tmp_path / "kept")))
    child.start()
    child.join()
    assert child.exitcode == 0
    (kept,) = tmp_path.glob("kept-*")
    spill = tmp_path / "spill"
    assert not spill.exists(), "numbered: the file and its empty directory are removed"
    if step == "before-its-append":
        os.truncate(path, before)
    spill.mkdir(mode=0o700)
    os.rename(kept, spill / kept.name.split("-", 1)[1])
    _append_many(path, "VI_2", 200)
    follower = JournalFollower(path)
    held = os.open(spill / kept.name.split("-", 1)[1], os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # (its adoption waits: the worker reads and tries to compact first)
        first, damaged = follower.read_new()
        assert damaged == [] and not follower.compact(), "no compaction while a spill file's claim waits"
    finally:
        os.close(held)
    more, damaged = follower.read_new()
    assert damaged == [] and not spill.exists()
    states = [e.event.state for e in first + more if e.event.name == "VI_1"]
    assert states == ["BACKUP", "MASTER", "FAULT"], states
    assert [e.seq for e in first + more] == list(range(1, len(first + more) + 1))
    assert follower.compact()


def _spill_and_leave(path: str) -> None:
    writer = JournalWriter(path)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    assert writer.append(Event("INSTANCE", "VI_1", "MASTER", 100), 1.0, os.getpid()) is None


def test_a_writers_append_numbers_first_the_spill_of_a_writer_started_before_it(tmp_path: Path) -> None:
    """A writer that left with an event spilled (a reader whose window closed) read it before the
    writer started after it reads anything: that one's append, with no spill file of its own,
    numbers the left one's spilled event before its own event; a writer started before the one that
    left does not (its events came first)."""
    path = _journal(tmp_path, ["BACKUP"])
    older = JournalWriter(path)
    ctx = multiprocessing.get_context("fork")
    left = ctx.Process(target=_spill_and_leave, args=(path,))
    left.start()
    left.join()
    assert left.exitcode == 0
    assert older.append(Event("INSTANCE", "VI_2", "MASTER", 100), 2.0, os.getpid()) == 2
    later = ctx.Process(target=_append_one, args=(path,))
    later.start()
    later.join()
    assert later.exitcode == 0
    entries, damaged = JournalFollower(path).read_new()
    assert damaged == [] and [(e.seq, e.event.name, e.event.state) for e in entries] == \
        [(1, "VI_1", "BACKUP"), (2, "VI_2", "MASTER"), (3, "VI_1", "MASTER"), (4, "VI_3", "FAULT")]


def _append_one(path: str) -> None:
    assert JournalWriter(path).append(Event("INSTANCE", "VI_3", "FAULT", 100), 3.0, os.getpid()) == 4
