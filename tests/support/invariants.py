"""The one checker of the launcher's invariants (docs/invariants.md), for every test that runs it.

`check_run(state_dir, records_dir=..., log_file=...)` reads what one run left -- the recorder's
records (support.recorder), the state directory through the package's own readers
(journal.read_all, progress.replay, history.read, settingsfile.read), the log, and the process table -- and
raises AssertionError naming every broken invariant, with the evidence; `inspect_run` (same
arguments) returns the Report without raising (the property test counts with it).

Call it once the run is over: the launcher idle (`wait`), or stopped.  An event still pending or
running then is an event that never ended.
"""

from __future__ import annotations

import difflib
import gzip
import zlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from notify_launcher import history, settingsfile
from notify_launcher.errors import LauncherError
from notify_launcher.events import READER_TYPE, Rejected, parse_line
from notify_launcher.journal import read_all
from notify_launcher.actions import KEPT, RELEASED
from notify_launcher.logview import log_files
from notify_launcher.progress import replay
from notify_launcher.statedir import StatePaths
from support import recorder

#: One log line (notify_launcher/log.py): time, role[pid], level, #SEQ, event, message.
LOG_LINE = re.compile(r"^(?P<time>\S+ \S+) (?P<role>[\w-]+)\[(?P<pid>\d+)\] (?P<level>[A-Z]+) +"
                      r"#(?P<seq>\d+|-) (?P<event>.*?) \| (?P<msg>.*)$")
#: The worker's messages that finish an event (worker.py), one per event.
_END = re.compile(r"^(action ended: |no action configured for this event|skipped: superseded by #"
                  r"|FAILED inside the launcher \(the next event runs\)|skipped.*; the queue goes on$)")
#: The worker's messages that recover an event a dead worker had in hand (worker.py).
_RECOVERED = re.compile(r"^worker pid \d+ died while (this event's action|preparing this event)")
#: Any process's word that a worker died (the reader's watch, a recovering worker).
_DIED = re.compile(r"\bworker pid (\d+) died")
#: The reader's messages that admit a drop (reader.py), and what they count.
_DROPS = re.compile(r"^(DROPPED: |LOST: (?P<n>\d+) events|LOST: not journaled|line \d+ rejected )")
#: How the reader's LOST line shows a line it read and did not parse (backlog.lost).
_UNPARSED = "LOST: not journaled (read, not parsed): "
#: A pid the worker names in its RELEASED line: "PID (name)".
_RELEASED_PID = re.compile(r"(?:^: |, )(\d+) \(")
LogFiles = Union[Path, str, Sequence[Union[Path, str]], None]  # not `|`: Python 3.9 evaluates this line
_SHOWN = 12  # seqs named per problem before "... and N more"


@dataclass
class LogLine:
    number: int  # 1-based line number in the log
    role: str
    pid: int
    level: str
    seq: int | None
    event: str
    msg: str

    def __str__(self) -> str:
        return f"log:{self.number} {self.role}[{self.pid}] #{'-' if self.seq is None else self.seq} {self.event} | {self.msg}"


