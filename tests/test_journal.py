"""The journal: numbering across concurrent writers (two readers at a reload), torn lines, follower."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from notify_launcher.events import Event
from notify_launcher.journal import JournalFollower, JournalWriter


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


def test_torn_last_line_is_cut_by_the_next_append(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    writer = JournalWriter(path)
    writer.append(Event("INSTANCE", "VI_1", "BACKUP", 100), 1.0, 1)
    with open(path, "ab") as fh:  # a reader killed in the middle of its write
        fh.write(b"2\t1.0\t1\tINSTANCE\tVI_")
    follower = JournalFollower(path)
    assert [e.seq for e in follower.read_new()[0]] == [1]  # the torn line is not consumed
    other = JournalWriter(path)  # e.g. the reader that keepalived starts next
    assert other.append(Event("INSTANCE", "VI_1", "MASTER", 100), 2.0, 2) == 2
    entries, damaged = follower.read_new()
    assert damaged == [] and [(e.seq, e.event.state) for e in entries] == [(2, "MASTER")]
    assert writer.append(Event("INSTANCE", "VI_1", "FAULT", 100), 3.0, 1) == 3


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
