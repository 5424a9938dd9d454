"""The detached worker: take the lock, run journaled events strictly in sequence order, one at a time.

Order comes from the journal, never from the lock (filelock polls and is not fair).  A worker
lingers after the queue is empty, waiting on the doorbell, so an event that arrives while it lives
costs no fork: this is what keeps the launcher's own latency under a millisecond.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable

import psutil
from filelock import FileLock, Timeout

from notify_launcher import actions
from notify_launcher.config import Settings
from notify_launcher.handoff import DoorbellListener, release_standby, say_hello
from notify_launcher.journal import Entry, JournalFollower
from notify_launcher.log import Log
from notify_launcher.progress import ProgressLog, Record, replay
from notify_launcher.statedir import FILE_MODE, StatePaths, named_worker_pid
from notify_launcher.systemd_unit import TAKEOVER_WAIT

PR_SET_CHILD_SUBREAPER = 36
JOURNAL_MAX = 64 * 1024  # compact when idle and larger than this (the state dir is usually tmpfs: RAM)
PROGRESS_MAX = 512 * 1024
PID_REUSE_GUARD = 2.0  # s: an orphan's create time must be this close to the recorded spawn time
KEEP_HISTORY = 1000  # end records kept by a compaction, for `status` and history


def run_forked_worker(settings: Settings, standby_fd: int, hello_fd: int) -> int:
    """Inside the daemonized child: `standby_fd` holds standby.lock, `hello_fd` tells the reader our
    pid once we hold worker.lock (see handoff.py)."""

    def handed_over() -> None:
        say_hello(hello_fd)
        release_standby(standby_fd)

    return _serve(settings, f"detached: own session {os.getsid(0)}, double fork", handed_over)


def run_unit_worker(state_dir: str, unit: str) -> int:
    """Inside a transient systemd unit (systemd_unit.py): queue on standby.lock ourselves."""
    paths = StatePaths(state_dir)
    with open(paths.settings) as fh:
        settings = Settings.from_json(fh.read())
    standby = FileLock(paths.standby_lock, mode=FILE_MODE, preserve_lock_file=True)
    try:
        standby.acquire(timeout=TAKEOVER_WAIT)
    except Timeout:
        Log(settings.log_file, "worker", settings.log_level).debug(
            None, None, f"unit {unit}: another worker is queued already; exiting")
        return 0
    return _serve(settings, f"detached: systemd unit {unit}.service, out of keepalived's cgroup", standby.release)


def _serve(settings: Settings, how: str, handed_over: Callable[[], None]) -> int:
    """Take worker.lock, listen, tell whoever spawned us (`handed_over`), run until idle."""
    log = Log(settings.log_file, "worker", settings.log_level)
    paths = StatePaths(settings.state_dir)
    lock = FileLock(paths.worker_lock, mode=FILE_MODE, preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = named_worker_pid(paths)
        log.info(None, None, f"waiting for the worker lock (held by {f'pid {holder}' if holder else 'another worker'})")
        lock.acquire()
    try:
        worker = Worker(settings, paths, log, how)
        handed_over()
        return worker.run()
    except Exception as exc:  # the log is the only place anyone will see this
        log.error(None, None, f"worker failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        lock.release()


class Worker:
    """Holds worker.lock for its whole life."""

    def __init__(self, settings: Settings, paths: StatePaths, log: Log, how: str) -> None:
        self.settings, self.paths, self.log = settings, paths, log
        self.me = psutil.Process()
        self._stopping = False
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.doorbell = DoorbellListener(paths, rfd)
        self.doorbell.open()  # before the first journal read: see handoff.py
        _become_subreaper()
        with open(paths.worker_pid, "w") as fh:
            fh.write(f"{self.me.pid} {self.me.create_time()}\n")
        self.journal = JournalFollower(paths.journal)
        self.progress = ProgressLog(paths.progress)
        snap = replay(paths.progress)
        self.done_seq = snap.done_seq
        self._settings_id = _file_id(paths.settings)
        log.info(None, None, f"worker started ({how}; lock taken); last finished event #{self.done_seq}")
        if snap.running is not None:
            self._recover(snap.running)

    def _on_term(self, signum: int, frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Drain, linger on the doorbell, drain again; leave only after a final re-read, done once the
        doorbell is closed, finds nothing (handoff.py: a ring may have come just before the close)."""
        while True:
            self._drain()
            self._compact()
            if not self._stopping and self.doorbell.wait(self.settings.linger):
                continue
            self.doorbell.close()
            if self.journal.pending():
                self.doorbell.open()
                continue
            break
        if self._stopping:
            self.log.info(None, None, "SIGTERM: queue drained, exiting")
        else:
            self.log.debug(None, None, f"idle for {self.settings.linger:g}s; exiting")
        os.unlink(self.paths.worker_pid)
        return 0

    def _compact(self) -> None:
        """Keep the state directory small: it usually lives in /run, which is RAM."""
        try:
            if os.stat(self.paths.journal).st_size > JOURNAL_MAX and self.journal.compact():
                self.log.info(None, None, f"journal compacted (everything up to #{self.done_seq} is done)")
            if self.progress.size() > PROGRESS_MAX:
                self.progress.compact(KEEP_HISTORY)
                self.log.info(None, None, f"progress compacted to the last {KEEP_HISTORY} results")
        except OSError as exc:
            self.log.warn(None, None, f"cannot compact the state directory ({exc.strerror}); will try again")

    def _drain(self) -> None:
        while True:
            entries, damaged = self.journal.read_new()
            for line in damaged:
                self.log.error(None, None, f"damaged journal line skipped: {line[:200]!r}")
            if not entries:
                return
            self._reload_settings()
            entries = [e for e in entries if e.seq > self.done_seq]
            newest = {e.event.key: e.seq for e in entries} if self.settings.coalesce else {}
            for entry in entries:
                if entry.seq != self.done_seq + 1 and self.done_seq:
                    self.log.error(entry.seq, entry.event,
                                   f"events #{self.done_seq + 1}..#{entry.seq - 1} are missing from the journal")
                later = newest.get(entry.event.key, entry.seq)
                if later != entry.seq and entry.event.type != "READER":
                    self.log.info(entry.seq, entry.event, f"skipped: superseded by #{later} (coalesce = yes)")
                    self._end(entry, f"superseded by #{later}", ok=True)
                else:
                    self._run(entry)
                self.done_seq = entry.seq

    def _reload_settings(self) -> None:
        """Follow the newest reader's settings (the administrator may have changed the config)."""
        ident = _file_id(self.paths.settings)
        if ident == self._settings_id or ident is None:
            return
        try:
            with open(self.paths.settings) as fh:
                self.settings = Settings.from_json(fh.read())
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self.log.error(None, None, f"cannot read {self.paths.settings}: {exc}; keeping the old settings")
        self._settings_id = ident

    def _run(self, entry: Entry) -> None:
        seq, event = entry.seq, entry.event
        delay = time.time() - entry.time
        prefix, timeout = self.settings.action_for(event)
        if not prefix:
            quiet = " (a quiet state: name it in a [match] rule to run something)" \
                if event.state in self.settings.quiet_states else ""
            self.log.info(seq, event, f"no action configured for this event{quiet}")
            self._end(entry, "no action", ok=True)
            return
        argv = list(prefix) + event.fields()
        env = dict(os.environ, NL_TYPE=event.type, NL_NAME=event.name, NL_STATE=event.state,
                   NL_PRIORITY=str(event.priority), NL_SEQ=str(seq), NL_VS=event.vs)

        def started(pid: int) -> None:
            """Recorded and logged after the spawn, so nothing of ours delays the action.  The spawn
            time stands for the action's create time (reading that from /proc while the child is in
            exec() waits ~1.5 ms); it tells the action from a later process with the same pid."""
            self._record("start", seq, event, t=time.time(), key=event.key, event=str(event),
                         state=event.state, pid=pid, worker=self.me.pid, worker_ctime=self.me.create_time())
            self.log.info(seq, event, f"action started: {' '.join(argv)} (pid {pid}, timeout {timeout:g}s, "
                                      f"queued {delay * 1000:.1f} ms)")

        result = actions.run_action(
            argv, env, timeout, self.settings.kill_grace,
            output=lambda stream, text: self.log.info(seq, event, f"{stream}: {text}"),
            note=lambda text: self.log.warn(seq, event, text),
            started=started)
        level = "INFO" if result.ok else "ERROR"
        self.log.line(level, seq, event, f"action ended: {result.describe()} after {result.duration:.3f}s")
        self._end(entry, result.describe(), ok=result.ok, duration=round(result.duration, 6),
                  exit=result.exit_code, signal=result.signal, timed_out=result.timed_out)

    def _end(self, entry: Entry, result: str, ok: bool, **extra: object) -> None:
        e = entry.event
        self._record("end", entry.seq, e, t=time.time(), key=e.key, event=str(e), state=e.state,
                             result=result, ok=ok, **extra)

    def _record(self, op: str, seq: int, subject: object, **fields: object) -> None:
        failed = self.progress.record(op, seq, **fields)
        if failed:
            self.log.error(seq, subject, f"cannot record {op!r} in {self.paths.progress} ({failed}); "
                                       f"status may lag, and a crash now would repeat this event")

    def _recover(self, running: Record) -> None:
        """A worker died during an action: end what it left running, then re-run or skip the event."""
        seq = running["seq"]
        self.log.error(seq, running["event"],
                       f"worker pid {running['worker']} died while this event's action (pid {running['pid']}) "
                       f"ran; policy on_crash={self.settings.on_crash}")
        try:
            orphan = psutil.Process(running["pid"])
            if abs(orphan.create_time() - running["t"]) < PID_REUSE_GUARD:
                self.log.warn(seq, running["event"], f"ending the dead worker's action pid {orphan.pid}")
                os.killpg(orphan.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError):
            pass
        if self.settings.on_crash == "skip":
            self._record("end", seq, running["event"], t=time.time(), key=running["key"], event=running["event"],
                                 state=running["state"], result="skipped after worker crash", ok=False)
            self.done_seq = seq
        else:
            self.done_seq = seq - 1


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _become_subreaper() -> None:
    """Orphans of an action (setsid, double fork) are re-parented to us, so a timeout can find them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
