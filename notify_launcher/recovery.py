"""Crash recovery: what a worker owes the queue when workers died on an event before it.

The progress file says which event a dead worker took up (its `try` records count the workers that
died on it) and whether its action had started.  Every process of the dead worker's action is ended
first (containment.py: its cgroup, its mark, and its session while its pid is still the action by
start time -- never a guess from the wall clock), also when no start record was written (the worker
died right after the spawn); then the event runs again, or is skipped -- by policy (`on_crash =
skip`) after an action was killed, always once MAX_TRIES workers died on it, so one poisonous
event cannot stop the queue, and always when the journal no longer holds it (a torn last line, a
removed journal): an event that cannot run again must still end, or `wait` would never return.
"""

from __future__ import annotations

TYPE_CHECKING = False

import time

from notify_launcher.containment import Containment
from notify_launcher.following import Following
from notify_launcher.journal import Entry, read_all
from notify_launcher.ledger import Ledger, end_of
from notify_launcher.onfailure import Ended
from notify_launcher.progress import Snapshot

if TYPE_CHECKING:
    from notify_launcher.records import StartRecord

MAX_TRIES = 3  # workers that may die on one event before it is recorded as skipped


class Recovery:
    """`recover(snap)` once, before the first event: returns the last finished seq to go on from and
    the event it skipped, if any (its on_failure is due)."""

    def __init__(self, following: Following, ledger: Ledger, containment: Containment, worker: int) -> None:
        self.following, self.ledger, self.containment, self.worker = following, ledger, containment, worker

    def recover(self, snap: Snapshot) -> tuple[int, Ended | None]:
        """End what the last worker left running, then re-run its event (the seq before it is
        returned) or skip it (recorded; its seq is returned)."""
        log = self.following.log
        running = snap.running
        seq = snap.trying or (running["seq"] if running else 0)
        tries = snap.tries or 1
        entry = self._journaled(seq)
        settings = self.following.settings if entry is None else self.following.for_entry(entry)
        subject: object = entry.event if entry else (running["event"] if running else None)
        if running is not None and running["seq"] == seq:
            log.error(seq, subject, f"worker pid {running['worker']} died while this event's action "
                                    f"(pid {running['pid']}) ran; policy on_crash={settings.on_crash}")
        else:
            running = None
            log.error(seq, subject, f"worker pid {snap.trying_worker} died while preparing this event "
                                    f"(attempt {tries} of {MAX_TRIES})")
        self._end_action(seq, running, subject)
        if tries >= MAX_TRIES:
            why = f"skipped: {tries} workers died on this event"
        elif entry is None:  # torn off by a power loss, or removed: nothing left to run again
            why = "skipped: its journal entry is lost (torn or removed), so it cannot run again"
        elif running is not None and settings.on_crash == "skip":
            why = "skipped after worker crash"
        else:
            return seq - 1, None
        log.error(seq, subject, f"{why}; the queue goes on")
        if entry is not None:
            end = end_of(entry, why, ok=False, worker=self.worker)
        else:  # the journal lost it (removed): name it as the start record did, if any
            end = {"op": "end", "seq": seq, "t": time.time(), "key": running["key"] if running else "?",
                   "event": str(subject), "state": running["state"] if running else "?", "result": why, "ok": False,
                   "worker": self.worker}
        self.ledger.finish(end, subject)
        # (without the journal entry there are no event arguments to give on_failure)
        return seq, None if entry is None else Ended(entry, end, (), settings)

    def _end_action(self, seq: int, running: StartRecord | None, subject: object) -> None:
        """Whatever of `seq`'s action lives is ended before the event is re-run or skipped: its start
        record's cgroup and pid if there is one, and anything carrying its mark."""
        log = self.following.log
        bracket = (running["pid_start_min"], running["pid_start_max"]) if running else None
        self.containment.end_recorded(seq, running["pid"] if running else None, bracket,
                                      running.get("cgroup") if running else None,
                                      lambda text: log.warn(seq, subject, text))

    def _journaled(self, seq: int) -> Entry | None:
        """The journal entry of `seq`, if the journal still has it."""
        return next((e for e in read_all(self.following.paths.journal) if e.seq == seq), None)
