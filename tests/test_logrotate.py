"""The logrotate configuration the package installs (contrib/notify-launcher.logrotate, docs/operating.md's
snippet), run by the real logrotate while an action writes: nothing lost."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from support import ROOT, VI, fakeclock
from support.launcher import Launcher
from support.marks import needs

pytestmark = needs("logrotate (scripts/setup installs it)", shutil.which("logrotate") is not None)



def test_rotation_while_an_action_writes(launcher: Launcher) -> None:
    chatty = launcher.dir / "chatty.sh"
    chatty.write_text("#!/bin/sh\nfor i in $(seq 1 300); do echo \"line $i\"; sleep 0.005; done\n")
    chatty.chmod(0o755)
    launcher.handler = chatty
    conf = launcher.dir / "logrotate.conf"
    shipped = (ROOT / "contrib" / "notify-launcher.logrotate").read_text()
    assert shipped.startswith("/var/log/notify-launcher.log {")
    conf.write_text(shipped.replace("/var/log/notify-launcher.log", str(launcher.log), 1))
    k = launcher.keepalived()
    k.start()
    k.write('INSTANCE "VI_1" MASTER 100')
    launcher.wait_for("the action's 50th output line", lambda: "out: line 50" in launcher.log_text(), timeout=30)
    subprocess.run(["logrotate", "-f", "-s", str(launcher.dir / "lr.state"), str(conf)], check=True)
    launcher.settle(1)
    k.stop([])
    rotated = (launcher.dir / "launcher.log.1").read_text()
    current = launcher.log.read_text()
    lines = [int(n) for n in re.findall(r"out: line (\d+)", rotated + current)]
    assert lines == list(range(1, 301)), "lines lost or repeated across the rotation"
    assert "out: line 300" in current and "action ended: exit 0" in current  # the worker reopened the new file
    assert oct(os.stat(launcher.log).st_mode & 0o777) == "0o640"


@needs("libfaketime (scripts/setup installs faketime)", fakeclock.LIBFAKETIME is not None)
def test_a_rotation_is_followed_at_once_whatever_the_wall_clock_does(
        launcher: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby worker's wall clock steps back 2 h (NTP, a resumed VM); the log is then moved away
    and created anew, as logrotate does: the next event's lines, the worker's included, are in the
    new file.  (Lines written into a moved file are lost once logrotate compresses it.)"""
    clock = fakeclock.FakeClock(launcher.dir / "faketime")
    clock.start()
    for name, value in clock.env().items():
        monkeypatch.setenv(name, value)
    k = launcher.keepalived("--linger", "30")
    k.start()
    launcher.wait_standby()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    clock.step("-2h")
    rotated = launcher.dir / "launcher.log.1"
    os.rename(launcher.log, rotated)
    launcher.log.touch(mode=0o640)
    k.write(VI.format("MASTER"))
    launcher.settle(2)
    new = launcher.log_text()
    k.stop([])
    launcher.settle(3)
    assert re.search(r'#2 INSTANCE "VI_1" MASTER 100 \| action ended', new), (
        f"#2's worker lines went into the moved file:\n--- new:\n{new}\n--- moved (tail):\n{rotated.read_text()[-1500:]}")