def parse_log(text: str) -> list[LogLine]:
    """The log's lines that are the launcher's format (a traceback line is one too: it carries its #SEQ)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        m = LOG_LINE.match(line)
        if m:
            seq = None if m["seq"] == "-" else int(m["seq"])
            out.append(LogLine(n, m["role"], int(m["pid"]), m["level"], seq, m["event"], m["msg"]))
    return out


@dataclass
class Report:
    """What one run did, and every way it broke an invariant (empty lists: all held)."""

    events: int = 0  # sequence numbers journaled (the highest)
    runs: int = 0  # action processes started (recorder start records)
    reruns: int = 0  # starts of an event that had started before (after a worker died)
    stops: int = 0  # READER STOP events journaled
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    numbering: list[str] = field(default_factory=list)
    unlogged_drops: list[str] = field(default_factory=list)
    stop_window: list[str] = field(default_factory=list)
    left_alive: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # context for a reader of a failure, not failures

    KINDS = ("lost", "duplicated", "out_of_order", "overlaps", "numbering", "unlogged_drops", "stop_window",
             "left_alive")

    def problems(self) -> dict[str, list[str]]:
        return {k: getattr(self, k) for k in self.KINDS if getattr(self, k)}

    def __bool__(self) -> bool:
        """True when every invariant held."""
        return not self.problems()

    def __str__(self) -> str:
        head = (f"{self.events} events journaled, {self.runs} actions started ({self.reruns} re-runs), "
                f"{self.stops} STOPs")
        lines = [head]
        for kind, found in self.problems().items():
            lines.append(f"{kind.replace('_', ' ')} ({len(found)}):")
            lines.extend(f"  {text}" for text in found)
        lines.extend(f"note: {text}" for text in self.notes)
        return "\n".join(lines)


def check_run(state_dir: Path | str, records_dir: Path | str | None = None, log_file: LogFiles = None,
              expect_lines: Iterable[str] | None = None, stops: int = 0, alive_ok: Iterable[int] = (),
              killed: Iterable[int] = ()) -> Report:
    """`inspect_run`, and an AssertionError listing every broken invariant if one broke."""
    report = inspect_run(state_dir, records_dir, log_file, expect_lines, stops, alive_ok, killed)
    assert report, f"launcher invariants broken (docs/invariants.md):\n{report}"
    return report


def inspect_run(state_dir: Path | str, records_dir: Path | str | None = None, log_file: LogFiles = None,
                expect_lines: Iterable[str] | None = None, stops: int = 0, alive_ok: Iterable[int] = (),
                killed: Iterable[int] = ()) -> Report:
    """Check one finished run.

    `records_dir`: where the recorder's `records` file is (default: the state dir's parent);
    `log_file`: the launcher's log (default: launcher.log there; its rotations are read too), or
    its files in the order the run wrote them (a test that moved the log to another file); `expect_lines`: the FIFO lines
    the test wrote that the reader must journal or log as dropped, in order (None: not checked);
    `stops`: how many times keepalived stopped the reader (each must journal a STOP and, when a
    stop_action is set, run it); `alive_ok`: pids the caller still runs on purpose (none of an
    action's tree may be left alive); `killed`: worker pids the caller killed (like a `worker pid N
    died` line: each may leave its last event to be run again)."""
    paths = StatePaths(str(state_dir))
    base = Path(records_dir) if records_dir is not None else Path(state_dir).parent
    rec_path = base / recorder.RECORDS
    if log_file is None:
        log_file = base / "launcher.log"
    files = [Path(log_file)] if isinstance(log_file, (str, Path)) else [Path(f) for f in log_file]
    report = Report()
    log = parse_log("".join(_read_log(f, report.notes) for f in files))
    records = recorder.read(rec_path)
    received = _check_numbering(report, paths, log)
    _check_ends(report, paths, log, received, records, set(killed))
    _check_trees(report, rec_path, records, set(alive_ok), log)
    if expect_lines is not None:
        _check_drops(report, log, received, list(expect_lines))
        _check_journaled_once(report, log, list(expect_lines))
    _check_stops(report, paths, log, received, stops)
    return report


def _read_log(path: Path, notes: list[str]) -> str:
    """The log file with its rotations before it, oldest first (logview's order; a .gz decompressed).
    A rotation that cannot be read (a test damages one on purpose) is left out, with a note."""
    text = []
    for name in log_files(str(path)) if path.parent.is_dir() else []:
        try:
            with gzip.open(name, "rb") if name.endswith(".gz") else open(name, "rb") as fh:
                text.append(fh.read().decode(errors="replace"))
        except (OSError, EOFError, zlib.error) as exc:
            notes.append(f"log {name} left out: {exc}")
    return "".join(text)


def _more(items: list[str]) -> list[str]:
    return items if len(items) <= _SHOWN else [*items[:_SHOWN], f"... and {len(items) - _SHOWN} more"]


def _check_numbering(report: Report, paths: StatePaths, log: list[LogLine]) -> dict[int, list[LogLine]]:
    """Numbers given once each, rising: per reader in the log, in the journal file; returns each
    number's `received` lines."""
    received: dict[int, list[LogLine]] = defaultdict(list)
    last_by_reader: dict[int, int] = {}
    for line in log:
        if line.seq is None or not line.msg.startswith("received"):
            continue
        received[line.seq].append(line)
        before = last_by_reader.get(line.pid)
        if before is not None and line.seq <= before:
            report.numbering.append(f"reader {line.pid} journaled #{line.seq} after #{before}: {line}")
        last_by_reader[line.pid] = line.seq
    reused = [f"#{seq} given {len(lines)} times: " + "; ".join(str(x) for x in lines)
              for seq, lines in sorted(received.items()) if len(lines) > 1]
    report.numbering.extend(_more(reused))
    journal = read_all(paths.journal)
    for a, b in zip(journal, journal[1:]):
        if b.seq <= a.seq:
            report.numbering.append(f"journal: #{b.seq} ({b.event}) follows #{a.seq} ({a.event})")
    for entry in journal:
        said = received.get(entry.seq)
        if said and all(line.event != str(entry.event) for line in said):
            report.numbering.append(f"journal #{entry.seq} is {entry.event}, but the log received #{entry.seq} as "
                                    f"{said[-1].event}")
    for line in log:
        if line.msg.startswith("numbering restarted"):
            report.numbering.append(str(line))
    return received


def _check_ends(report: Report, paths: StatePaths, log: list[LogLine], received: dict[int, list[LogLine]],
                records: list[recorder.Record], killed: set[int]) -> None:
    """Every number from 1 to the highest ends exactly once (a log line of the worker, or at least
    an end record), ends rise, and the recorder's actions start in order and end at most once each.

    A worker that died with the event in hand excuses one more end: killed after its action exited
    but before the end was recorded (or while a full disk kept it from recording), it leaves the
    next worker no way to know, and that one runs the event again (on_crash = rerun).  Such an end
    is the last a dead worker logged (`worker pid N died` is in the log, or the caller killed it)."""
    snap = replay(paths.progress, keep_ends=1 << 30)
    moved = history.read(paths.history)  # what compactions moved out, each once (above it: the progress file's)
    after = moved[-1]["seq"] if moved else 0
    progress_ends = Counter(e["seq"] for e in [*moved, *(e for e in snap.ends if e["seq"] > after)])
    ends: dict[int, list[LogLine]] = defaultdict(list)
    seen: set[int] = set(received) | set(progress_ends) | {e.seq for e in read_all(paths.journal)}
    dead = killed | {int(m[1]) for line in log if (m := _DIED.search(line.msg))}
    last_by_worker: dict[int, int] = {}
    for line in log:
        if line.seq is None:
            continue
        seen.add(line.seq)
        if line.role == "worker" and _END.match(line.msg):
            ends[line.seq].append(line)
            last_by_worker[line.pid] = line.seq
    excused = Counter(line.seq for lines in ends.values() for line in lines[:-1]
                      if line.pid in dead and last_by_worker[line.pid] == line.seq)
    last_end = 0
    for line in sorted((x for lines in ends.values() for x in lines), key=lambda x: x.number):
        assert line.seq is not None
        if line.seq < last_end or (line.seq == last_end and not excused[line.seq]):
            report.out_of_order.append(f"#{line.seq} ended after #{last_end}: {line}")
        last_end = line.seq
    if snap.running is not None or snap.trying:
        running = snap.running["seq"] if snap.running is not None else None
        report.notes.append(f"progress: a worker still has #{snap.trying or running} in hand")
    report.events = max(seen, default=0)
    lost, dup = [], []
    for seq in range(1, report.events + 1):
        given = max(1, len(received.get(seq, ())))  # a reused number was given more than once
        ended = len(ends.get(seq, ())) or min(progress_ends.get(seq, 0), 1)
        what = received[seq][-1].event if seq in received else _named(seq, log)
        if ended < given:
            lost.append(f"#{seq} {what}: journaled {given}x, ended {ended}x" + (
                "" if ended or seq in received else " (no trace but its number)"))
        elif ended - excused[seq] > given or progress_ends.get(seq, 0) > given:
            dup.append(f"#{seq} {what}: ended {ended}x in the log ({excused[seq]} by a worker that died with it), "
                       f"{progress_ends.get(seq, 0)}x in progress: " + "; ".join(str(x) for x in ends.get(seq, ())))
    report.lost.extend(_more(lost))
    report.duplicated.extend(_more(dup))
    _check_records(report, records, log, excused)


def _named(seq: int, log: list[LogLine]) -> str:
    return next((line.event for line in log if line.seq == seq and line.event != "-"), "(event unknown)")


def _check_records(report: Report, records: list[recorder.Record], log: list[LogLine], excused: Counter[int]) -> None:
    """The actions themselves: starts in sequence order (a re-run repeats the number just started),
    each run to its end once, or once more per worker that died on it (recovered it, or ended it
    and died before recording that: `_check_ends`)."""
    died = Counter(line.seq for line in log if line.seq is not None and _RECOVERED.match(line.msg)) + excused
    started: list[int] = []
    end_count: Counter[int] = Counter()
    for r in records:
        if r.seq is None:
            continue
        if r.kind == "start":
            report.runs += 1
            if started and r.seq == started[-1]:
                report.reruns += 1
            elif started and r.seq < started[-1]:
                report.out_of_order.append(f"action #{r.seq} ({' '.join(r.args)}) started after #{started[-1]}")
            started.append(r.seq)
        elif r.kind == "end":
            end_count[r.seq] += 1
    twice = [f"#{seq}: its action ran to its end {n} times, {died.get(seq, 0)} workers died on it"
             for seq, n in sorted(end_count.items()) if n > 1 + died.get(seq, 0)]
    report.duplicated.extend(_more(twice))


def _check_trees(report: Report, rec_path: Path, records: list[recorder.Record], alive_ok: set[int],
                 log: list[LogLine]) -> None:
    """No action started beside another's live tree (the recorder's overlap lines); none left alive.
    What an action that exited normally left running and the worker logged as released is no
    longer its tree: not an overlap, not left alive."""
    lock = rec_path.with_name(rec_path.name + recorder.TREE)
    if not lock.exists():
        report.notes.append(f"tree tracking off ({lock} missing): overlaps and left-alive trees not checked")
        return
    released = _released(log)
    for r in records:
        if r.kind == "overlap":
            owner = r.args[0] if r.args else "-"
            if owner.isdigit() and int(owner) in released:
                report.notes.append(f"#{r.seq} started beside what #{owner}'s action released: "
                                    f"{sorted(released[int(owner)])}")
                continue
            report.overlaps.append(f"#{r.seq} started while the process tree of #{owner} was alive")
    for pid, cmd, seq in tree_holders(lock):
        if pid not in alive_ok and not (seq.isdigit() and pid in released.get(int(seq), ())):
            report.left_alive.append(f"pid {pid} of #{seq}'s action tree still alive: {' '.join(cmd)[:200]}")


def _released(log: list[LogLine]) -> dict[int, set[int]]:
    """SEQ -> the pids the worker released after that event's action exited normally (actions.RELEASED,
    or KEPT when they could not be moved out of its cgroup: left to them all the same)."""
    out: dict[int, set[int]] = defaultdict(set)
    for line in log:
        if line.role != "worker" or line.seq is None:
            continue
        at = line.msg.find(RELEASED + ": ")  # (on_failure's: "on_failure: " first)
        if at >= 0:
            at += len(RELEASED)
        elif line.msg.find(KEPT) >= 0:
            at = line.msg.index("): ", line.msg.index(KEPT)) + 1
        else:
            continue
        out[line.seq].update(int(pid) for pid in _RELEASED_PID.findall(line.msg[at:]))
    return out


def tree_holders(lock: Path) -> list[tuple[int, list[str], str]]:
    """(pid, argv, its NL_SEQ) of every live process with the tree lock `lock` open: an action tree's."""
    try:
        target = os.stat(lock)
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{name}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                out.append((int(name), _cmdline(int(name)), _environ(int(name)).get("NL_SEQ", "?")))
                break
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0")[:-1]]
    except OSError:
        return []


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            pairs = [a.decode(errors="replace").partition("=") for a in fh.read().split(b"\0") if a]
    except OSError:
        return {}
    return {k: v for k, _, v in pairs}


def _check_drops(report: Report, log: list[LogLine], received: dict[int, list[LogLine]],
                 expect: list[str]) -> None:
    """Every line the test wrote is journaled, in order, unless the log says it was not: a drop the
    log names (DROPPED or LOST naming the event, a LOST line read and not parsed, a rejected line
    that is a piece of it) stands for that line alone; a LOST count beyond the lines it names, for
    any.  What was journaled under each number: its `received` line, else any line naming the number."""
    wanted: list[tuple[str, str]] = []  # (the line as written, its event as the log shows it)
    for text in expect:
        parsed = parse_line(text.encode())
        if not isinstance(parsed, Rejected):
            wanted.append((text, str(parsed)))
    journaled = {seq: lines[0].event for seq, lines in received.items()}
    for line in log:  # a reader killed between its append and its `received` line: the worker names it
        if line.seq is not None and line.event != "-":
            journaled.setdefault(line.seq, line.event)
    got = [event for _, event in sorted(journaled.items()) if not event.startswith(f"{READER_TYPE} ")]
    missing: list[tuple[str, str]] = []
    i = 0
    for text, event in wanted:  # in order: a subsequence of what was received (`send` may add others)
        j = i
        while j < len(got) and got[j] != event:
            j += 1
        if j == len(got):
            missing.append((text, event))
        else:
            i = j + 1
    named, unnamed = _drops_said(log)
    unsaid = []
    for text, event in missing:
        said = next((n for n, (kind, what) in enumerate(named)
                     if (what == event if kind == "event" else bool(what) and what in text or _event_of(what) == event)), None)
        if said is not None:
            del named[said]
        elif unnamed > 0:
            unnamed -= 1
        else:
            unsaid.append(text)
    if unsaid:
        diff = "\n".join(difflib.unified_diff([e for _, e in wanted], got, "written", "journaled", lineterm="", n=1))
        report.unlogged_drops.append(f"{len(missing)} written lines never journaled, {len(unsaid)} of them not "
                                     f"said dropped (by name, or in a LOST count beyond the lines it names): "
                                     f"{_more(unsaid)}\n{diff}")
    wrongly = [what for kind, what in named if kind == "event" and what in got and what in {e for _, e in wanted}]
    if wrongly:
        report.notes.append(f"said dropped, yet journaled as often as written: {_more(wrongly)}")


def _drops_said(log: list[LogLine]) -> tuple[list[tuple[str, str]], int]:
    """The readers' drops the log names -- ("event", its event) or ("text", the line's bytes as
    shown) -- and how many more it counts without naming them (a LOST count beyond its named lines)."""
    named: list[tuple[str, str]] = []
    counted = 0
    for line in log:
        m = _DROPS.match(line.msg) if line.role == "reader" else None
        if m is None:
            continue
        if m["n"] is not None:
            counted += int(m["n"])
        elif line.msg.startswith("line "):
            named.append(("text", _shown_text(line.msg.split("): ", 1)[-1])))
        elif line.msg.startswith(_UNPARSED):
            counted -= 1
            named.append(("text", _shown_text(line.msg[len(_UNPARSED):])))
        else:
            counted -= line.msg.startswith("LOST")
            named.append(("event", line.event))
    return named, max(0, counted)


def _shown_text(shown: str) -> str:
    """A line as the log shows it (events.Rejected.shown), without the mark of a cut."""
    return shown[:-3] if shown.endswith("...") else shown


def _event_of(text: str) -> str | None:
    parsed = parse_line(text.encode())
    return None if isinstance(parsed, Rejected) else str(parsed)


def _check_journaled_once(report: Report, log: list[LogLine], expect: list[str]) -> None:
    """A line the test wrote n times is journaled under at most n numbers.  An event journaled again
    is a spill file's numbered twice (its writer died after numbering it, before removing the file):
    at least one of its numbers was journaled late.  So a line written once and journaled under two
    numbers, one of them late, is one event journaled twice; lines the test wrote twice, and `send`'s
    own events that look like a written line (never spilled in these tests), are not."""
    written = Counter(str(parsed) for parsed in (parse_line(text.encode()) for text in expect)
                      if not isinstance(parsed, Rejected))
    named: dict[int, str] = {}
    late: set[int] = set()
    for line in log:
        if line.seq is not None and line.event != "-":
            named.setdefault(line.seq, line.event)
            if line.msg.startswith("received (journaled late"):
                late.add(line.seq)
    numbers: dict[str, list[int]] = defaultdict(list)
    for seq, event in sorted(named.items()):
        numbers[event].append(seq)
    for event, seqs in numbers.items():
        if len(seqs) > written[event] > 0 and late.intersection(seqs):
            report.duplicated.append(f"{event}: written {written[event]}x, journaled as "
                                     f"{', '.join(f'#{seq}' for seq in seqs)} (late: "
                                     f"{', '.join(f'#{seq}' for seq in seqs if seq in late)})")


def _check_stops(report: Report, paths: StatePaths, log: list[LogLine], received: dict[int, list[LogLine]],
                 stops: int) -> None:
    """Each keepalived stop journaled a READER STOP whose action (stop_action, when set) ran."""
    stop_seqs = [seq for seq, lines in sorted(received.items()) if lines[-1].event == f"{READER_TYPE} reader STOP"]
    report.stops = len(stop_seqs)
    if len(stop_seqs) < stops:
        report.stop_window.append(f"keepalived stopped the reader {stops}x, {len(stop_seqs)} STOP journaled")
    try:
        stop_action = settingsfile.read(paths).stop_action
    except (OSError, LauncherError):
        return
    if not stop_action:
        return
    for seq in stop_seqs:
        ran = [line for line in log if line.seq == seq and line.role == "worker" and line.msg.startswith("action ended")]
        if not ran:
            report.stop_window.append(f"#{seq} READER reader STOP: stop_action {' '.join(stop_action)} never ended")

