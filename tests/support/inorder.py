"""The one check of the launcher's promise, shared by every test that runs a real keepalived (in
network namespaces, realka.py; under systemd, systemd/): every journaled keepalived event ran exactly
once, in sequence order, one at a time, and exited 0."""

from __future__ import annotations

import re

from notify_launcher import journal as journal_file
from notify_launcher.events import READER_TYPE
from notify_launcher.journal import Entry
from support.recorder import Action


def journal_entries(text: str) -> list[Entry]:
    """The launcher's journal file's entries, parsed by the package's own parser (journal.parse_entry:
    fields, settings version, CRC); a damaged line fails the test, naming what it held."""
    entries = []
    for line in text.encode("utf-8").splitlines():
        entry = journal_file.parse_entry(line)
        assert entry is not None, f"damaged journal line: {journal_file.describe(line)}"
        entries.append(entry)
    return entries


def problems(journal: list[Entry], actions: list[Action], log: str) -> list[str]:
    """What breaks the promise: the journal is numbered 1..N without gap or duplicate (across
    readers: a reload or restart carries the numbering on), and the actions' NL_SEQ are those of
    its keepalived events (the readers' own READER entries run no action), each ended before the
    next started, each logged `action ended: exit 0`.  Empty when all holds."""
    found = []
    seqs = [e.seq for e in journal]
    if seqs != list(range(1, len(seqs) + 1)):
        found.append(f"journal numbered {seqs}")
    expected = [(e.seq, [e.event.type, e.event.name, e.event.state, str(e.event.priority)])
                for e in journal if e.event.type != READER_TYPE]
    if [(a.seq, a.args) for a in actions] != expected:
        found.append(f"actions {[str(a) for a in actions]} are not the journal's events {expected}")
    for i in range(1, len(actions)):  # pairs; not zip(strict=), which is Python 3.10+
        prev, nxt = actions[i - 1], actions[i]
        if prev.end is None or prev.end > nxt.start:
            found.append(f"{nxt} started before {prev} ended")
    for a in actions:
        if a.end is None:
            found.append(f"{a} never ended")
        elif not re.search(rf'#{a.seq} {a.type} "{a.name}" {a.state} -?\d+ \| action ended: exit 0 after', log):
            found.append(f"no 'action ended: exit 0' logged for {a}")
    return found
