"""Shared fixtures: a launcher wired to a keepalived stand-in in a temp dir, cleaned up by PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from standin import Keepalived  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = str(ROOT / "bin" / "notify-launcher")

# Appends "start SEQ ARGS TIME" and "end SEQ TIME" around an optional sleep (file `sleep`:
# "STATE SECONDS"): order and overlap are read from the sequence of lines.
RECORDER = """#!/bin/sh
echo "start $NL_SEQ $* $(date +%s.%N)" >> "{rec}"
if [ -f "{sleep}" ]; then read -r s d < "{sleep}"; [ "$3" = "$s" ] && sleep "$d"; fi
echo "end $NL_SEQ $(date +%s.%N)" >> "{rec}"
"""


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

    def wait_started(self, timeout: float = 30) -> None:
        """Wait until the reader has logged that it reads the FIFO."""
        deadline = time.monotonic() + timeout
        while "reader started" not in self.log_text():
            assert time.monotonic() < deadline, "the reader did not start"
            time.sleep(0.01)

    def settle(self, events: int, timeout: float = 60) -> None:
        """Wait until `events` events are journaled (the reader may still be starting), then until idle."""
        deadline = time.monotonic() + timeout
        journal = self.state / "journal"
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= events):
            assert time.monotonic() < deadline, f"fewer than {events} events journaled:\n{self.log_text()[-3000:]}"
            time.sleep(0.01)
        self.wait_idle(timeout)

    def wait_idle(self, timeout: float = 60) -> None:
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
    deadline = time.monotonic() + 5
    while setup.processes() and time.monotonic() < deadline:
        time.sleep(0.1)  # workers linger 1 s, then leave by themselves
    for p in setup.processes():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
