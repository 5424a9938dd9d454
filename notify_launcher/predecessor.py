"""The state directory that served this FIFO before us, when keepalived was reloaded with another
`--state-dir`: our events queue behind its work, never beside it.

The workers of two state directories know nothing of each other: each runs its own journal, one
action at a time.  So after a reload that changed `--state-dir` (the same FIFO, a new command
line), the new reader's events would run while the old directory's slow action still runs, and
before the events journaled there earlier.  Each reader therefore records, host-wide, the state
directory its FIFO's events are journaled into (REGISTRY, one file per FIFO path, its writer's
alone): the other one while it queues behind it, its own once that is idle; a reader that
finds another one there, whose worker lives and still has work (an action running, events
pending), journals its events into that directory's journal, behind that work (run by that
worker, in order, under our settings: the entries name our settings version), until it is idle;
from then on into its own.  The log says which, and when it ends.  This costs one file read and
one write at start; the check of the other directory runs per event only while we queue behind it.
Entries are never pruned: one of a few dozen bytes per FIFO path ever served, and a FIFO that does
not exist now may be one keepalived is re-creating in a reload.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from notify_launcher import identity, pidfile, settingsfile
from notify_launcher.config import Settings
from notify_launcher.events import Event
from notify_launcher.handoff import Doorbell
from notify_launcher.journal import JournalWriter
from notify_launcher.log import Log
from notify_launcher.registry import REGISTRY, entry_path
from notify_launcher.statedir import FILE_MODE, StatePaths, ensure_dir, write_atomic

class Predecessor:
    """`start()` reads and replaces the registry's entry; `journal()` is the writer our events go to
    while we queue behind the other directory (None: our own), `journaled()` rings its worker."""

    def __init__(self, settings: Settings, paths: StatePaths, fifo: str, log: Log, registry: str = REGISTRY,
                 pause: Callable[[float], None] = time.sleep) -> None:
        self.settings, self.paths, self.fifo, self.log, self.registry = settings, paths, fifo, log, registry
        self.pause = pause  # how the other journal's writer waits for its lock (JournalWriter)
        self.other: StatePaths | None = None  # the directory we queue behind, while we do
        self._writer: JournalWriter | None = None
        self._doorbell: Doorbell | None = None

    def start(self) -> None:
        """Find the directory where our FIFO's events were journaled before us, and name the one
        ours go to in its place: that one while we queue behind its work, else ours."""
        previous = _read(entry_path(self.fifo, self.registry))
        try:
            self._queue_behind(previous)
        finally:
            self._record(previous, self.paths.root if self.other is None else self.other.root)

    def _record(self, previous: str | None, root: str) -> None:
        """Name `root` in the registry as where this FIFO's events are journaled (pending work lives)."""
        path = entry_path(self.fifo, self.registry)
        if previous == root:
            return
        try:
            ensure_dir(self.registry)
            write_atomic(path, root.encode(), FILE_MODE, sync=False)
        except OSError as exc:
            self.log.warn(None, None, f"cannot record in {path} that {root} serves {self.fifo} "
                                      f"({exc.strerror}): a reader started with another --state-dir will not "
                                      f"know to queue behind this one's work")

    def _queue_behind(self, previous: str | None) -> None:
        if previous is None or previous == self.paths.root or not os.path.isdir(previous):
            return
        other = StatePaths(previous)
        work = _work(other)
        if work is None:
            return
        live, what = work
        if not live:
            self.log.warn(None, None, f"{self.fifo} was served by the state directory {previous} before us (keepalived "
                                      f"reloaded with another --state-dir); it holds work no worker runs ({what}): "
                                      f"that runs when a reader of {previous} starts again; ours runs in "
                                      f"{self.paths.root}, now")
            return
        self.other = other
        self._writer = JournalWriter(other.journal, version=settingsfile.version(self.settings),
                                     report=self.log.line, pause=self.pause)
        self._doorbell = Doorbell(other)
        self.log.warn(None, None, f"{self.fifo} was served by the state directory {previous} before us (keepalived "
                                  f"reloaded with another --state-dir), and its worker still works ({what}): our "
                                  f"events queue behind it, journaled into {previous} and run there in order with "
                                  f"our settings, until it is idle; then into {self.paths.root}")

    def journal(self) -> JournalWriter | None:
        """The journal our events go to while the other directory has work; None once it is idle
        (said once) or its worker is gone: ours from then on."""
        if self.other is None:
            return None
        work = _work(self.other)
        if work is not None and work[0]:
            return self._writer
        self.log.info(None, None, f"the state directory {self.other.root} is idle: our events go into "
                                  f"{self.paths.root} from now on")
        self._record(self.other.root, self.paths.root)
        self.other = None
        return None

    def journaled(self, seq: int | None, event: Event) -> None:
        """Ring the other directory's worker (it lives: `journal` checked), so it reads its journal."""
        if self._doorbell is not None:
            self._doorbell.answered()


def _read(path: str) -> str | None:
    """The state directory named in a registry entry; only an entry root wrote (or we, not root)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    return text if text.startswith("/") else None


def _work(other: StatePaths) -> tuple[bool, str] | None:
    """What the other directory still has to do (None: nothing), and whether a worker lives there to
    do it."""
    from notify_launcher.status import read_status  # only when a predecessor exists

    try:
        status = read_status(other)
    except Exception:  # its files cannot be read: nothing we could wait for (queueing must never stick)
        return None
    if status.idle:
        return None
    named = pidfile.read(other)
    live = named is not None and identity.is_running(named)
    running = status.snapshot.running
    doing = f"#{running['seq']} running, " if running else ""
    return live, f"{f'pid {named.pid}: ' if live and named else ''}{doing}{len(status.pending)} pending"
