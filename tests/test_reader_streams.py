"""Arbitrary byte streams into a running reader (hypothesis): the reader lives, every line the input
policy accepts runs its action once, in order, and the queue drains.

The oracle is the policy itself, applied to the same bytes (LineSplitter + parse_line, pure
functions); what is under test is everything after it: FIFO reads of one line or many, the
journal, the handoff, the worker and the action.  Each line is one write, as keepalived writes
(bytes without a newline are a line of their own once the pipe is empty: test_partial_lines.py).
Few examples, each a real reader and worker.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.launcher import Launcher
from notify_launcher.events import VRRP_NOTICES
from notify_launcher.events import MAX_LINE, Event, parse_line
from notify_launcher.intake import pieces
from notify_launcher.lines import LineSplitter

_names = st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=12)
_states = st.sampled_from(["MASTER", "BACKUP", "FAULT", "STOP", "SLEEPY", "MASTER_RX_LOWER_PRI"])
_vrrp = st.builds(lambda kind, name, state, prio: f'{kind} "{name}" {state} {prio}'.encode(),
                  st.sampled_from(["INSTANCE", "GROUP"]), _names, _states, st.integers(-5, 100_000))
_chunk = st.one_of(_vrrp, _vrrp, st.binary(max_size=300), st.just(b"\0"), st.just(b"x" * (MAX_LINE + 10)))


def _accepted(stream: bytes) -> list[Event]:
    """The events the input policy accepts from these bytes, in order."""
    lines = LineSplitter(MAX_LINE).feed(stream + b"\n")
    cut = [piece for raw in lines for piece in ([raw] if isinstance(parse_line(raw), Event) else pieces(raw))]
    parsed = [parse_line(piece) for piece in cut]
    return [p for p in parsed if isinstance(p, Event)]


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(chunks=st.lists(_chunk, min_size=1, max_size=40))
def test_any_byte_stream_runs_exactly_the_accepted_events_in_order(chunks: list[bytes]) -> None:
    stream = b"\n".join(chunks)
    tmp = Path(tempfile.mkdtemp(prefix="nl-stream-"))
    launcher = Launcher.in_dir(tmp)
    try:
        k = launcher.keepalived()
        k.start()
        try:
            launcher.wait_started()
            for line in stream.split(b"\n"):
                k.write_raw(line + b"\n")
            accepted = _accepted(stream)
            launcher.settle(len(accepted))  # quiet states are journaled too, and run nothing
            assert k.proc is not None and k.proc.poll() is None, "the reader died"
            got = [r.args for r in launcher.starts()]
            expected = [e.fields() for e in accepted if e.state not in VRRP_NOTICES]
            assert got == expected, "accepted events not run exactly once, in order"
            seqs = [r.seq for r in launcher.starts()]
            assert seqs == sorted(set(seqs))
        finally:
            k.stop([])
    finally:
        launcher.end_processes()
        shutil.rmtree(tmp, ignore_errors=True)
