"""The launcher under a REAL systemd: Debian bookworm booted in systemd-nspawn (tests/support/systemd/).

Debian's keepalived.service sets no KillMode (docs/keepalived.md), so `systemctl stop keepalived` kills every
process in keepalived's cgroup -- a double-forked worker and its action too.  Each test boots a
fresh container (overlay on a cached root file system), runs one scenario of
tests/support/systemd/scenario.sh with Debian's unchanged keepalived 2.2.7 and systemd 252, and checks what
the handler itself recorded:

  (a) stop-auto      default settings: the actions outlive `systemctl stop keepalived`, and the
                     worker ran as a transient systemd unit;
  (b) stop-daemon    `detach = daemon`: the same stop kills the running action (why (a) matters);
  (c) serve-restart  `notify-launcher serve` as its own unit survives `systemctl restart keepalived`
                     and runs the events of both keepalived runs in order;
  (d) latency        (benchmarks/systemd_states.py's scenario, short) lines written straight into
                     keepalived's FIFO run once each, in order, with the launcher (by its standby unit,
                     never replaced while they come) and with the shell reader as notify_fifo_script.

Root with debootstrap and systemd-nspawn (apt-get install debootstrap systemd-container); the first
run builds the cached root (/var/cache/notify-launcher-test, about a minute, needs the Debian
mirror and PyPI).  Elsewhere these tests skip; under CI=true a missing prerequisite fails them.
Timelines are printed as `TIMING` blocks (visible without -s).  Run one scenario by hand, with its
full diagnostics: `PYTHONPATH=tests .venv/bin/python -m support.systemd.harness -v stop-daemon`.

NL_SYSTEMD_SOURCE=DIR installs another checkout (an older commit, say) instead of this one; see
tests/support/systemd/harness.py.
"""

from __future__ import annotations

import re

import pytest

from support.recorder import Action
from support.systemd import cells, harness, latency, testing
from support.systemd.harness import Result

SOURCE = harness.default_source()  # the checkout installed into the container
KEEPALIVED_UNIT = "/system.slice/keepalived.service"
SLOW = 10.0  # seconds the MASTER action takes in the stop scenarios (scenario.sh; the STOP action: 3 s)


