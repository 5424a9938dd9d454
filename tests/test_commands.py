"""Several commands per event, keepalived's argument conventions, and commands run as another user,
end to end through the keepalived stand-in: the real reader, worker and spawn."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import processes
from support.launcher import Launcher
from support.marks import needs

from notify_launcher import security
from notify_launcher.config import load

#: Prints who runs it, where, with which groups and arguments, and whether keepalived's
#: environment reached it; the launcher logs each line.
WHO = """#!/bin/bash
printf 'who %s %s %s cwd=%s home=%s secret=%s args=%s\\n' "$(id -u)" "$(id -g)" "$(id -G | tr ' ' ,)" "$PWD" \
"$HOME" "${KA_TEST_SECRET:-none}" "$*"
"""


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A root-owned directory every user can enter (pytest's own are 0700): a command run as nobody
    must be reachable by nobody, and safe for root all the same."""
    path = Path(tempfile.mkdtemp(prefix="nl-commands-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@needs("root (runs a command as nobody)", os.geteuid() == 0)
def test_each_command_runs_in_order_with_its_arguments_and_user(launcher: Launcher, public_dir: Path) -> None:
    who = public_dir / "who.sh"
    who.write_text(WHO)
    who.chmod(0o755)
    ini = launcher.dir / "nl.ini"
    ini.write_text(f"""
[match INSTANCE VI_1 MASTER]
handler = {who} state-script 'two words'
args = none
handler.2 = {who} generic
user.2 = nobody
group.2 = daemon
handler.3 = {who} third
user.3 = nobody
""")
    k = launcher.keepalived("--config", str(ini))
    os.environ["KA_TEST_SECRET"] = "keepalived-env"  # the stand-in's keepalived environment, inherited
    try:
        k.start()
    finally:
        del os.environ["KA_TEST_SECRET"]
    assert k.write('INSTANCE "VI_1" MASTER 100')
    launcher.settle(1)
    k.stop([])
    lines = [line.split("| out: ", 1)[1] for line in launcher.log_text().splitlines() if "| out: who " in line]
    assert lines == [
        "who 0 0 0 cwd=/ home=/root secret=keepalived-env args=state-script two words",
        "who 65534 1 1 cwd=/ home=/nonexistent secret=none args=generic INSTANCE VI_1 MASTER 100",
        "who 65534 65534 65534 cwd=/ home=/nonexistent secret=none args=third INSTANCE VI_1 MASTER 100",
    ], launcher.log_text()[-3000:]
    log = launcher.log_text()
    assert f"action started (2 of 3): {who} generic INSTANCE VI_1 MASTER 100 as nobody:daemon (pid" in log
    assert "action ended (3 of 3): exit 0" in log


@needs("root (runs a command as nobody)", os.geteuid() == 0)
def test_a_command_its_user_cannot_execute_fails_and_the_next_still_runs(launcher: Launcher,
                                                                         public_dir: Path) -> None:
    """keepalived disables a script its user cannot execute; the launcher says so for the event and
    runs the event's other commands, as keepalived runs its other scripts."""
    who = public_dir / "who.sh"
    who.write_text(WHO)
    who.chmod(0o700)  # root only
    ini = launcher.dir / "nl.ini"
    ini.write_text(f"[match * * BACKUP]\nhandler = {who} first\nuser = nobody\nhandler.2 = {who} second\n")
    k = launcher.keepalived("--config", str(ini))
    k.start()
    assert k.write('INSTANCE "VI_1" BACKUP 100')
    launcher.settle(1)
    k.stop([])
    log = launcher.log_text()
    assert f"action ended (1 of 2): could not start: {who}: Permission denied" in log
    assert "out: who 0 0 0 cwd=/ home=/root secret=none args=second INSTANCE VI_1 BACKUP 100" in log


@needs("root (the trust rule applies to root)", os.geteuid() == 0)
def test_a_command_run_as_its_owner_is_trusted_for_that_user_only(tmp_path: Path, public_dir: Path) -> None:
    """security.py's rule with the command's user: nobody may own what runs as nobody, not what runs
    as root."""
    script = public_dir / "mine.sh"
    script.write_text(WHO)
    script.chmod(0o755)
    os.chown(script, 65534, 65534)
    ini = tmp_path / "nl.ini"
    ini.write_text(f"[match * * MASTER]\nhandler = {script}\nuser = nobody\n")
    assert security.check(load(str(ini), {})) == []
    ini.write_text(f"[match * * MASTER]\nhandler = {script}\nhandler.2 = {script} as-root\n")
    assert security.check(load(str(ini), {})) == [
        f"[match * * MASTER] handler {script} is not safe for root: {script} belongs to uid 65534 (nobody), not root; "
        f"chown it to root, or choose a path only root can change",
        f"[match * * MASTER] handler.2 {script} is not safe for root: {script} belongs to uid 65534 (nobody), not "
        f"root; chown it to root, or choose a path only root can change"]


def test_repeat_skip_logs_a_state_its_last_completed_action_ran_for(launcher: Launcher) -> None:
    """keepalived re-sends BACKUP at a reload (its issue 1311): with `repeat = skip` the event is
    journaled and logged as skipped, not run -- also for a worker that starts after the first one
    left (the last completed state comes from the progress file)."""
    ini = launcher.dir / "nl.ini"
    ini.write_text("[match INSTANCE VI_1 *]\nrepeat = skip\n")
    k = launcher.keepalived("--config", str(ini))
    k.start()
    for state in ("BACKUP", "BACKUP", "MASTER", "MASTER", "BACKUP"):
        assert k.write(f'INSTANCE "VI_1" {state} 100')
    assert k.write('INSTANCE "VI_2" BACKUP 100')
    assert k.write('INSTANCE "VI_2" BACKUP 100')  # no rule says skip for VI_2: it runs again
    launcher.settle(7)
    worker = launcher.wait_standby()
    k.stop([])
    launcher.wait_for("the worker to leave (linger 1)", lambda: not processes.running(worker))
    k = launcher.keepalived("--config", str(ini))
    k.start()
    assert k.write('INSTANCE "VI_1" BACKUP 100')
    assert k.write('INSTANCE "VI_1" MASTER 100')
    launcher.settle(10)  # 8 is the first reader's STOP
    k.stop([])
    assert [(r.seq, r.args[1], r.args[2]) for r in launcher.starts()] == [
        (1, "VI_1", "BACKUP"), (3, "VI_1", "MASTER"), (5, "VI_1", "BACKUP"), (6, "VI_2", "BACKUP"),
        (7, "VI_2", "BACKUP"), (10, "VI_1", "MASTER")]
    log = launcher.log_text()
    for seq, state in ((2, "BACKUP"), (4, "MASTER"), (9, "BACKUP")):
        assert f'#{seq} INSTANCE "VI_1" {state} 100 | skipped: INSTANCE VI_1 is {state} already, as after its ' \
               f"last completed action (repeat = skip)" in log
