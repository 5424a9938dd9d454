"""Shared fixtures: a launcher wired to a keepalived stand-in in a temp dir, cleaned up by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from standin import Keepalived  # noqa: E402

from notify_launcher.journal import parse_entry  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = str(ROOT / "bin" / "notify-launcher")

# Appends "start SEQ ARGS TIME" and "end SEQ TIME" around an optional sleep (file `sleep`:
# "STATE SECONDS"): order and overlap are read from the sequence of lines.
RECORDER = """#!/bin/sh
echo "start $NL_SEQ $* $(date +%s.%N)" >> "{rec}"
if [ -f "{sleep}" ]; then read -r s d < "{sleep}"; [ "$3" = "$s" ] && sleep "$d"; fi
echo "end $NL_SEQ $(date +%s.%N)" >> "{rec}"
"""


def _tail(path: Path, size: int = 65536) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read()
    except OSError:
        return b""


def journaled_seq(journal: Path) -> int:
    """The sequence number of the journal's last intact entry (0: no journal, or no entry).  Reads
    only the tail; a torn last line (a writer killed mid-write) is skipped."""
    for line in reversed(_tail(journal).split(b"\n")[:-1]):  # [:-1]: what follows the last newline is torn
        entry = parse_entry(line)
        if entry is not None:
            return entry.seq
    return 0


def recorded_seq(progress: Path) -> int:
    """The largest sequence number in the progress file's last records (JSON lines with "seq")."""
    best = 0
    for line in _tail(progress).split(b"\n"):
        try:
            seq = json.loads(line)["seq"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(seq, int):
            best = max(best, seq)
    return best


@dataclass
class Launcher:
    """Paths of one launcher setup and helpers to drive and inspect it."""

    dir: Path
    state: Path
    log: Path
    fifo: Path
    rec: Path
    handler: Path
    extra_args: list[str] = field(default_factory=list)

    def argv(self, *more: str) -> list[str]:
        return [LAUNCHER, "--handler", str(self.handler), "--state-dir", str(self.state),
                "--log-file", str(self.log), "--linger", "1", *self.extra_args, *more]

    def keepalived(self, *more: str) -> Keepalived:
        return Keepalived(self.argv(*more), str(self.fifo))

    def wait_started(self, timeout: float = 60) -> None:
        """Wait until the reader has logged that it reads the FIFO."""
        deadline = time.monotonic() + timeout
        while "reader started" not in self.log_text():
            assert time.monotonic() < deadline, "the reader did not start"
            time.sleep(0.01)

    def settle(self, events: int, timeout: float = 120) -> None:
        """Wait until event #`events` is journaled (the reader may still be starting), then until idle.

        Waits on sequence numbers, never on the journal's line count: the worker compacts the journal
        (keeps only its last entry) whenever it keeps up, and numbering never goes backwards."""
        deadline = time.monotonic() + timeout
        while (seen := self.last_seq()) < events:
            assert time.monotonic() < deadline, \
                f"event #{events} not journaled after {timeout}s (highest #{seen}):\n{self.log_text()[-3000:]}"
            time.sleep(0.01)
        self.wait_idle(timeout)

    def last_seq(self) -> int:
        """The highest sequence number journaled so far (0: none): the journal's last intact entry
        (a compaction keeps it), or the progress file's last record when the journal was removed."""
        return max(journaled_seq(self.state / "journal"), recorded_seq(self.state / "progress"))

    def wait_for(self, what: str, predicate: Callable[[], object], timeout: float = 60) -> None:
        """Poll `predicate` until it holds; fail naming `what` (a timeout only turns a hang into a failure)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}:\n{self.log_text()[-3000:]}"
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 120) -> None:
        res = subprocess.run([LAUNCHER, "wait", "--state-dir", str(self.state), "--timeout", str(timeout)],
                             capture_output=True, text=True)
        assert res.returncode == 0, f"launcher not idle after {timeout}s:\n{self.log_text()[-3000:]}"

    def sleep_on(self, state: str, seconds: float) -> None:
        """Make the recorder's action for `state` take `seconds`."""
        (self.dir / "sleep").write_text(f"{state} {seconds}\n")

    def records(self) -> list[list[str]]:
        if not self.rec.exists():
            return []
        return [line.split() for line in self.rec.read_text().splitlines()]

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def launcher_processes(self) -> list[psutil.Process]:
        """This setup's reader and workers: not their actions, not `wait`/`status` run by the test."""
        out = []
        for p in self.processes():
            try:
                cmd = p.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "notify_launcher" in cmd and cmd[cmd.index("notify_launcher") + 1:][:1] not in (["wait"], ["status"]):
                out.append(p)
        return out

    def processes(self) -> list[psutil.Process]:
        """Every launcher process of this setup (reader and workers: their cmdline names our dir)."""
        mine = []
        for p in psutil.process_iter(["cmdline"]):
            if p.pid != os.getpid() and any(str(self.dir) in a for a in (p.info["cmdline"] or [])):
                mine.append(p)
        return mine


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def check_order(records: list[list[str]]) -> tuple[list[int], int]:
    """(sequence numbers started, in order; count of overlaps/inversions) from recorder lines."""
    started: list[int] = []
    problems = 0
    running: int | None = None
    for rec in records:
        seq = int(rec[1])
        if rec[0] == "start":
            if running is not None or (started and seq <= started[-1]):
                problems += 1
            running = seq
            started.append(seq)
        else:
            if running != seq:
                problems += 1
            running = None
    return started, problems


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    rec = tmp_path / "records"
    handler = tmp_path / "handler.sh"
    handler.write_text(RECORDER.format(rec=rec, sleep=tmp_path / "sleep"))
    handler.chmod(0o755)
    setup = Launcher(tmp_path, tmp_path / "state", tmp_path / "launcher.log", tmp_path / "notify.fifo",
                     rec, handler)
    yield setup
    # The test is over: its reader, lingering workers and their actions (with their children) go
    # now, by PID.  Waiting for workers to leave by themselves proved nothing and cost a second or
    # more per test.  Repeated while a process spawned meanwhile (a worker, an action) shows up.
    deadline = time.monotonic() + 30
    while (procs := setup.processes()) and time.monotonic() < deadline:
        family = {p.pid: p for p in procs}
        for p in procs:
            try:
                family.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                pass
        for p in family.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        gone_by = time.monotonic() + 5
        while any(_alive(p) for p in family.values()) and time.monotonic() < gone_by:
            time.sleep(0.01)  # a zombie counts as gone: init reaps these orphans when it likes
