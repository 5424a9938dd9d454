"""Faults: a worker or a reader SIGKILLed mid-way loses nothing that was journaled."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from conftest import Launcher, check_order

VI = 'INSTANCE "VI_1" {} 100'


def _wait_for(predicate, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _worker_pid(launcher: Launcher) -> int:
    return int((launcher.state / "worker.pid").read_text().split()[0])


@pytest.mark.parametrize("policy", ["rerun", "skip"])
def test_worker_killed_mid_action_is_recovered_by_policy(launcher: Launcher, policy: str) -> None:
    ini = launcher.dir / "x.ini"
    ini.write_text(f"[launcher]\non_crash = {policy}\n")
    launcher.sleep_on("MASTER", 30)
    k = launcher.keepalived("--config", str(ini))
    k.start()
    k.write(VI.format("MASTER"))
    _wait_for(lambda: launcher.records())
    action_pid = [p for p in psutil.Process(_worker_pid(launcher)).children()][0].pid
    dead = _worker_pid(launcher)
    os.kill(dead, signal.SIGKILL)
    launcher.sleep_on("nothing", 0)
    k.write(VI.format("BACKUP"))  # the next event brings a new worker, which recovers #1 first
    launcher.settle(2)
    k.stop([])
    assert not psutil.pid_exists(action_pid) or psutil.Process(action_pid).status() == psutil.STATUS_ZOMBIE
    states = [(r[0], r[1]) for r in launcher.records()]
    if policy == "rerun":
        assert states == [("start", "1"), ("start", "1"), ("end", "1"), ("start", "2"), ("end", "2")]
    else:
        assert states == [("start", "1"), ("start", "2"), ("end", "2")]
    log = launcher.log_text()
    assert f"worker pid {dead} died while this event's action (pid {action_pid}) ran; policy on_crash={policy}" in log
    assert f"ending the dead worker's action pid {action_pid}" in log


def test_reader_killed_mid_burst_journaled_events_all_run(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    journal_path = launcher.state / "journal"
    for i in range(3000):
        k.write(f'INSTANCE "VI_{i % 5}" {"MASTER" if i % 2 else "BACKUP"} 100')
        if journal_path.exists() and journal_path.read_bytes().count(b"\n") > 100:
            break
    assert k.proc is not None
    os.kill(k.proc.pid, signal.SIGKILL)
    k.proc.wait()
    journal = journal_path.read_bytes().count(b"\n")
    launcher.settle(journal)
    started, problems = check_order(launcher.records())
    assert problems == 0 and started == list(range(1, journal + 1))
    assert journal > 100


def test_worker_killed_with_no_further_event_is_noticed_by_the_reader(launcher: Launcher) -> None:
    launcher.sleep_on("MASTER", 30)
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    _wait_for(lambda: launcher.records())
    dead = _worker_pid(launcher)
    launcher.sleep_on("nothing", 0)
    os.kill(dead, signal.SIGKILL)
    _wait_for(lambda: len(launcher.records()) == 3)  # start 1 (killed), start 1 (rerun), end 1
    launcher.settle(1)
    k.stop([])
    assert [r[:2] for r in launcher.records()] == [["start", "1"], ["start", "1"], ["end", "1"]]
    log = launcher.log_text()
    assert f"worker pid {dead} died without finishing; starting another" in log
    assert f"worker pid {dead} died while this event's action" in log
