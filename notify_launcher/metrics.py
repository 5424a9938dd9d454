"""The metrics file: Prometheus text format for node_exporter's textfile collector.

Rewritten whole (a temporary file renamed over it: the collector reads the old or the new file,
never half of one) by the worker at start and after events, from `Totals` (totals.py: counters
derived from the progress records, so they survive worker restarts and compactions) and what the
worker sees of the queue.  No fsync: the file is a view of durable state, rebuilt at every write.
"""

from __future__ import annotations

from notify_launcher.events import VRRP_NOTICES
from notify_launcher.statedir import write_atomic
from notify_launcher.totals import BUCKETS, EXIT_KINDS, RESULTS, Totals

PREFIX = "notify_launcher_"


def _labels(**labels: str) -> str:
    """`{a="x",b="y"}` with the text format's escapes (backslash, double quote, newline)."""
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _split(name: str) -> tuple[str, str]:
    """A transitions key, "TYPE NAME\tSTATE", as (key, state)."""
    key, _, state = name.partition("\t")
    return key, state


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Text:
    """Collects families: HELP and TYPE once each, then the samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}"]

    def sample(self, name: str, value: float, labels: str = "") -> None:
        self.lines.append(f"{PREFIX}{name}{labels} {_number(value)}")


def render(totals: Totals, pending: int, oldest_pending_age: float, rejected: int) -> str:
    """The whole file's text."""
    out = _Text()
    out.family("actions_total", "counter", "Actions finished, by result (skipped: superseded by coalesce, "
                                           "a state repeated under repeat = skip, or after workers died on the "
                                           "event).")
    for result in RESULTS:
        out.sample("actions_total", totals.actions[result], _labels(result=result))
    out.family("action_duration_seconds", "histogram", "How long actions ran.")
    cumulative = 0
    bounds = [*map(repr, BUCKETS), "+Inf"]  # one per count: Totals keeps them equal (totals.py)
    for i, count in enumerate(totals.buckets):  # not zip(strict=): Python 3.10+
        cumulative += count
        out.sample("action_duration_seconds_bucket", cumulative, _labels(le=bounds[i]))
    out.sample("action_duration_seconds_sum", totals.duration_sum)
    out.sample("action_duration_seconds_count", cumulative)
    transitions = sorted((*_split(name), count) for name, count in totals.transitions.items())
    out.family("instance_state", "gauge", "1 for the last state reported for each VRRP instance/group, 0 for "
                                          "its other states seen before (notices such as MASTER_RX_LOWER_PRI "
                                          "are no state).")
    for key, state, _ in transitions:
        if state in VRRP_NOTICES:
            continue  # not a state the instance is in
        type_, _, name = key.partition(" ")
        out.sample("instance_state", int(totals.last.get(key, [""])[0] == state),
                   _labels(type=type_, name=name, state=state))
    out.family("transitions_total", "counter", "State changes reported by keepalived, per instance/group and state.")
    for key, state, count in transitions:
        type_, _, name = key.partition(" ")
        out.sample("transitions_total", count, _labels(type=type_, name=name, state=state))
    out.family("last_transition_timestamp_seconds", "gauge", "When the last state change of each instance/group finished.")
    for key, (_, t) in sorted(totals.last.items()):
        type_, _, name = key.partition(" ")
        out.sample("last_transition_timestamp_seconds", t, _labels(type=type_, name=name))
    out.family("queue_pending", "gauge", "Events journaled and waiting for their action (when the file was written).")
    out.sample("queue_pending", pending)
    out.family("oldest_pending_age_seconds", "gauge", "How long the oldest waiting event had waited (0: none).")
    out.sample("oldest_pending_age_seconds", round(oldest_pending_age, 3))
    out.family("worker_crashes_total", "counter", "Workers that died while they had an event in hand.")
    out.sample("worker_crashes_total", totals.crashes)
    out.family("lines_rejected_total", "counter", "FIFO lines the readers rejected (not keepalived's).")
    out.sample("lines_rejected_total", rejected)
    out.family("last_event_timestamp_seconds", "gauge", "When the last event finished (0: none yet).")
    out.sample("last_event_timestamp_seconds", totals.last_event)
    out.family("reader_exits_total", "counter", "Readers that left, by why: keepalived stopped, reloaded, "
                                                "or closed the FIFO.")
    for kind in EXIT_KINDS:
        out.sample("reader_exits_total", totals.exits[kind], _labels(kind=kind))
    return "\n".join(out.lines) + "\n"


def write(path: str, text: str, mode: int) -> None:
    """Replace the file (raises OSError: the worker logs it and goes on)."""
    write_atomic(path, text.encode(), mode, sync=False)
