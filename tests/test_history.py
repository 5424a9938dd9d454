"""The history file under stress: a `history` read racing a compaction, a worker killed in one, a
history file the worker cannot append to (history.py, progress.py's compaction, ledger.py)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from support import LAUNCHER
from support.launcher import Launcher

NAMES = 10


def _burst(k, start: int, count: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(start, start + count):
        assert k.write(f'INSTANCE "VI_{i % NAMES}" {"MASTER" if i % 2 else "BACKUP"} 100')


def _compactions(launcher: Launcher) -> int:
    return launcher.log_text().count("progress compacted")


@pytest.mark.parametrize("stalled", ["progress", "history"])
def test_history_read_across_a_compaction_shows_every_result(launcher: Launcher, stalled: str) -> None:
    """`history N` joins two files a compaction changes one after the other (history appended, then
    the progress file replaced with only each name's last end): read in the wrong order, a
    compaction between the reads leaves the ends it moved out of both, and the output jumps over
    them.  strace stalls `history`'s open of one file for 8 s (the window any slow `history` has,
    only longer) while a burst makes the worker compact; every seq in the range shown is there."""
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    sent = 0
    while _compactions(launcher) < 1:  # a history file exists
        _burst(k, sent, 200)
        sent += 200
        launcher.settle(sent)
    before = _compactions(launcher)
    path = str(launcher.state / stalled)
    cmd = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", path, "-e", "trace=openat",
           "-e", "inject=openat:delay_enter=8000000",
           LAUNCHER, "history", "--state-dir", str(launcher.state), "-n", "100000", "--json"]
    hist = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # history sits in its open of the stalled file
    while _compactions(launcher) == before:
        _burst(k, sent, 200)
        sent += 200
        launcher.settle(sent)
    out, _ = hist.communicate(timeout=60)
    seqs = [e["seq"] for e in json.loads(out)]
    missing = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
    k.stop([])
    assert not missing, f"history shows #{seqs[0]}..#{seqs[-1]} but not {len(missing)} of them: " \
                        f"#{missing[0]}..#{missing[-1]}"
