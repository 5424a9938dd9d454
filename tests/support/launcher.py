"""One launcher setup in a directory, driven through the keepalived stand-in (the `launcher` fixture).

The handler is the recorder (support.recorder) beside its records and sleeps files; the launcher
runs from this checkout (bin/notify-launcher) with --linger 1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from notify_launcher import containment, journal, progress
from notify_launcher.registry import REGISTRY, entry_path
from support import LAUNCHER, VI, invariants, processes, recorder, waiting
from support.standin import Keepalived


def forget_fifo(fifo: str, registry: str = REGISTRY) -> None:
    """Remove the registry's entries of the FIFO `fifo` (one outside a test's temp dir, under /run)."""
    entry = entry_path(fifo, registry)
    for name in (entry, entry + "%reading"):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def forget_fifos(directory: Path, registry: str = REGISTRY) -> None:
    """Remove the registry's entries of the FIFOs in `directory` (a test's temp dir)."""
    prefix = entry_path(str(directory), registry) + "%2F"
    try:
        names = os.listdir(registry)
    except OSError:
        return
    for name in names:
        if os.path.join(registry, name).startswith(prefix):
            try:
                os.unlink(os.path.join(registry, name))
            except FileNotFoundError:
                pass


def remove_action_cgroups(state: Path) -> None:
    """The action cgroups the workers of `state` made (containment.py) go with the test: what is
    left in them is killed, then they are removed.  The workers' cgroup is the test's own."""
    home = containment.own_cgroup()
    if home is None:
        return
    prefix = containment.cgroup_prefix(str(state))
    for name in os.listdir(home):
        if name.startswith(prefix):
            path = os.path.join(home, name)
            containment.kill_cgroup(path)
            containment.wait_unpopulated(path, 10)
            try:
                os.rmdir(path)
            except OSError:
                pass


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
    standins: list[Keepalived] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)  # every log file a stand-in's reader was given, in order
    #: Checked at the end of every test (the fixture's teardown calls `check`); a test whose run
    #: cannot end clean on purpose sets the reason here.
    unchecked: str | None = None

    @classmethod
    def in_dir(cls, path: Path) -> Launcher:
        """A setup in `path` (which exists), its handler the recorder."""
        handler = recorder.install(path / "handler.sh", records=path / recorder.RECORDS,
                                   sleeps=path / recorder.SLEEPS)
        recorder.track_trees(path / recorder.RECORDS)
        return cls(path, path / "state", path / "launcher.log", path / "notify.fifo", path / recorder.RECORDS,
                   handler)

    def argv(self, *more: str) -> list[str]:
        return [LAUNCHER, "--handler", str(self.handler), "--state-dir", str(self.state),
                "--log-file", str(self.log), "--linger", "1", *self.extra_args, *more]

    def keepalived(self, *more: str) -> Keepalived:
        standin = Keepalived(self.argv(*more), str(self.fifo))
        if self.log not in self.logs:
            self.logs.append(self.log)
        self.standins.append(standin)
        return standin

    def stop_action(self, command: Path | None = None) -> None:
        """The launcher runs with `stop_action = command` (default: the recorder, so the STOP's action
        shows in its records), through an INI file among its options."""
        ini = self.dir / "nl.ini"
        ini.write_text(f"[launcher]\nstop_action = {command or self.handler}\n")
        self.extra_args += ["--config", str(ini)]

    def gate_backup(self) -> Path:
        """BACKUP actions run until the returned file exists (the recorder's sleeps file)."""
        gate = self.dir / "gate"
        (self.dir / recorder.SLEEPS).write_text(recorder.sleep_line("*", "BACKUP", 0, until=gate))
        return gate

    def first_action_running(self, *more: str) -> Keepalived:
        """keepalived started (`more`: launcher options) and #1 (INSTANCE BACKUP) written; returns once
        its action runs."""
        k = self.keepalived(*more)
        k.start()
        k.write(VI.format("BACKUP"))
        self.wait_for("#1's action", lambda: self.starts())
        return k

    def check(self, timeout: float = 60, expect_lines: list[str] | None = None, stops: int | None = None,
              alive_ok: Iterable[int] = ()) -> invariants.Report:
        """The run is over: wait until the launcher is idle, then check every invariant
        (support.invariants); by default every line the stand-ins wrote must be journaled, and each
        of their stops must have journaled a STOP."""
        if self.state.exists():
            self.wait_idle(timeout)
        if expect_lines is None:
            expect_lines = [line for k in self.standins for line in k.lines]
        if stops is None:
            stops = sum(k.stops for k in self.standins)
        return invariants.check_run(self.state, records_dir=self.dir, log_file=self.logs or [self.log],
                                    expect_lines=expect_lines,
                                    stops=stops, alive_ok=alive_ok)

    def wait_started(self, timeout: float = 60) -> None:
        """Wait until the reader has logged that it reads the FIFO."""
        self.wait_for("the reader to start", lambda: "reader started" in self.log_text(), timeout)

    def wait_standby(self, timeout: float = 60) -> int:
        """Wait until the standby worker the reader spawns at start listens; return its pid."""
        self.wait_for("a standby worker", lambda: (self.state / "doorbell.sock").exists()
                      and (self.state / "worker.pid").exists(), timeout)
        return int((self.state / "worker.pid").read_text().split()[0])

    def settle(self, events: int, timeout: float = 120) -> None:
        """Wait until event #`events` is journaled (the reader may still be starting), then until idle.

        Waits on sequence numbers, never on the journal's line count: the worker compacts the journal
        (keeps only its last entry) whenever it keeps up, and numbering never goes backwards."""
        waiting.wait_for(f"event #{events} journaled", lambda: self.last_seq() >= events, timeout,
                         diagnostics=lambda: f"(highest #{self.last_seq()})\n{self.log_text()[-3000:]}")
        self.wait_idle(timeout)

    def last_seq(self) -> int:
        """The highest sequence number journaled so far (0: none): the journal's last intact entry
        (a compaction keeps it), or the progress file's last record when the journal was removed."""
        return max(journal.last_seq(str(self.state / "journal")), progress.last_seq(str(self.state / "progress")))

    def wait_for(self, what: str, predicate: Callable[[], object], timeout: float = 60) -> None:
        """`waiting.wait_for`, failing with the launcher log's tail."""
        waiting.wait_for(what, predicate, timeout, diagnostics=lambda: self.log_text()[-3000:])

    def wait_idle(self, timeout: float = 120) -> None:
        res = subprocess.run([LAUNCHER, "wait", "--state-dir", str(self.state), "--timeout", str(timeout)],
                             capture_output=True, text=True)
        assert res.returncode == 0, f"launcher not idle after {timeout}s:\n{self.log_text()[-3000:]}"

    def sleep_on(self, state: str, seconds: float) -> None:
        """Make the recorder's action for `state` (any type) take `seconds`, and no other (replaces
        an earlier choice)."""
        (self.dir / recorder.SLEEPS).write_text(recorder.sleep_line("*", state, seconds))

    def records(self) -> list[recorder.Record]:
        return recorder.read(self.rec)

    def starts(self) -> list[recorder.Record]:
        """The recorder's start records: one per action run."""
        return [r for r in self.records() if r.kind == "start"]

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def launcher_processes(self) -> list[psutil.Process]:
        """This setup's reader and workers: not their actions, not `wait`/`status` run by the test."""
        out = []
        for pid, cmd in processes.scan(str(self.dir)):
            if "notify_launcher" in cmd and cmd[cmd.index("notify_launcher") + 1:][:1] not in (["wait"], ["status"]):
                try:
                    out.append(psutil.Process(pid))
                except psutil.Error:
                    pass
        return out

    def processes(self) -> list[psutil.Process]:
        """Every launcher process of this setup (reader and workers: their cmdline names our dir)."""
        return processes.find(str(self.dir))

    def end_processes(self) -> None:
        """The test is over: its reader, lingering workers and their actions (with their children)
        go now, by PID.  Waiting for workers to leave by themselves proved nothing and cost a
        second or more per test.  The readers' records of which state directory serves a FIFO
        (notify_launcher/predecessor.py, under /run, which outlives the test) go too."""
        processes.end_all(str(self.dir))
        forget_fifos(self.dir)
        remove_action_cgroups(self.state)
