"""The reader's side of the worker: ring after each append, spawn one when nobody will read the
journal, watch it, and ring again (with a growing delay) when it crashed.  The protocol itself
is handoff.py's; this is the reader's use of it.
"""

from __future__ import annotations

TYPE_CHECKING = False

import os
import select
import time

from notify_launcher import locks
from notify_launcher.config import Settings
from notify_launcher.detach import spawn_worker
from notify_launcher.events import Event
from notify_launcher.handoff import Doorbell, WorkerWatch
from notify_launcher.log import Log, Troubles
from notify_launcher.statedir import StatePaths
from notify_launcher.upkeep import BackOff, StateRepair

if TYPE_CHECKING:
    from notify_launcher.detach import Way
    from notify_launcher.journal import JournalWriter


class WorkerLink:
    """Doorbell, worker watch and back-off.  `start()` first (cli does, before it imports the rest of
    the reader), `attach` the reader's journal; `journaled()` after each journaled event; hand
    `owns`' fds to `watched`; call `tick()` when `wake_at` has come.  `poller` is the reader's."""

    def __init__(self, settings: Settings, paths: StatePaths, poller: select.poll, log: Log, detach: Way) -> None:
        self.settings, self.poller, self.log, self.detach = settings, poller, log, detach
        self.journal: JournalWriter | None = None  # the reader's, once it has one
        self._behind = False  # the worker we spawned last found another holding worker.lock
        self.troubles = Troubles(log)
        self.doorbell = Doorbell(paths)
        self.watch = WorkerWatch(paths, poller)
        self.backoff = BackOff()
        self.repair = StateRepair(paths, settings, self.doorbell, self.troubles)

    @property
    def wake_at(self) -> float | None:
        """When a retry is due (monotonic), if one is scheduled."""
        return self.backoff.due_at

    def tick(self) -> None:
        if self.backoff.due(time.monotonic()):
            self.ring()

    def start(self) -> None:
        """Repair the state directory, watch a worker that crashed while no reader ran, and announce
        us to the worker, or spawn the standby that our events will find ready (it also does any
        work left behind).  Whatever fails is logged, and retried with the next event."""
        self.repair.repair()
        for area, step in (("worker watch", self.follow_named), ("worker start", self.ring)):
            try:
                step()
            except Exception as exc:  # never die of our own bug: keepalived would not restart us
                self.troubles.report(area, None, None, f"{area}: unexpected error (the reader carries on)", exc)

    def attach(self, journal: JournalWriter) -> None:
        """The journal the reader appends to: one made anew at its path means another worker's doorbell."""
        self.journal = journal

    def journaled(self, seq: int | None, event: Event) -> None:
        """An event was journaled: ring (before its log line: the worker can start meanwhile); a
        worker that crashed before may be retried promptly."""
        if self.journal is not None and self.journal.created:  # the journal was made anew: find the worker again by path
            self.journal.created = False
            self.doorbell.reset()
        self.backoff.reset()
        self.ring()

    def ring(self) -> None:
        """Make sure a worker will read the journal (spawning one if none will)."""
        try:
            if not self.repair.published:
                self.repair.repair()  # a systemd unit worker reads its settings from the state directory
            rang = self.doorbell.ring(self._spawn, spawning=bool(self.watch.hellos))
        except OSError as exc:  # fork refused (pid limit, memory), standby.lock not creatable
            self.troubles.report("worker start", None, None, f"cannot start a worker: {exc}; events are journaled "
                                 f"and wait; retrying with back-off")
            self.backoff.later(time.monotonic())
            return
        self.troubles.recovered("worker start")
        if rang == "heard":
            self.follow_named()
            self._behind = False
            if self.watch.pidfd < 0 and not self.watch.hellos:  # heard by a worker not named in worker.pid yet
                self.backoff.later(time.monotonic())
            return
        if rang == "spawned":
            self.log.debug(None, None, "no worker listening or queued: spawned one")
            self._behind = locks.lock_holder(self.watch.paths.worker_lock) is not None
        else:
            self.follow_named()
        if rang == "queued" or self._behind:
            # Ring again until a worker has heard us: the one holding worker.lock stands by only for
            # readers it heard, and the worker we spawned may be queued behind it for the lock (two
            # readers rang while a replacement was still starting: a CI flake, a standby that never
            # watched the second reader).  Our own worker, spawned with none before it, hears us
            # when it says hello: no timer wakes the reader for it.
            self.backoff.later(time.monotonic())

    def follow_named(self) -> None:
        """Watch the worker worker.pid names (one that crashed while no reader ran is rung for)."""
        self._crashed(self.watch.follow_named())

    def close(self) -> None:
        """The reader leaves: let go of the doorbell (a worker it watches goes on without it)."""
        self.doorbell.close()

    def owns(self, fd: int) -> bool:
        return self.watch.owns(fd)

    def watched(self, fd: int, stopping: bool) -> None:
        """A hello pipe or the worker's pidfd became readable.  `stopping`: after SIGTERM a worker that
        left normally is not replaced."""
        hello = fd in self.watch.hellos
        news = self.watch.ready(fd)
        if news is not None:
            self._crashed(news)
        elif hello:
            self.backoff.reset()  # a worker took over: back-off is for crash loops only
        elif not stopping:
            self.log.debug(None, None, f"worker pid {self.watch.pid} left; starting a standby")
            self.backoff.later(time.monotonic())

    def _crashed(self, crash: str | None) -> None:
        """Ring again after a worker crash, with a growing delay so a crash loop is no fork loop."""
        if crash is None:
            return
        self.log.warn(None, None, f"{crash}; starting another in {self.backoff.delay:g}s to recover")
        self.backoff.later(time.monotonic())

    def _spawn(self, standby_fd: int) -> None:
        hello, tell = self.watch.new_child()
        try:
            spawn_worker(self.detach, self.settings, standby_fd, tell)
        except BaseException:
            self.watch.abandon(hello)  # (not "a spawned worker exited": there was none)
            raise
        finally:
            os.close(tell)
