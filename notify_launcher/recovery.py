"""Crash recovery: what a worker owes the queue when workers died on an event before it.

The progress file says which event a dead worker took up (its `try` records count the workers that
died on it) and whether its action had started.  The dead worker's action is ended first; then the
event runs again, or is skipped -- by policy (`on_crash = skip`) after an action was killed, and
always once MAX_TRIES workers died on it, so one poisonous event cannot stop the queue.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from notify_launcher.following import Following
from notify_launcher.identity import group_alive, started_between
from notify_launcher.journal import Entry, read_all
from notify_launcher.ledger import Ledger, end_of
from notify_launcher.onfailure import Ended
from notify_launcher.progress import EndRecord, Snapshot, StartRecord

MAX_TRIES = 3  # workers that may die on one event before it is recorded as skipped
ORPHAN_GONE_WAIT = 5.0  # s at most for the dead worker's SIGKILLed action to be gone


class Recovery:
    """`recover(snap)` once, before the first event: returns the last finished seq to go on from and
    the event it skipped, if any (its on_failure is due)."""

    def __init__(self, following: Following, ledger: Ledger, worker: int) -> None:
        self.following, self.ledger, self.worker = following, ledger, worker

    def recover(self, snap: Snapshot) -> tuple[int, Ended | None]:
        """End what the last worker left running, then re-run its event (the seq before it is
        returned) or skip it (recorded; its seq is returned)."""
        settings, log = self.following.settings, self.following.log
        running = snap.running
        seq = snap.trying or (running["seq"] if running else 0)
        tries = snap.tries or 1
        entry = self._journaled(seq)
        subject: object = entry.event if entry else (running["event"] if running else None)
        if running is not None and running["seq"] == seq:
            log.error(seq, subject, f"worker pid {running['worker']} died while this event's action "
                                    f"(pid {running['pid']}) ran; policy on_crash={settings.on_crash}")
            end_orphan(running, lambda text: log.warn(seq, subject, text))
        else:
            running = None
            log.error(seq, subject, f"a worker died while preparing this event (attempt {tries} of {MAX_TRIES})")
        if tries >= MAX_TRIES:
            why = f"skipped: {tries} workers died on this event"
        elif running is not None and settings.on_crash == "skip":
            why = "skipped after worker crash"
        else:
            return seq - 1, None
        log.error(seq, subject, f"{why}; the queue goes on")
        if entry is not None:
            end = end_of(entry, why, ok=False, worker=self.worker)
        else:  # the journal lost it (removed): name it as the start record did, if any
            end = EndRecord(op="end", seq=seq, t=time.time(), key=running["key"] if running else "?",
                            event=str(subject), state=running["state"] if running else "?", result=why, ok=False,
                            worker=self.worker)
        self.ledger.finish(end, subject)
        # (without the journal entry there are no event arguments to give on_failure)
        return seq, None if entry is None else Ended(entry, end)

    def _journaled(self, seq: int) -> Entry | None:
        """The journal entry of `seq`, if the journal still has it."""
        return next((e for e in read_all(self.following.paths.journal) if e.seq == seq), None)


def end_orphan(running: StartRecord, note: Callable[[str], None]) -> None:
    """Kill the process group of an action whose worker died, unless its pid now names another process
    (its start time is not the one the start record brackets: identity.py)."""
    pid = running["pid"]
    if started_between(pid, running["pid_start_min"], running["pid_start_max"]):
        note(f"ending the dead worker's action pid {pid}")
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        # SIGKILL is delivered when each process runs next: the next event's action must not start
        # beside what is left of this one.
        deadline = time.monotonic() + ORPHAN_GONE_WAIT
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.005)
