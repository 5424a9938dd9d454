"""The operator's commands: send, history, status --json, coalescing; real processes throughout."""

from __future__ import annotations

import json
import subprocess

from conftest import LAUNCHER, Launcher, check_order

VI = 'INSTANCE "VI_1" {} 100'


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=60)


def test_send_through_fifo_and_state_dir_then_history(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    res = _run("send", "--fifo", str(launcher.fifo), VI.format("MASTER"))
    assert res.returncode == 0 and res.stdout.strip() == f"written to {launcher.fifo}"
    launcher.settle(1)
    k.stop([])
    launcher.settle(2)  # + the reader's own STOP
    # keepalived is down now: --state-dir still reaches a worker
    res = _run("send", "--state-dir", str(launcher.state), VI.format("BACKUP"))
    assert res.returncode == 0 and res.stdout.strip() == "journaled as #3"
    launcher.settle(3)
    assert [r[1:5] for r in launcher.records() if r[0] == "start"] == [
        ["1", "INSTANCE", "VI_1", "MASTER"], ["3", "INSTANCE", "VI_1", "BACKUP"]]
    hist = _run("history", "--state-dir", str(launcher.state), "-n", "2")
    assert hist.returncode == 0
    lines = hist.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "FINISHED", "EVENT", "RESULT", "DURATION"]
    assert lines[1].split()[0] == "2" and "READER reader STOP" in lines[1] and "no action" in lines[1]
    assert lines[2].split()[0] == "3" and 'INSTANCE "VI_1" BACKUP 100' in lines[2] and "exit 0" in lines[2]
    data = json.loads(_run("history", "--state-dir", str(launcher.state), "--json").stdout)
    assert [r["seq"] for r in data] == [1, 2, 3]


def test_send_errors_are_clear(launcher: Launcher) -> None:
    launcher.fifo.parent.mkdir(exist_ok=True)
    import os
    os.mkfifo(launcher.fifo)
    res = _run("send", "--fifo", str(launcher.fifo), VI.format("MASTER"))
    assert res.returncode == 3
    assert "no reader has it open" in res.stderr
    res = _run("send", "--state-dir", str(launcher.state), 'INSTANCE "VI_1" SLEEPY 1')
    assert res.returncode == 3 and "not an event keepalived writes: unknown state 'SLEEPY'" in res.stderr


def test_coalescing_runs_only_the_newest_pending_event_per_instance(launcher: Launcher) -> None:
    ini = launcher.dir / "x.ini"
    ini.write_text("[launcher]\ncoalesce = yes\n")
    launcher.sleep_on("FAULT", 1)
    k = launcher.keepalived("--config", str(ini))
    k.start()
    k.write(VI.format("FAULT"))  # runs 1 s; meanwhile three more VI_1 events and one VI_2 queue up
    launcher.wait_started()
    import time
    time.sleep(0.3)
    for line in (VI.format("BACKUP"), 'INSTANCE "VI_2" BACKUP 50', VI.format("MASTER"), VI.format("BACKUP")):
        k.write(line)
    launcher.settle(5)
    k.stop([])
    started, problems = check_order(launcher.records())
    assert problems == 0 and started == [1, 3, 5]
    log = launcher.log_text()
    assert '#2 INSTANCE "VI_1" BACKUP 100 | skipped: superseded by #5 (coalesce = yes)' in log
    assert '#4 INSTANCE "VI_1" MASTER 100 | skipped: superseded by #5 (coalesce = yes)' in log
    status = json.loads(_run("status", "--state-dir", str(launcher.state), "--json").stdout)
    assert status["instances"]["INSTANCE VI_1"]["state"] == "BACKUP"
    assert status["instances"]["INSTANCE VI_2"]["result"] == "exit 0"
    assert status["pending"] == [] and status["running"] is None


def test_every_command_has_help_with_an_example_and_version() -> None:
    for command in ([], ["serve"], ["check-config"], ["send"], ["status"], ["history"], ["wait"]):
        res = _run(*command, "--help")
        assert res.returncode == 0, command
        assert "example" in res.stdout.lower() or "keepalived.conf:" in res.stdout, command
        assert "default" in res.stdout or command in (["send"], ["check-config"]), command
    res = _run("--version")
    assert res.returncode == 0 and res.stdout.startswith("notify-launcher ")


def test_usage_error_exit_code_is_2() -> None:
    assert _run("--timeout", "soon", "/nonexistent.fifo").returncode == 2
    assert _run("wait", "--timeout", "x").returncode == 2


def test_wait_times_out_with_exit_1_while_an_action_runs(launcher: Launcher) -> None:
    launcher.sleep_on("MASTER", 5)
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_started()
    import time
    deadline = time.monotonic() + 10
    while not launcher.records():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    res = _run("wait", "--state-dir", str(launcher.state), "--timeout", "0.5")
    assert res.returncode == 1 and "still busy after 0.5s" in res.stderr
    status = _run("status", "--state-dir", str(launcher.state))
    assert 'running: #1 INSTANCE "VI_1" MASTER 100  action pid' in status.stdout
    launcher.settle(1)
    k.stop([])
