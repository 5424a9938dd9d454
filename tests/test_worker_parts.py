"""The worker's parts, each through its public API: the settings it follows, the progress ledger,
crash recovery, the drain, the metrics publisher and the on_failure runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
from support import VI

from notify_launcher.config import Settings
from notify_launcher.containment import Containment
from notify_launcher.drain import Drain
from notify_launcher.eventrun import EventRunner
from notify_launcher.events import Event
from notify_launcher.following import Following
from notify_launcher.identity import stat, ticks
from notify_launcher.journal import JournalWriter, read_all
from notify_launcher.ledger import Ledger, end_of
from notify_launcher.log import Log
from notify_launcher.onfailure import Ended, OnFailureRunner
from notify_launcher.progress import replay
from notify_launcher.publisher import METRICS_EVERY, MetricsPublisher
from notify_launcher.recovery import MAX_TRIES, Recovery
from notify_launcher.settingsfile import publish
from notify_launcher.statedir import StatePaths, ensure_state_dir


class Parts:
    """One worker's parts over a state directory in `tmp`, built as Worker builds them."""

    def __init__(self, tmp: Path, **settings: object) -> None:
        self.paths: StatePaths = ensure_state_dir(str(tmp / "state"))
        s = Settings(state_dir=self.paths.root, log_file=str(tmp / "log"), **settings)  # type: ignore[arg-type]
        publish(self.paths, s)
        self.following = Following(self.paths, s, Log(s.log_file, "worker"))
        self.ledger = Ledger(self.following)
        self.publisher = MetricsPublisher(self.following, self.ledger.totals)
        self.containment = Containment(self.paths.root)
        self.on_failure = OnFailureRunner(self.following, self.containment, dict(os.environ))
        self.runner = EventRunner(self.following, self.ledger, self.on_failure, self.containment, os.getpid(),
                                  dict(os.environ))
        self.drain = Drain(self.following, self.ledger, self.publisher, self.on_failure, self.runner, os.getpid())
        self.log_file = Path(s.log_file)

    def journal(self, *states: str) -> None:
        writer = JournalWriter(self.paths.journal)
        for state in states:
            writer.append(Event("INSTANCE", "VI_1", state, 100), time.time(), 1)
        writer.close()

    def progress(self, *records: dict[str, object]) -> None:
        with open(self.paths.progress, "a") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")

    def start(self) -> int:
        """As Worker.open_state: follow, replay, recover; the seq the drain goes on from."""
        self.following.start()
        snap = self.ledger.start()
        done = snap.done_seq
        if snap.trying or snap.running is not None:
            done, skipped = Recovery(self.following, self.ledger, self.containment, os.getpid()).recover(snap)
            if skipped is not None:
                self.on_failure.due(skipped)
        self.drain.start(done, snap.last)
        return done


def group_alive(pgrp: int) -> bool:
    """A process of process group `pgrp` still runs (zombies do not count: they hold nothing)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = stat(int(name))
            if st is not None and st.pgrp == pgrp and st.state != "Z":
                return True
    return False


def _script(path: Path, text: str) -> str:
    path.write_text(f"#!/bin/sh\n{text}\n")
    path.chmod(0o755)
    return str(path)


# -- recovery -----------------------------------------------------------------------------------

def test_recovery_reruns_an_event_a_worker_died_on(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    parts.journal("BACKUP", "MASTER")
    parts.progress({"op": "try", "seq": 1, "worker": 99},
                   {"op": "end", "seq": 1, "key": "INSTANCE VI_1", "t": 1.0, "event": VI.format("BACKUP"),
                    "state": "BACKUP", "result": "exit 0"},
                   {"op": "try", "seq": 2, "worker": 99})
    assert parts.start() == 1, "#2 runs again"


def test_recovery_skips_an_event_after_max_tries_and_the_queue_goes_on(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    parts.journal("BACKUP", "MASTER")
    parts.progress(*[{"op": "try", "seq": 1, "worker": 99}] * MAX_TRIES)
    assert parts.start() == 1
    end = replay(parts.paths.progress, keep_ends=5).ends[-1]
    assert end["seq"] == 1 and end["ok"] is False and end["result"] == f"skipped: {MAX_TRIES} workers died on this event"
    assert end["event"] == VI.format("BACKUP"), "named from the journal"


def test_recovery_by_policy_skip_after_an_action_was_killed(tmp_path: Path) -> None:
    parts = Parts(tmp_path, on_crash="skip")
    parts.journal("BACKUP", "MASTER")
    parts.progress({"op": "try", "seq": 1, "worker": 99},
                   {"op": "start", "seq": 1, "pid": 2 ** 22 + 7, "t": 0.0, "pid_start_min": 0, "pid_start_max": 0,
                    "worker": 99, "worker_start": 0,
                    "key": "INSTANCE VI_1", "state": "BACKUP", "event": VI.format("BACKUP")})
    assert parts.start() == 1
    assert replay(parts.paths.progress, keep_ends=1).ends[-1]["result"] == "skipped after worker crash"


def _orphan(pid: int, first: int, last: int, t: float) -> dict[str, object]:
    """The start record of a dead worker's action `pid`, spawned between start times `first` and `last`."""
    return {"op": "start", "seq": 1, "pid": pid, "t": t, "pid_start_min": first, "pid_start_max": last,
            "worker": 99, "worker_start": 0, "key": "INSTANCE VI_1", "state": "BACKUP", "event": VI.format("BACKUP")}


