"""The one recording handler: the action every test, the demo and the benchmarks give the launcher,
and the one parser of what it wrote.

`script()` returns the handler (bash); `install()` writes it executable.  Each action appends one
line per fact to the records file, each with a single write (O_APPEND: whole lines, even when
actions run at once, as the benchmarks' baseline lets them):

    start SEQ TIME ARG...   the action began; ARGs as the handler got them (TYPE NAME STATE PRIORITY [VS])
    end SEQ TIME ARG...     it ran to its end (the same ARGs: where there is no SEQ, they match the start)
    cgroup SEQ PATH         the cgroup it runs in (option `cgroup`)
    signal SEQ TIME TERM    it was sent SIGTERM, and exits 143 (option `trap_term`; a SIGKILL leaves no line)
    overlap SEQ TIME OWNER  it started while the process tree of action OWNER (its SEQ) was still alive

The overlap line is written only while tree tracking is on: when the file RECORDS.tree exists
(`track_trees()` makes it; the invariants checker's callers do).  Each action then opens that file
on fd 9 -- every process it starts inherits the descriptor, also one that calls setsid or double
forks -- and takes a flock on it (flock(1), one fork), before its start line (so a test that
waits for the start line finds the action past it).  The lock lives until the last process of
the tree exits or is killed, so an action that cannot take it at once starts beside a tree still
alive: that is recorded, whatever the clocks say, and the action goes on.  RECORDS.owner holds the
SEQ of the tree holding the lock.  (A descendant that closes fd 9 escapes; the tests' actions do not.)

SEQ is $NL_SEQ ("-" when the caller sets none: the benchmarks' bash baseline reader); TIME is bash's
$EPOCHREALTIME, the clock of time.time(), read without a fork.

What an action does between its start and end lines:
  1. sleep, as the sleeps file says: lines `TYPE STATE SECONDS [GATE]` (`*` matches any TYPE or
     STATE; `sleep_line()` writes one).  The first line that matches the action makes it sleep
     SECONDS (in the background, waited for: a TERM trap runs at once), then, when GATE names a
     file, wait until that file exists (at most 120 s: the test opens the gate when what it waits
     for has happened);
  2. run `then`, shell code of the caller's choosing: the variant a test needs (kill its worker,
     kill itself with a signal, leave a background child, hang, nap without a fork).

The records and sleeps files are beside the script unless named (`${0%/*}`: the benchmarks' two
sides run byte-identical handlers, each recording into its own directory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RECORDS = "records"  # the records file's name beside the script
SLEEPS = "sleeps"  # the sleeps file's name beside the script

_SCRIPT = """#!/bin/bash
# A recording action (tests/support/recorder.py): start and end lines of every action in the records file.
rec={records}
if [ -e "$rec.tree" ]; then
    exec 9>>"$rec.tree"
    if flock -n 9; then
        printf '%s' "${{NL_SEQ:--}}" > "$rec.owner"
    else
        owner=-; [ -f "$rec.owner" ] && read -r owner < "$rec.owner"
        printf '%s\\n' "overlap ${{NL_SEQ:--}} $EPOCHREALTIME ${{owner:--}}" >> "$rec"
    fi
fi
printf '%s\\n' "start ${{NL_SEQ:--}} $EPOCHREALTIME $*" >> "$rec"
{options}sleeps={sleeps}
if [ -f "$sleeps" ]; then
    while read -r type state seconds gate; do
        if [[ ($type = "*" || $type = "$1") && ($state = "*" || $state = "$3") ]]; then
            sleep "$seconds" &
            wait $!
            n=0
            while [ -n "$gate" ] && [ ! -e "$gate" ] && [ $n -lt 2400 ]; do sleep 0.05; n=$((n + 1)); done
            break
        fi
    done < "$sleeps"
fi
{then}printf '%s\\n' "end ${{NL_SEQ:--}} $EPOCHREALTIME $*" >> "$rec"
"""

_CGROUP = """printf '%s\\n' "cgroup ${NL_SEQ:--} $(grep '^0::' /proc/self/cgroup | cut -d: -f3-)" >> "$rec"
"""

_TRAP_TERM = """trap 'printf "%s\\n" "signal ${NL_SEQ:--} $EPOCHREALTIME TERM" >> "$rec"; exit 143' TERM
"""


def _word(path: Path | None, beside: str) -> str:
    """A shell word for `path` (double-quoted), or for the file `beside` the script."""
    if path is None:
        return f'"${{0%/*}}/{beside}"'
    text = str(path)
    for c in '\\"$`':
        text = text.replace(c, "\\" + c)
    return f'"{text}"'


def script(records: Path | None = None, sleeps: Path | None = None, then: str = "", cgroup: bool = False,
           trap_term: bool = False) -> str:
    """The handler's text.  `records`, `sleeps`: the files (default: beside the script); `then`:
    shell code run after the sleep, before the end line; `cgroup`: record the action's cgroup;
    `trap_term`: record a SIGTERM and exit 143 at once."""
    options = (_CGROUP if cgroup else "") + (_TRAP_TERM if trap_term else "")
    return _SCRIPT.format(records=_word(records, RECORDS), sleeps=_word(sleeps, SLEEPS), options=options,
                          then=f"{then.rstrip()}\n" if then.strip() else "")


def install(path: Path, records: Path | None = None, sleeps: Path | None = None, then: str = "",
            cgroup: bool = False, trap_term: bool = False) -> Path:
    """Write `script(...)` to `path`, executable; returns `path`."""
    path.write_text(script(records, sleeps, then, cgroup, trap_term))
    path.chmod(0o755)
    return path


def sleep_line(type_: str, state: str, seconds: float, until: Path | None = None) -> str:
    """A line of the sleeps file: actions for TYPE STATE (`*`: any) take `seconds`, then wait for
    `until` to exist."""
    return f"{type_} {state} {seconds:g}{f' {until}' if until else ''}\n"


# ---------------------------------------------------------------------------------------------
# reading


class _EventArgs:
    """The handler's arguments by name: TYPE NAME STATE PRIORITY [VS]."""

    args: list[str]

    @property
    def type(self) -> str:
        return self.args[0]

    @property
    def name(self) -> str:
        return self.args[1]

    @property
    def state(self) -> str:
        return self.args[2]

    @property
    def priority(self) -> str:
        return self.args[3]


