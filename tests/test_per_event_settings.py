"""Each event runs with the settings it was journaled under, its timeout, kill grace and on_failure
included: a reload changes what comes after it, never what came before.  Real readers, workers,
a real reload through the keepalived stand-in."""

from __future__ import annotations

import time
from pathlib import Path

from notify_launcher.progress import replay
from support import VI
from support.launcher import Launcher
from support.recorder import sleep_line


def _hook(path: Path, runs: Path) -> Path:
    path.write_text(f'#!/bin/sh\necho "{path.name} $NL_SEQ $NL_RESULT" >> {runs}\n')
    path.chmod(0o755)
    return path


def test_a_reload_changing_timeout_and_on_failure_leaves_events_journaled_before_it_alone(launcher: Launcher) -> None:
    """#2 is journaled under timeout 60 and on_failure `old`, then (while #1 holds the queue) a
    reload makes it timeout 1 and on_failure `new`.  #2's action runs longer than 1 s and exits 3:
    it is not killed, and `old` pages for it; #4, journaled after the reload, gets `new`."""
    runs = launcher.dir / "runs"
    old, new = _hook(launcher.dir / "old", runs), _hook(launcher.dir / "new", runs)
    first, second = launcher.dir / "first", launcher.dir / "second"
    (launcher.dir / "sleeps").write_text(sleep_line("*", "BACKUP", 0, until=first)
                                         + sleep_line("*", "MASTER", 0, until=second))
    launcher.handler.write_text(launcher.handler.read_text().replace(
        'printf \'%s\\n\' "end', '[ "$3" = BACKUP ] || exit 3\nprintf \'%s\\n\' "end', 1))
    k = launcher.keepalived("--timeout", "60", "--on-failure", str(old))
    k.start()
    k.write(VI.format("BACKUP"))  # runs until `first` exists: the next event waits behind it
    launcher.wait_for("the BACKUP action", lambda: launcher.starts())
    k.write(VI.format("MASTER"))
    launcher.wait_for("the MASTER event journaled", lambda: launcher.last_seq() >= 2)
    k.script = launcher.argv("--timeout", "1", "--on-failure", str(new))  # keepalived.conf changed
    k.reload().join()
    launcher.wait_for("the new reader's settings", lambda: str(new) in (launcher.state / "settings.json").read_text())
    first.touch()
    launcher.wait_for("the MASTER action", lambda: len(launcher.starts()) == 2)
    started = time.monotonic()
    # past the new timeout (a state of the clock, not a nap): #2 must still run, under its own 60 s
    launcher.wait_for("the new timeout to pass", lambda: time.monotonic() > started + 2)
    second.touch()
    k.write(VI.format("FAULT"))  # #4 (#3: the old reader's RELOAD), under the new settings: exits 3 at once
    launcher.settle(4)
    k.stop([])
    ends = {e["seq"]: e["result"] for e in replay(str(launcher.state / "progress"), keep_ends=10).ends}
    assert ends[2] == "exit 3", ends
    assert runs.read_text().splitlines() == ["old 2 failed", "new 4 failed"]