def test_recovery_ends_the_dead_workers_action_by_its_start_time(tmp_path: Path) -> None:
    """The action a dead worker left running is killed (its whole process group) when its pid still
    names the process spawned between the record's two start-time bounds, and recovery goes on only
    once the group is gone (the next event's action must not start beside it)."""
    parts = Parts(tmp_path)
    parts.journal("BACKUP")
    first = ticks()
    action = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        parts.progress({"op": "try", "seq": 1, "worker": 99}, _orphan(action.pid, first, ticks(), time.time()))
        parts.start()
        assert not group_alive(action.pid), "recovery went on while the killed action still ran"
        assert action.wait(60) == -signal.SIGKILL
        assert f"ending the dead worker's action pid {action.pid}" in parts.log_file.read_text()
    finally:
        action.kill()
        action.wait()


def test_recovery_spares_a_later_process_given_the_actions_pid_whatever_the_wall_clock(tmp_path: Path) -> None:
    """The recorded action was spawned before this process started (its start-time bounds end before
    it), so this process only got its pid: it lives, although the record's wall-clock spawn time is
    this process's create time (as after the clock was stepped back)."""
    parts = Parts(tmp_path)
    parts.journal("BACKUP")
    before = ticks()
    while ticks() == before:  # the next tick: a process started now has a start time above `before`
        time.sleep(0.001)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        created = psutil.Process(other.pid).create_time()
        parts.progress({"op": "try", "seq": 1, "worker": 99}, _orphan(other.pid, before, before, created))
        parts.start()
        assert other.poll() is None, "a process that merely has the dead action's pid was killed"
        assert "ending the dead worker's action" not in parts.log_file.read_text()
    finally:
        other.kill()
        other.wait()


# -- the drain ------------------------------------------------------------------------------------

def test_the_drain_runs_each_event_once_in_order_and_records_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    parts = Parts(tmp_path, handler=(_script(tmp_path / "h", f'echo "$NL_SEQ $3" >> {runs}'),))
    parts.journal("BACKUP", "MASTER", "FAULT")
    parts.start()
    assert parts.drain.drain(lambda: True)
    assert runs.read_text().split("\n")[:-1] == ["1 BACKUP", "2 MASTER", "3 FAULT"]
    assert parts.drain.done_seq == 3
    assert [e["result"] for e in replay(parts.paths.progress, keep_ends=5).ends] == ["exit 0"] * 3
    assert parts.drain.drain(lambda: True) and runs.read_text().count("\n") == 3, "nothing runs twice"


def test_the_drain_leaves_when_the_state_directory_is_not_ours(tmp_path: Path) -> None:
    parts = Parts(tmp_path, handler=("/bin/true",))
    parts.journal("BACKUP")
    parts.start()
    assert not parts.drain.drain(lambda: False)
    assert parts.drain.done_seq == 0


def test_coalescing_skips_superseded_events_of_the_same_instance(tmp_path: Path) -> None:
    parts = Parts(tmp_path, handler=("/bin/true",), coalesce=True)
    parts.journal("BACKUP", "MASTER", "FAULT")
    parts.start()
    parts.drain.drain(lambda: True)
    assert [e["result"] for e in replay(parts.paths.progress, keep_ends=5).ends] == \
        ["superseded by #3", "superseded by #3", "exit 0"]


def test_a_failure_inside_the_launcher_is_the_events_not_the_queues(tmp_path: Path) -> None:
    parts = Parts(tmp_path, handler=("/nonexistent/handler",))
    parts.journal("BACKUP", "MASTER")
    parts.start()
    parts.drain.drain(lambda: True)
    ends = replay(parts.paths.progress, keep_ends=5).ends
    assert [(e["seq"], e["ok"]) for e in ends] == [(1, False), (2, False)]
    assert ends[0]["result"] == "could not start: /nonexistent/handler: No such file or directory"


