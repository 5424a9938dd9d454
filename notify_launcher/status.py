"""What the state directory says: per instance/group state, pending events, the running action.

Read-only: `status` and `wait` never take a lock, so they can be run at any time, even while a
worker hangs.  `wait` polls through one StatusReader: each poll reads what was appended to the
progress file since the last one (progress.Follower), and the journal, which holds only what is
not done yet (the worker compacts it when idle).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TypedDict

from notify_launcher import history, identity
from notify_launcher.events import READER_TYPE
from notify_launcher.identity import ProcessId
from notify_launcher.journal import Entry, read_all
from notify_launcher.progress import Follower, Snapshot
from notify_launcher.records import EndRecord, StartRecord
from notify_launcher.statedir import StatePaths


TABLE_MAX = 40  # more names than this: the table only with `status --all`
FAILED_SHOWN = 20


@dataclass
class Status:
    snapshot: Snapshot
    pending: list[Entry]
    last_seq: int

    @property
    def idle(self) -> bool:
        return not self.pending and self.snapshot.running is None


class StatusReader:
    """The state directory's status, read again and again: the progress file is followed from where
    the last read stopped (read from the start only when a compaction or a removal replaced it)."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self.progress = Follower(paths.progress)

    def read(self) -> Status:
        snap = self.progress.read()
        entries = read_all(self.paths.journal)
        running_seq = snap.running["seq"] if snap.running else None
        pending = [e for e in entries if e.seq > snap.done_seq and e.seq != running_seq]
        return Status(snap, pending, entries[-1].seq if entries else 0)

    def close(self) -> None:
        self.progress.close()


def read_status(paths: StatePaths) -> Status:
    reader = StatusReader(paths)
    try:
        return reader.read()
    finally:
        reader.close()


def _worker_alive(running: StartRecord) -> bool:
    """The worker that started the running action still lives (a damaged record's pid -1 or 2**70
    names nobody)."""
    return running["worker"] > 0 and identity.is_running(ProcessId(running["worker"], running["worker_start"]))


def _worker_state(running: StartRecord) -> str:
    """What the running action's worker is doing: "gone", "stopped" (SIGSTOP, a frozen cgroup: it
    neither watches its action's deadline nor records anything until it continues), or "running"."""
    if not _worker_alive(running):
        return "gone"
    st = identity.stat(running["worker"])
    return "stopped" if st is not None and st.state in ("T", "t") else "running"


def _elapsed(running: StartRecord) -> float:
    """How long the action has run, from its start time in boot clock ticks (no wall-clock step
    moves it)."""
    return max(0.0, (identity.ticks() - running["pid_start_min"]) / identity.TICKS_PER_SECOND)


def as_json(status: Status) -> str:
    running = status.snapshot.running
    return json.dumps({
        "last_seq": status.last_seq,
        "done_seq": status.snapshot.done_seq,
        "instances": status.snapshot.last,
        "summary": summary({k: v for k, v in status.snapshot.last.items() if not k.startswith(READER_TYPE)}),
        "running": None if running is None else {**running, "elapsed": _elapsed(running),
                                                 "worker_alive": _worker_alive(running),
                                                 "worker_state": _worker_state(running)},
        "pending": [{"seq": e.seq, "event": str(e.event), "time": e.time} for e in status.pending],
    }, indent=2, sort_keys=True)


def _when(t: float) -> str:
    """Local time of a record's `t`; a damaged one (nan, 1e300) shows as "?" instead of failing."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (ValueError, OverflowError, OSError):
        return "?"


class Summary(TypedDict):
    names: int
    types: dict[str, int]
    states: dict[str, int]
    failed: list[str]


def summary(last: dict[str, EndRecord]) -> Summary:
    """What a site with thousands of names wants first: how many of each type, in which state, and
    those whose last action failed (the per-name table is `--all`)."""
    types: dict[str, int] = {}
    states: dict[str, int] = {}
    for key, rec in last.items():
        types[key.split(" ", 1)[0]] = types.get(key.split(" ", 1)[0], 0) + 1
        states[rec["state"]] = states.get(rec["state"], 0) + 1
    return Summary(names=len(last), types=types, states=states,
                   failed=sorted(key for key, rec in last.items() if not rec.get("ok", True)))


def _summary_lines(table: dict[str, EndRecord]) -> list[str]:
    if not table:
        return []
    s = summary(table)
    types, states, failed = s["types"], s["states"], s["failed"]
    out = [f"names: {len(table)} (" + ", ".join(f"{n} {t}" for t, n in sorted(types.items())) + "); states: "
           + ", ".join(f"{n} {st}" for st, n in sorted(states.items()))]
    if failed:
        out.append(f"last action failed: {len(failed)}: " + ", ".join(failed[:FAILED_SHOWN])
                   + (f" ... and {len(failed) - FAILED_SHOWN} more" if len(failed) > FAILED_SHOWN else ""))
    return out


def as_text(status: Status, every: bool = False) -> str:
    """The summary; the table of every instance/group too with `every`, or when it is short."""
    snap = status.snapshot
    out = [f"events: {status.last_seq} journaled, {snap.done_seq} finished, {len(status.pending)} pending"]
    if snap.running is not None:
        r = snap.running
        worker = {"gone": "  (its worker is gone: the next worker recovers it)",
                  "stopped": f"  (its worker pid {r['worker']} is stopped (SIGSTOP, a frozen cgroup): nothing is "
                             f"watched or recorded until it continues)",
                  "running": ""}[_worker_state(r)]
        out.append(f"running: #{r['seq']} {r['event']}  action pid {r['pid']}, "
                   f"{_elapsed(r):.1f}s so far{worker}")
    else:
        out.append("running: nothing")
    reader = snap.last.get(f"{READER_TYPE} reader")
    if reader is not None:
        out.append(f"last reader exit: {reader['state']} at {_when(reader['t'])} (#{reader['seq']}, {reader['result']})")
    table = {key: rec for key, rec in snap.last.items() if not key.startswith(READER_TYPE)}
    out += _summary_lines(table)
    if table and (every or len(table) <= TABLE_MAX):
        out.append("")
        out.append(f"{'INSTANCE/GROUP':<28} {'STATE':<20} {'SINCE':<20} {'SEQ':>6}  LAST ACTION")
        for key, rec in sorted(table.items()):
            out.append(f"{key:<28} {rec['state']:<20} {_when(rec['t']):<20} {rec['seq']:>6}  {rec['result']}")
    elif table:
        out.append(f"(`status --all` lists each of the {len(table)} with its state, since when and its last action)")
    if status.pending:
        out.append("")
        out.append("pending:")
        out += [f"  #{e.seq} {e.event}" for e in status.pending[:20]]
        if len(status.pending) > 20:
            out.append(f"  ... and {len(status.pending) - 20} more")
    return "\n".join(out)


def _history(paths: StatePaths, n: int) -> list[EndRecord]:
    return history.last(paths.history, paths.progress, n)


def history_json(paths: StatePaths, n: int) -> str:
    return json.dumps(_history(paths, n), indent=2, sort_keys=True)


def history_text(paths: StatePaths, n: int) -> str:
    out = [f"{'SEQ':>6}  {'FINISHED':<19}  {'EVENT':<40} {'RESULT':<24} DURATION"]
    for rec in _history(paths, n):
        when = _when(rec["t"])
        duration = f"{rec['duration']:.3f}s" if "duration" in rec else "-"
        out.append(f"{rec['seq']:>6}  {when:<19}  {rec['event']:<40} {rec['result']:<24} {duration}")
    return "\n".join(out)
