"""The drain: run every journaled event after the last finished one, strictly in sequence order.

One event can never stop the queue: whatever goes wrong while preparing, running or recording it is
that event's failure (logged with its traceback, recorded, and the next event runs), and a worker
that dies on it outright is counted by the `try` record written first (recovery.py).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

from notify_launcher import actions, settingsfile
from notify_launcher.config import Command
from notify_launcher.containment import Containment
from notify_launcher.errors import LauncherError
from notify_launcher.events import READER_TYPE
from notify_launcher.following import Following
from notify_launcher.identity import ticks
from notify_launcher.journal import Entry, JournalFollower, damaged_seq, describe
from notify_launcher.ledger import Ledger, end_of
from notify_launcher.onfailure import OUTPUT_TAIL, Ended, OnFailureRunner
from notify_launcher.progress import StartRecord, TryRecord
from notify_launcher.publisher import MetricsPublisher

JOURNAL_MAX = 64 * 1024  # compact when idle and larger than this (the state dir is usually tmpfs: RAM)


class Drain:
    """`done_seq`: the last finished event; `reload_at`: when the last READER RELOAD event ran
    (monotonic; the worker stands by for the next reader after it)."""

    def __init__(self, following: Following, ledger: Ledger, publisher: MetricsPublisher,
                 on_failure: OnFailureRunner, containment: Containment, worker: int, worker_start: int,
                 environ: dict[str, str]) -> None:
        self.following, self.ledger, self.publisher, self.on_failure = following, ledger, publisher, on_failure
        self.containment = containment
        self.worker, self.worker_start, self.environ = worker, worker_start, environ
        self.done_seq = 0
        self.reload_at = float("-inf")

    def start(self, done_seq: int) -> None:
        """Follow the journal from here on; `done_seq` is where the progress file says we are."""
        self.journal = JournalFollower(self.following.paths.journal,
                                       report=lambda *said: self.following.log.line(*said))
        self.done_seq = done_seq

    def pending(self) -> bool:
        """The journal grew since the last read."""
        return self.journal.pending()

    def drain(self, owner: Callable[[], bool]) -> bool:
        """Run everything journaled; False if we must leave (`owner()` said the state directory is
        no longer ours)."""
        while True:
            if not owner():
                return False
            entries, damaged = self.journal.read_new()
            for line in damaged:
                self.following.log.error(damaged_seq(line), None, f"damaged journal line skipped: {describe(line)}")
            if not entries:
                if not self.publisher.published:
                    self.publisher.publish([])  # at start, with nothing to do
                return True
            self._follow_state_files(entries[0])
            entries = [e for e in entries if e.seq > self.done_seq]
            if not self.publisher.published:
                self.publisher.publish(entries)  # at start: the counts, and the queue this worker found
            newest = {e.event.key: e.seq for e in entries} if self.following.settings.coalesce else {}
            for n, entry in enumerate(entries, 1):
                if entry.seq != self.done_seq + 1 and self.done_seq:
                    self.following.log.error(entry.seq, entry.event, f"events #{self.done_seq + 1}..#{entry.seq - 1} "
                                                                     f"are missing from the journal")
                self._take_up(entry, newest.get(entry.event.key, entry.seq))
                self.done_seq = entry.seq
                if entry.event.type == READER_TYPE and entry.event.state == "RELOAD":
                    self.reload_at = time.monotonic()  # the next reader is starting: stand by for it
                self.publisher.publish(entries[n:])
                self.on_failure.run()

    def compact(self) -> None:
        """Keep the state directory small when the queue is idle: it usually lives in /run, which is RAM."""
        log = self.following.log
        try:
            if _size(self.following.paths.journal) > JOURNAL_MAX and self.journal.compact():
                log.info(None, None, f"journal compacted (everything up to #{self.done_seq} is done)")
            self.ledger.compact()
        except OSError as exc:
            log.warn(None, None, f"cannot compact the state directory ({exc.strerror}); will try again")

    def _follow_state_files(self, first: Entry) -> None:
        """Before a batch: the newest settings, and state files someone removed (journal, progress)."""
        self.following.follow()
        paths, log = self.following.paths, self.following.log
        if self.ledger.follow():
            log.warn(None, None, f"{paths.progress} was removed; recording into a new one")
        if self.journal.replaced:
            self.journal.replaced = False
            log.warn(first.seq, first.event, f"{paths.journal} was removed and created anew; following it")
            if first.seq <= self.done_seq:
                log.error(first.seq, first.event, f"numbering restarted at #{first.seq}, below the last finished "
                                                  f"#{self.done_seq} (journal and progress removed); running the new events")
                self.done_seq = first.seq - 1

    def _take_up(self, entry: Entry, newest: int) -> None:
        """One event, whatever happens: `try` first (so a death here is counted), then its action;
        an exception is this event's failure, never the queue's."""
        self.ledger.record(TryRecord(op="try", seq=entry.seq, worker=self.worker), entry.event)
        try:
            if newest != entry.seq and entry.event.type != READER_TYPE:
                self.following.log.info(entry.seq, entry.event, f"skipped: superseded by #{newest} (coalesce = yes)")
                self.ledger.finish(end_of(entry, f"superseded by #{newest}", ok=True, worker=self.worker), entry.event)
            else:
                self._run(entry)
        except Exception as exc:
            self.following.log.exception(entry.seq, entry.event, "FAILED inside the launcher (the next event runs)", exc)
            end = end_of(entry, f"failed: {type(exc).__name__}: {exc}"[:200], ok=False, worker=self.worker)
            self.ledger.finish(end, entry.event)
            self.on_failure.due(Ended(entry, end))

    def _run(self, entry: Entry) -> None:
        """The event's commands one after the other (or why none runs), its end recorded: the first
        failed command's result, else the last one's."""
        seq, event, log = entry.seq, entry.event, self.following.log
        try:  # the settings it was journaled under: a reload changes what comes after it, not this
            settings = settingsfile.for_entry(self.following.paths, entry)
        except (OSError, LauncherError) as exc:
            log.error(seq, event, f"{exc}; running it with the newest settings")
            settings = self.following.settings
        commands, timeout = settings.action_for(event)
        if not commands:
            quiet = " (a quiet state: name it in a [match] rule to run something)" \
                if event.state in settings.quiet_states else ""
            log.info(seq, event, f"no action configured for this event{quiet}")
            self.ledger.finish(end_of(entry, "no action", ok=True, worker=self.worker), event)
            return
        tail: deque[str] = deque(maxlen=OUTPUT_TAIL)  # for on_failure

        def output(stream: str, text: str) -> None:
            log.info(seq, event, f"{stream}: {text}")
            tail.append(text)

        results = [self._command(entry, command, timeout, output,
                                 f" ({number} of {len(commands)})" if len(commands) > 1 else "")
                   for number, command in enumerate(commands, 1)]
        result = next((r for r in results if not r.ok), results[-1])
        end = end_of(entry, result.describe(), ok=result.ok, worker=self.worker)
        end["duration"] = round(sum(r.duration for r in results), 6)
        end["exit"], end["signal"], end["timed_out"] = result.exit_code, result.signal, result.timed_out
        stalled = sum(r.stalled for r in results)
        if stalled:
            end["stalled"] = round(stalled, 3)
        self.ledger.finish(end, event)
        self.on_failure.due(Ended(entry, end, tail))

    def _command(self, entry: Entry, command: Command, timeout: float, output: actions.Output,
                 which: str) -> actions.Result:
        """One of the event's commands, as its user if it names one, with its start recorded."""
        seq, event, log = entry.seq, entry.event, self.following.log
        delay = time.time() - entry.time  # for the log line only
        argv = command.for_event(event)
        as_user = "" if command.user is None else f" as {command.user}" + (f":{command.group}" if command.group else "")
        try:
            ids = command.run_as()
        except KeyError as exc:
            result = actions.Result(None, None, 0.0, error=f"{exc.args[0]} (it did when the configuration was read)")
        else:
            box = self.containment.box(seq)

            def started(pid: int) -> None:
                """Recorded and logged after the spawn, so nothing of ours delays the action.  Its start
                time is bracketed by two clock reads (identity.ticks: reading /proc while the child is
                in exec() would wait); it tells the action from a later process with the same pid."""
                start = StartRecord(op="start", seq=seq, t=time.time(), key=event.key, event=str(event),
                                    state=event.state, pid=pid, pid_start_min=spawning, pid_start_max=ticks(),
                                    worker=self.worker, worker_start=self.worker_start)
                if box.cgroup is not None:
                    start["cgroup"] = box.cgroup  # for a recovering worker, whichever cgroup it is in
                self.ledger.record(start, event)
                log.info(seq, event, f"action started{which}: {' '.join(argv)}{as_user} (pid {pid}, timeout "
                                     f"{timeout:g}s, queued {delay * 1000:.1f} ms)")

            env = actions.event_env(entry, command.base_environment(self.environ))
            spawning = ticks()
            result = actions.run_action(argv, env, timeout, self.following.settings.kill_grace, output=output,
                                        note=lambda text: log.warn(seq, event, text), started=started, box=box,
                                        ids=ids)
        log.line("INFO" if result.ok else "ERROR", seq, event,
                 f"action ended{which}: {result.describe()} after {result.duration:.3f}s")
        return result


def _size(path: str) -> int:
    """0 for a file not made yet (the journal, before the reader's first event)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