def test_a_changed_settings_file_is_followed_log_file_included(tmp_path: Path) -> None:
    parts = Parts(tmp_path, handler=("/bin/true",))
    parts.journal("BACKUP")
    parts.start()
    new_log = tmp_path / "new.log"
    publish(parts.paths, Settings(state_dir=parts.paths.root, log_file=str(new_log), handler=("/bin/false",)))
    parts.drain.drain(lambda: True)
    assert parts.following.settings.handler == ("/bin/false",)
    assert f"settings changed: logging to {new_log}" in parts.log_file.read_text()
    assert "action ended: exit 1" in new_log.read_text()


def test_a_damaged_settings_file_keeps_the_settings_in_use(tmp_path: Path) -> None:
    parts = Parts(tmp_path, handler=("/bin/true",))
    parts.start()
    Path(parts.paths.settings).write_text("{not json")
    parts.following.follow()
    assert parts.following.settings.handler == ("/bin/true",)
    assert f"cannot follow the settings ({parts.paths.settings} is damaged" in parts.log_file.read_text()


# -- the metrics publisher ------------------------------------------------------------------------

def test_metrics_are_coalesced_during_a_burst_and_written_when_the_queue_is_empty(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.prom"
    parts = Parts(tmp_path, metrics_file=str(metrics))
    parts.journal(*["BACKUP"] * 3)
    parts.start()
    waiting = read_all(parts.paths.journal)
    parts.publisher.publish(waiting)
    assert "notify_launcher_queue_pending 3" in metrics.read_text()
    for _ in range(METRICS_EVERY - 1):
        parts.publisher.publish(waiting[1:])
    assert "notify_launcher_queue_pending 3" in metrics.read_text(), "coalesced within METRICS_EVERY events"
    parts.publisher.publish(waiting[1:])
    assert "notify_launcher_queue_pending 2" in metrics.read_text()
    parts.publisher.publish(waiting[2:])
    parts.publisher.publish([])
    assert "notify_launcher_queue_pending 0" in metrics.read_text(), "an empty queue is always written"


def test_a_failed_metrics_write_is_logged_once_and_its_recovery_once(tmp_path: Path) -> None:
    metrics = tmp_path / "sub" / "metrics.prom"
    parts = Parts(tmp_path, metrics_file=str(metrics))
    parts.start()
    for _ in range(3):
        parts.publisher.publish([])
    assert parts.log_file.read_text().count(f"cannot write the metrics file {metrics}") == 1
    metrics.parent.mkdir()
    parts.publisher.publish([])
    parts.publisher.publish([])
    assert parts.log_file.read_text().count(f"metrics file {metrics} written again") == 1


# -- the on_failure runner ------------------------------------------------------------------------

def test_on_failure_runs_once_for_a_failed_event_with_its_result(tmp_path: Path) -> None:
    out = tmp_path / "hook"
    hook = _script(tmp_path / "on_failure", f'echo "$NL_RESULT|$NL_EXIT|$NL_DETAIL|$NL_OUTPUT|$*" >> {out}')
    parts = Parts(tmp_path, on_failure=(hook,))
    parts.journal("MASTER")
    parts.start()
    entry = read_all(parts.paths.journal)[0]
    end = end_of(entry, "exit 3", ok=False, worker=os.getpid())
    end["exit"] = 3
    parts.on_failure.due(Ended(entry, end, ["last words"]))
    parts.on_failure.run()
    parts.on_failure.run()
    assert out.read_text() == "failed|3|exit 3|last words|INSTANCE VI_1 MASTER 100\n", "once"


def test_on_failure_does_not_run_for_an_event_that_succeeded(tmp_path: Path) -> None:
    out = tmp_path / "hook"
    parts = Parts(tmp_path, on_failure=(_script(tmp_path / "on_failure", f"touch {out}"),))
    parts.journal("MASTER")
    parts.start()
    entry = read_all(parts.paths.journal)[0]
    parts.on_failure.due(Ended(entry, end_of(entry, "exit 0", ok=True, worker=os.getpid())))
    parts.on_failure.run()
    assert not out.exists()


# -- the ledger -----------------------------------------------------------------------------------

def test_the_ledger_counts_what_it_records_and_follows_a_removed_file(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    parts.journal("MASTER", "BACKUP")
    parts.start()
    first, second = read_all(parts.paths.journal)
    parts.ledger.finish(end_of(first, "exit 0", ok=True, worker=os.getpid()), first.event)
    os.unlink(parts.paths.progress)
    assert parts.ledger.follow()
    parts.ledger.finish(end_of(second, "exit 1", ok=False, worker=os.getpid()), second.event)
    assert [e["seq"] for e in replay(parts.paths.progress, keep_ends=5).ends] == [2]
    assert parts.ledger.totals.actions == {"ok": 1, "failed": 1, "timed_out": 0, "skipped": 0}
