"""The progress file's records as types: what each `op` holds (progress.py writes and reads them,
history.py keeps the end records).  Only annotations name them in the package (they are dicts at
run time), so the worker's start does without `typing`; tests build records with them."""

from __future__ import annotations

from typing import Literal, TypedDict, Union


class TryRecord(TypedDict):
    """A worker took up event `seq` (written before anything that could fail)."""

    op: Literal["try"]
    seq: int
    worker: int


class _StartFields(TypedDict):
    """What every start record holds."""

    op: Literal["start"]
    seq: int
    t: float
    key: str
    event: str
    state: str
    pid: int
    pid_start_min: int
    pid_start_max: int
    worker: int
    worker_start: int


class StartRecord(_StartFields, total=False):
    """The event's action was spawned: `pid` (at `t`, with a start time from `pid_start_min` to
    `pid_start_max`) by `worker`, whose start time is `worker_start` (start times: identity.py);
    `cgroup` holds the action's processes where the worker contains them in cgroups (containment.py)."""

    cgroup: str


class _EndFields(TypedDict):
    """What every end record holds (NotRequired is Python 3.11+: the optional keys are a subclass)."""

    op: Literal["end"]
    seq: int
    t: float
    key: str
    event: str
    state: str
    result: str
    ok: bool


class EndRecord(_EndFields, total=False):
    """The event is finished: `result` says how (an action's exit, or why nothing ran); the keys
    below are there when they apply (an action that ran, the worker that ran it)."""

    duration: float
    exit: int | None
    signal: int | None
    timed_out: bool
    stalled: float
    worker: int


class _TotalsFields(TypedDict):
    op: Literal["totals"]
    seq: int
    counts: dict[str, object]


class TotalsRecord(_TotalsFields, total=False):
    """First in a compacted file: the counters over every record up to `seq` (totals.py), the
    bytes of the records after it (`kept`: with this line's, the file's size after the compaction),
    and the history file's size after its last trim (`history`: when to trim it next)."""

    kept: int
    history: int


Record = Union[TryRecord, StartRecord, EndRecord]  # not `|`: Python 3.9 evaluates this line