def timing(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print("\nTIMING " + text)


@pytest.fixture(scope="module")
def systemd_base(request: pytest.FixtureRequest) -> None:
    """The default cell's (bookworm, venv) cached root file system and wheels, built on the first run."""
    testing.prepare(request, cells.DEFAULT, SOURCE, "systemd harness")


def run(scenario: str, capsys: pytest.CaptureFixture[str]) -> Result:
    res = testing.run(scenario, cells.DEFAULT, SOURCE)
    timing(capsys, res.report())
    assert res.done, f"the scenario did not finish\n{res.diagnostics()}"
    return res


def debian_keepalived(res: Result) -> None:
    """keepalived ran from Debian's own, unchanged unit: no KillMode, so control-group."""
    facts = res.facts
    assert facts.get("keepalived_package_modified") == "0", f"keepalived's packaged files changed\n{res.text('facts')}"
    assert facts.get("keepalived_killmode") == "control-group", res.diagnostics()
    assert "KillMode" not in res.text("keepalived.service.txt"), res.text("keepalived.service.txt")


def the(res: Result, state: str, nth: int = 1) -> Action:
    found = [a for a in res.actions if a.state == state]
    assert len(found) >= nth, f"no {state} action #{nth}\n{res.diagnostics()}"
    return found[nth - 1]


def stop_timeline(res: Result, master: Action) -> tuple[float, float]:
    """(stop_begin, stop_end), checking the stop came while the MASTER action ran."""
    marks = res.timeline
    begin, end = marks["stop_begin"], marks["stop_end"]
    assert master.start < begin, f"the stop came before the MASTER action started\n{res.report()}"
    assert master.end is None or begin < master.end, f"the MASTER action had ended before the stop\n{res.report()}"
    assert begin <= end, res.report()
    return begin, end


def test_stop_auto_actions_outlive_systemctl_stop(systemd_base: None, capsys: pytest.CaptureFixture[str]) -> None:
    """(a) default settings: `systemctl stop keepalived` while MASTER's 10 s action runs; the action
    and the STOP action after it run to their end, in a transient unit of their own."""
    res = run("stop-auto", capsys)
    debian_keepalived(res)
    master, stop = the(res, "MASTER"), the(res, "STOP")
    begin, end = stop_timeline(res, master)
    assert res.facts.get("keepalived_active") == "inactive", res.diagnostics()

    assert master.end is not None and master.signal is None, f"the MASTER action was killed\n{res.diagnostics()}"
    assert master.end - master.start >= SLOW - 0.1, res.report()
    assert master.end > end, "the action should outlive keepalived's stop"
    assert stop.end is not None and stop.signal is None, f"the STOP action was killed\n{res.diagnostics()}"
    assert master.end <= stop.start, f"STOP started before MASTER ended\n{res.report()}"
    assert [a.state for a in res.actions] == ["BACKUP", "MASTER", "STOP"], res.report()

    for a in res.actions:
        assert re.fullmatch(r"/system\.slice/notify-launcher-worker-[\w.-]+\.service", a.unit), \
            f"{a} ran in {a.cgroup!r}, not in a transient worker unit\n{res.diagnostics()}"
    assert res.facts.get("worker_units_delegate", "").split() == ["yes"], \
        f"the worker's unit makes sub-cgroups without Delegate=yes\n{res.diagnostics()}"
    log = res.text("launcher.log")
    assert re.search(r"worker started \(detached: systemd unit notify-launcher-worker-\S+\.service", log), \
        f"the worker log does not show the systemd path\n{res.diagnostics()}"
    for a in (master, stop):
        assert re.search(rf"#{a.seq} INSTANCE \"VI_1\" {a.state} \d+ \| action ended: exit 0 after", log), res.diagnostics()
    timing(capsys, f"stop-auto: systemctl stop keepalived {end - begin:.3f} s; stop -> MASTER action end "
                   f"{master.end - begin:.3f} s; stop -> STOP action end {stop.end - begin:.3f} s")


def test_stop_daemon_action_killed_by_systemctl_stop(systemd_base: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """(b) `detach = daemon`: the double-forked worker is still in keepalived's cgroup, so the same
    stop kills the MASTER action half-way (and the STOP action): the reason for (a)."""
    res = run("stop-daemon", capsys)
    debian_keepalived(res)
    master = the(res, "MASTER")
    begin, end = stop_timeline(res, master)
    marks = res.timeline

    log = res.text("launcher.log")
    assert "worker started (detached: own session" in log, f"not the double-fork path\n{res.diagnostics()}"
    assert master.unit == KEEPALIVED_UNIT, f"the action ran in {master.cgroup!r}\n{res.diagnostics()}"
    assert marks["settled"] - master.start >= SLOW + 1, f"did not wait long enough to see the end\n{res.report()}"
    assert master.end is None, f"the MASTER action was not killed\n{res.diagnostics()}"
    assert not [a for a in res.actions if a.end is not None and a.end > begin], \
        f"an action ended after the stop\n{res.report()}"
    assert res.facts.get("survivors_after_stop") == "0", \
        f"launcher or handler processes outlived the stop\n{res.diagnostics()}"
    assert not re.search(rf"#{master.seq} INSTANCE \"VI_1\" MASTER \d+ \| action ended: exit 0", log), log
    killed = f"SIGTERM {master.signal - begin:.3f} s after the stop began" if master.signal else "no SIGTERM seen (SIGKILL)"
    timing(capsys, f"stop-daemon: systemctl stop keepalived {end - begin:.3f} s; MASTER action (started "
                   f"{begin - master.start:.3f} s before the stop) got {killed}; never ended "
                   f"(watched until {marks['settled'] - master.start:.1f} s after its start)")


def test_serve_survives_keepalived_restart(systemd_base: None, capsys: pytest.CaptureFixture[str]) -> None:
    """(c) `notify-launcher serve --fifo` as its own unit: `systemctl restart keepalived` while the
    MASTER action runs; the same service process handles the events of both keepalived runs, in order."""
    res = run("serve-restart", capsys)
    facts, marks = res.facts, res.timeline
    assert facts.get("serve_active") == "active", res.diagnostics()
    assert facts.get("serve_pid_before") not in (None, "", "0"), res.diagnostics()
    assert facts.get("serve_pid_after") == facts.get("serve_pid_before"), f"the service was restarted\n{res.diagnostics()}"
    assert facts.get("serve_restarts") == "0", res.diagnostics()
    assert facts.get("keepalived_pid_after") not in (None, "", "0", facts.get("keepalived_pid_before")), \
        f"keepalived did not restart\n{res.text('facts')}"

    # The container's poweroff (after `settled`) stops the second keepalived run, whose STOP the
    # service rightly journals and runs (maybe cut short by the poweroff): only trailing STOPs
    # started after `settled` may follow the five actions this scenario is about.
    actions, after = res.actions[:5], res.actions[5:]
    assert [a.state for a in actions] == ["BACKUP", "MASTER", "STOP", "BACKUP", "MASTER"], \
        f"expected the first run's BACKUP, MASTER, STOP, then the second run's BACKUP, MASTER\n{res.diagnostics()}"
    assert [a.seq for a in actions] == [1, 2, 3, 4, 5], res.report()
    assert all(a.state == "STOP" and a.seq > 5 and a.start > marks["settled"] for a in after), \
        f"only the poweroff's STOP may follow the second MASTER\n{res.diagnostics()}"
    first_master = actions[1]
    assert first_master.start < marks["restart_begin"], f"the restart did not come mid-action\n{res.report()}"
    for a in actions:
        assert a.end is not None and a.signal is None, f"{a} did not run to its end\n{res.diagnostics()}"
    for prev, nxt in zip(actions, actions[1:], strict=False):
        assert prev.end is not None and prev.end <= nxt.start, f"{nxt} started before {prev} ended\n{res.report()}"
    log = res.text("launcher.log")
    for a in actions:
        assert re.search(rf"#{a.seq} INSTANCE \"VI_1\" {a.state} \d+ \| action ended: exit 0 after", log), res.diagnostics()
    last = actions[-1]
    assert first_master.end is not None and last.end is not None
    timing(capsys, f"serve-restart: systemctl restart keepalived {marks['restart_end'] - marks['restart_begin']:.3f} s; "
                   f"restart -> first MASTER action end {first_master.end - marks['restart_begin']:.3f} s; "
                   f"restart -> second MASTER action end {last.end - marks['restart_begin']:.3f} s")


def test_latency_lines_run_once_in_order_by_the_standby_unit(systemd_base: None,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """(d) scenario `latency`, short: lines written into keepalived's FIFO as keepalived writes them
    (one write each) with the launcher settled (its standby worker a transient unit), then with the
    shell reader as notify_fifo_script, then the launcher with linger = 1 and 2 s idle before each
    line: every line's action ran once, in the order written.  The launcher's ran in its standby
    unit, and no worker started while lines came: not even past linger, since a reader lives."""
    res = testing.run("latency", cells.DEFAULT, SOURCE, env={"LAT_EVENTS": "6", "LAT_IDLE_EVENTS": "2"})
    assert res.done, f"the scenario did not finish\n{res.diagnostics()}"
    debian_keepalived(res)
    phases, facts = latency.phases(res), res.facts
    assert {name: p.written for name, p in phases.items()} == \
        {"direct": 6, "alive": 6, "shell-alive": 6, "shell-idle": 2, "past-linger": 2}, res.diagnostics()
    for name, p in phases.items():
        assert (p.missing, p.twice, p.in_order) == (0, 0, True), \
            f"{name}: {p.missing} lines' actions missing, {p.twice} run twice, in order: {p.in_order}\n{res.diagnostics()}"
    for name in ("alive", "past-linger"):
        assert facts.get(f"workers_started_during_{name}") == "0", f"{name}: a worker started\n{res.diagnostics()}"
        units = {f"/system.slice/{u}" for u in facts.get(f"standby_{name}", "").split()}
        assert units, f"{name}: no standby unit before the lines\n{res.diagnostics()}"
        ran = [a for a in res.actions if a.name.strip('"') == f"LAT_{name}"]
        assert all(a.unit in units for a in ran), \
            f"{name}: actions outside the standby unit {units}: {[a.cgroup for a in ran]}\n{res.diagnostics()}"
    timing(capsys, "latency: median write -> action start " + ", ".join(
        f"{name} {p.median_ms:.2f} ms" for name, p in phases.items() if p.median_ms is not None)
        + " (a figure, not a check: benchmarks/systemd_states.py measures)")