@dataclass
class Record(_EventArgs):
    """One line of the records file."""

    kind: str  # start, end, cgroup, signal
    seq: int | None  # None: no NL_SEQ ("-")
    time: float | None  # start, end, signal: $EPOCHREALTIME
    args: list[str]  # start, end: the handler's arguments; cgroup: the path; signal: the signal's name



_TIMED = ("start", "end", "signal", "overlap")
TREE, OWNER = ".tree", ".owner"  # beside the records file: the tree lock, and the SEQ holding it


def track_trees(records: Path) -> Path:
    """Turn tree tracking on for actions recording into `records` (see the module docstring);
    returns the lock file."""
    lock = records.with_name(records.name + TREE)
    lock.touch()
    return lock


def parse(text: str) -> list[Record]:
    """The records in `text`, in file order (= the order they were written).  A last line without
    its newline (being written right now) and lines that are not records are left out."""
    out: list[Record] = []
    for line in text.split("\n")[:-1]:
        w = line.split()
        if len(w) < 2 or not (w[1] == "-" or w[1].isdigit()):
            continue
        seq = None if w[1] == "-" else int(w[1])
        if w[0] in _TIMED:
            try:
                t = float(w[2].replace(",", "."))  # $EPOCHREALTIME uses the locale's decimal point
            except (IndexError, ValueError):
                continue
            out.append(Record(w[0], seq, t, w[3:]))
        else:
            out.append(Record(w[0], seq, None, w[2:]))
    return out


def read(path: Path) -> list[Record]:
    """The records in the file `path` ([] while there is none)."""
    try:
        return parse(path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


@dataclass
class Action(_EventArgs):
    """One run of the handler: its start record with what the later records said about it."""

    seq: int | None
    start: float
    args: list[str]
    end: float | None = None  # None: it has not ended (still running, or killed)
    cgroup: str = ""
    signal: float | None = None  # when it got SIGTERM

    @property
    def unit(self) -> str:
        """The cgroup of the unit it ran in: `cgroup` without the action cgroup the worker made for
        it (notify_launcher/containment.py `slot_name`: PID-START-COUNT; an older version's PID-COUNT)
        where cgroup v2 is writable."""
        return re.sub(r"/notify-launcher-[0-9a-f]{8}(-\d+){2,3}$", "", self.cgroup)

    def __str__(self) -> str:
        return f"#{'-' if self.seq is None else self.seq} {' '.join(self.args)}"


def actions(records: list[Record]) -> list[Action]:
    """The actions in start order.  A later record belongs to the latest action with its SEQ (with
    no SEQ: with its arguments) that has not ended: a re-run of an event is an action of its own."""
    out: list[Action] = []
    for r in records:
        if r.kind == "start" and r.time is not None:
            out.append(Action(r.seq, r.time, r.args))
            continue
        mine = next((a for a in reversed(out) if a.seq == r.seq and a.end is None
                     and (r.seq is not None or a.args == r.args)), None)
        if mine is None:
            continue
        if r.kind == "end":
            mine.end = r.time
        elif r.kind == "cgroup":
            mine.cgroup = " ".join(r.args)
        elif r.kind == "signal":
            mine.signal = r.time
    return out


def check_order(records: list[Record]) -> tuple[list[int], int]:
    """(sequence numbers started, in order; count of overlaps and inversions): an action that starts
    while another runs, or with a SEQ not above the last one's, or an end that is not the running
    action's, is one problem each."""
    started: list[int] = []
    problems = 0
    running: int | None = None
    for r in records:
        if r.kind not in ("start", "end") or r.seq is None:
            continue
        if r.kind == "start":
            if running is not None or (started and r.seq <= started[-1]):
                problems += 1
            running = r.seq
            started.append(r.seq)
        else:
            if running != r.seq:
                problems += 1
            running = None
    return started, problems

