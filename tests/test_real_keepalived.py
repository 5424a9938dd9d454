"""The launcher under REAL keepalived 2.2.7: two VRRP nodes in network namespaces (tests/support/realka.py).

Root with keepalived and iproute2 installed; elsewhere these tests skip, but under CI=true a missing
prerequisite fails them.  Timings are printed as `TIMING ...` lines (visible without -s), never
asserted: that a reader left before keepalived's SIGKILL is read from what it did (it logged its
own exit and journaled its STOP: a reader SIGKILLed at +1 s could do neither), not from a clock.

keepalived's LVS checker needs IPVS for virtual servers, which these kernels lack (CONFIG_IP_VS is
not set), so VS/RS lines cannot come from a real keepalived here: the stand-in tests cover them.
With `--all` and no virtual_server the checker child runs all the same (test_lvs_*).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from notify_launcher.journal import Entry
from support import LAUNCHER, ROOT, processes
from support.invariants import check_run
from support.marks import unavailable
from support.realka import (FIFO_LINES, IFACE, KILL_AFTER, Cluster, Node, StopTiming, exit_time, ip_binary,
                            keepalived_binary, missing_prerequisite)

READER_EXIT = (r"reader\[{pid}\] INFO  #- - \| reader exiting \({why}; (\d+) lines read, (\d+) ms after SIGTERM\)")


def timing(capsys: pytest.CaptureFixture[str], scenario: str, **seconds: float | None) -> None:
    """Print the scenario's timings to the terminal, captured or not."""
    parts = [f"{k.replace('_', ' ')} {'-' if v is None else f'{v * 1000:.0f} ms'}" for k, v in seconds.items()]
    with capsys.disabled():
        print(f"\nTIMING {scenario}: " + ", ".join(parts))


def ran_in_journal_order(node: Node) -> None:
    """Every journaled keepalived event ran exactly once, in sequence order, one at a time, exit 0:
    checked once the launcher is idle, since keepalived may still write (a BACKUP node that saw no
    advert in time goes MASTER and back to BACKUP after its actions for BACKUP ran)."""
    node.wait_idle()
    problems = node.order_problems()
    assert not problems, f"{node.name}: " + "; ".join(problems) + "\n" + node.diagnostics()


def _what(entry: Entry) -> tuple[str, str, str]:
    """A journal entry's TYPE NAME STATE."""
    return entry.event.type, entry.event.name, entry.event.state


def left_in_order(node: Node, stop: StopTiming, why: str) -> int:
    """The reader keepalived signalled left by itself (not by keepalived's SIGKILL at +1 s): it is
    gone, it logged its own exit, and (when stopping) journaled its STOP last.  Returns the
    milliseconds from SIGTERM to its exit, as the reader itself logged them."""
    assert stop.reader_gone_after is not None, f"{node.name}'s reader still ran 10 s after SIGTERM\n{node.diagnostics()}"
    m = re.search(READER_EXIT.format(pid=stop.reader_pid, why=re.escape(why)), node.log_text())
    assert m, f"{node.name}'s reader did not log its own exit (killed?)\n{node.diagnostics()}"
    last = node.journal()[-1]
    assert last.reader_pid == stop.reader_pid and _what(last) == ("READER", "reader", "STOP"), \
        f"{node.name}'s reader did not journal its STOP last: {last}\n{node.diagnostics()}"
    return int(m.group(2))


def worker_of(node: Node, seq: int) -> int:
    m = re.search(rf"worker\[(\d+)\] INFO  #{seq} .* \| action started", node.log_text())
    assert m, f"{node.name}: no worker started #{seq}\n{node.diagnostics()}"
    return int(m.group(1))


def test_startup_node1_master_node2_backup_actions_in_keepalived_order(
        real_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str]) -> None:
    c = real_cluster()
    n1, n2 = c.nodes
    t0 = time.time()
    c.start()
    c.wait_settled()
    assert n1.has_vip() and not n2.has_vip(), c.diagnostics()
    assert n1.instance_states()[-1] == "MASTER" and n2.instance_states()[-1] == "BACKUP", c.diagnostics()
    for n in c.nodes:
        assert len(n.reader_pids()) == 1, n.diagnostics()
        ran_in_journal_order(n)  # journal order = FIFO order = keepalived's order
        # ... and the instance's actions follow the transitions keepalived itself logged
        assert n.instance_states() == n.keepalived_states(), n.diagnostics()
        # a sync group's line accompanies each of its instance's transitions
        groups = [a.state for a in n.actions() if a.type == "GROUP"]
        assert groups == n.instance_states(), n.diagnostics()
    master = next(a for a in n1.actions() if a.type == "INSTANCE" and a.state == "MASTER")
    timing(capsys, "startup", node1_keepalived_start_to_MASTER_action_start=master.start - n1.started_at,
           both_settled=time.time() - t0)


@pytest.mark.parametrize("respawn", [False, True], ids=["worker-standing-by", "worker-spawned-at-stop"])
def test_failover_sigterm_stop_action_outlives_keepalived(
        real_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str], respawn: bool) -> None:
    """SIGTERM to node1's keepalived: its reader catches the STOP lines and leaves well before the
    +1 s SIGKILL; the 3 s STOP action runs to its end, after keepalived is gone; node2 takes over.
    `respawn`: node1's standby worker is SIGKILLed just before, so the worker that runs the STOP
    action is spawned inside keepalived's kill window, and must escape it too."""
    c = real_cluster()
    n1, n2 = c.nodes
    keepalived_gone = n1.dir / "keepalived-gone"  # the STOP action ends only after keepalived is gone
    n1.sleep_on("INSTANCE", "STOP", 3, until=keepalived_gone)
    c.start()
    c.wait_settled()
    before = len(n1.actions())
    last_startup_seq = n1.actions()[-1].seq
    standby = worker_of(n1, last_startup_seq)
    if respawn:
        os.kill(standby, signal.SIGKILL)

    stop = n1.term()

    # keepalived's hard deadline: a reader still there at +1 s is SIGKILLed (and loses the STOP lines)
    reader_ms = left_in_order(n1, stop, "SIGTERM: keepalived is stopping")
    assert stop.keepalived_exit_after is not None and stop.keepalived_returncode == 0, n1.diagnostics()
    keepalived_gone.touch()

    n2.wait_for("node2's MASTER action", lambda: any(a.state == "MASTER" and a.start > stop.term_at
                                                     for a in n2.actions() if a.type == "INSTANCE"))
    n1.wait_for("node1's STOP actions to end", lambda: len(n1.actions()) >= before + 2
                and all(a.end is not None for a in n1.actions()))
    n1.wait_idle()
    n2.wait_idle()

    after = n1.actions()[before:]
    assert [(a.type, a.state) for a in after] == [("INSTANCE", "STOP"), ("GROUP", "STOP")], n1.diagnostics()
    stop_action = after[0]
    assert stop_action.end is not None and stop_action.end - stop_action.start >= 3.0, n1.diagnostics()
    assert re.search(rf'#{stop_action.seq} INSTANCE "VI_1" STOP 150 \| action ended: exit 0 after \d+\.\d+s',
                     n1.log_text()), n1.diagnostics()
    # it ran past keepalived's SIGKILL time, and past keepalived's own exit (it waited for it)
    assert stop_action.end > stop.term_at + KILL_AFTER
    assert stop_action.end > stop.term_at + stop.keepalived_exit_after
    worker = worker_of(n1, stop_action.seq)
    if respawn:
        assert worker != standby, "a worker spawned at the stop should have run the STOP action"
    else:
        assert worker == standby, "the standby worker should have run the STOP action"
    assert n2.has_vip(), n2.diagnostics()
    for n in c.nodes:
        ran_in_journal_order(n)

    master = next(a for a in n2.actions() if a.type == "INSTANCE" and a.state == "MASTER")
    timing(capsys, f"failover ({'worker spawned at stop' if respawn else 'worker standing by'})",
           TERM_to_reader_exit_logged=reader_ms / 1000, TERM_to_reader_process_gone=stop.reader_gone_after,
           TERM_to_keepalived_exit=stop.keepalived_exit_after, TERM_to_STOP_action_start=stop_action.start - stop.term_at,
           TERM_to_STOP_action_end=stop_action.end - stop.term_at,
           failover_TERM_to_node2_MASTER_action_start=master.start - stop.term_at)


def test_reload_during_long_action_new_reader_takes_over_numbering_intact(
        real_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str]) -> None:
    """SIGHUP to node1's keepalived while its 4 s MASTER action runs: the action is not killed; the
    old reader leaves on EOF; a new reader on a new FIFO takes over; one numbering across both."""
    c = real_cluster()
    n1, _ = c.nodes
    n1.sleep_on("INSTANCE", "MASTER", 4)
    c.start()

    def running_master() -> list[object]:
        return [a for a in n1.actions() if (a.type, a.state) == ("INSTANCE", "MASTER") and a.end is None]

    n1.wait_for("node1's MASTER action to run", running_master)
    old_inode = n1.fifo_inode()
    old_reader = n1.current_reader()
    t_hup = time.monotonic()
    hup_at = n1.hup()
    old_gone = exit_time(old_reader, t_hup, wait=30)
    assert old_gone is not None, f"the old reader still ran 30 s after SIGHUP\n{n1.diagnostics()}"
    n1.wait_for("a second reader", lambda: len(n1.reader_pids()) == 2)
    old_pid, new_pid = n1.reader_pids()
    assert old_pid == old_reader.pid
    assert n1.current_reader().pid == new_pid
    assert n1.fifo_inode() not in (None, old_inode), "keepalived should have made a new FIFO"
    assert re.search(READER_EXIT.format(pid=old_pid, why="SIGTERM then EOF: keepalived is reloading"),
                     n1.log_text()), n1.diagnostics()
    # fifo_write_vrrp_states_on_reload: keepalived 2.2.7 re-sends the sync group's state (not a
    # MASTER instance's) to the new reader
    n1.wait_for("the new reader's first event", lambda: any(e.reader_pid == new_pid for e in n1.journal()))
    new_started = re.search(rf"(\S+ \S+) reader\[{new_pid}\] INFO  #- - \| reader started", n1.log_text())
    assert new_started
    master = next(a for a in n1.actions() if (a.type, a.state) == ("INSTANCE", "MASTER"))
    assert master.end is None or master.end > hup_at, "the reload should have come while the action ran"

    stop = n1.term()
    assert stop.reader_pid == new_pid
    left_in_order(n1, stop, "SIGTERM: keepalived is stopping")
    n1.wait_for("all actions to end", lambda: all(a.end is not None for a in n1.actions())
                and n1.actions()[-1].state == "STOP")
    n1.wait_idle()

    # the long action was not killed by the reload: it ran its 4 s and exited 0
    master = next(a for a in n1.actions() if a.seq == master.seq)
    assert master.end is not None and master.end - master.start >= 4.0, n1.diagnostics()
    # one numbering across the two readers: the old reader's entries, its RELOAD, then the new one's
    journal = n1.journal()
    pids = [e.reader_pid for e in journal]
    split = pids.index(new_pid)
    assert set(pids[:split]) == {old_pid} and set(pids[split:]) == {new_pid}, journal
    assert _what(journal[split - 1]) == ("READER", "reader", "RELOAD")
    assert _what(journal[-1]) == ("READER", "reader", "STOP")
    assert [_what(e) for e in journal[split:-1]] == [("GROUP", "G1", "MASTER"), ("INSTANCE", "VI_1", "STOP"),
                                                     ("GROUP", "G1", "STOP")], journal
    ran_in_journal_order(n1)
    seqs = [a.seq for a in n1.actions()]
    assert len(seqs) == len(set(seqs))
    timing(capsys, "reload", HUP_to_old_reader_gone=old_gone,
           HUP_to_new_reader_started=_wall(new_started.group(1)) - hup_at,
           HUP_to_long_action_end=master.end - hup_at, TERM_to_reader_gone=stop.reader_gone_after)


def _wall(stamp: str) -> float:
    """The launcher log's local time with milliseconds -> epoch seconds."""
    base, ms = stamp.rsplit(".", 1)
    return time.mktime(time.strptime(base, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000


# --- keepalived.conf.example -------------------------------------------------------------------


def adapted_example(node: Node) -> str:
    """keepalived.conf.example with only the interface name and the paths changed for `node`."""
    text = (ROOT / "keepalived.conf.example").read_text()
    for pattern, value in ((r"^(\s*interface\s+)\S+", IFACE), (r"^(\s*notify_fifo\s+)\S+", str(node.fifo)),
                           (r'^(\s*notify_fifo_script\s+")[^\s"]+', str(LAUNCHER)),
                           (r'^(\s*notify_fifo_script\s+"[^"]*--config\s+)[^\s"]+', str(node.ini))):
        text, count = re.subn(pattern, lambda m, value=value: m.group(1) + value, text, flags=re.M)
        assert count >= 1, f"keepalived.conf.example has no line matching {pattern!r} to adapt"
    return text


def test_example_config_passes_keepalived_config_test(real_cluster: Callable[..., Cluster]) -> None:
    n1 = real_cluster().nodes[0]
    conf = n1.dir / "example.conf"
    conf.write_text(adapted_example(n1))
    res = subprocess.run([ip_binary() or "ip", "netns", "exec", n1.ns, keepalived_binary() or "keepalived",
                          "-t", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    said = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    # keepalived -t exits 5 on any warning (a one-member vrrp_sync_group is one): the example has none
    assert res.returncode == 0, f"keepalived -t -f {conf} exited {res.returncode}:\n" + "\n".join(said)


def test_example_config_keeps_a_reader_across_reload(real_cluster: Callable[..., Cluster]) -> None:
    """The example as a user copies it, run for real: after a reload a new reader must take over."""
    c = real_cluster()
    n1 = c.nodes[0]
    n1.conf.write_text(adapted_example(n1))
    c.start([n1])
    n1.wait_for("node1's MASTER action", lambda: n1.instance_states()[-1:] == ["MASTER"])
    n1.hup()
    # keepalived 2.2.7 drops notify_fifo at a reload when the example gives it no user (it looks up
    # `keepalived_script` again, under enable_script_security): the example says `root`.
    n1.wait_for("a new reader after the reload", lambda: len(n1.reader_pids()) == 2)
    stop = n1.term()
    left_in_order(n1, stop, "SIGTERM: keepalived is stopping")
    n1.wait_for("node1's STOP action", lambda: n1.instance_states()[-1:] == ["STOP"])
    n1.wait_idle()
    ran_in_journal_order(n1)


# --- benchmarks/failover.py -----------------------------------------------------------------------


def test_failover_benchmark_loses_no_event_with_either_reader() -> None:
    """One rep of the failover benchmark (the launcher with a worker alive and idle past linger, the
    shell reader right after an event and idle): every event keepalived logged ran once on both
    nodes, and node2's MASTER action started after keepalived wrote its line (the FIFO tap saw that
    write, not another)."""
    reason = missing_prerequisite()
    if reason is not None:
        unavailable(reason)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "failover.py"), "--reps", "1", "--json"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    assert res.returncode == 0, f"failover.py exited {res.returncode}:\n{res.stderr[-6000:]}"
    rep = json.loads(res.stdout)["reps"][0]
    for case in ("alive", "idle", "shell", "shell_idle"):
        r = rep[case]
        assert (r["lost"], r["extra"]) == (0, 0), f"{case}: {r}\n{res.stderr[-6000:]}"
        assert r["keepalived_ms"] > 0 and r["reader_ms"] > 0, f"{case}: the action started before the write: {r}"


def _reader_events(node: Node) -> list[str]:
    """The READER events node's readers journaled, in order (RELOAD, STOP, EOF)."""
    return re.findall(r"#\d+ READER reader (\w+) \| received", node.log_text())


def _reader_other_than(node: Node, pid: int) -> bool:
    """A live reader other than `pid` (False also while there is none: between two readers)."""
    try:
        return node.current_reader().pid != pid
    except AssertionError:
        return False


def _respawned_checker(node: Node, old: int) -> int:
    """Wait until keepalived started its checker child again (it writes its pid file); its pid."""
    def new_checker() -> bool:
        try:
            pid = node.child_pid("checker")
        except (OSError, ValueError):
            return False
        return pid != old and os.path.exists(f"/proc/{pid}")
    node.wait_for("keepalived to start its checker again", new_checker)
    return node.child_pid("checker")


@pytest.mark.parametrize("form", ["vrrp+lvs", "global"])
def test_lvs_checker_restart_reload_stop(real_cluster: Callable[..., Cluster], form: str) -> None:
    """keepalived with its checker child (`--all`: virtual_server blocks would need IPVS, which these
    kernels lack), the FIFO made before it starts (docs/keepalived.md, "LVS sites").  The README's
    form (vrrp_notify_fifo + lvs_notify_fifo on one path): the reader is the VRRP child's, and a
    checker SIGKILL (keepalived starts it again) does not touch it.  The global notify_fifo: the
    reader is the checker's, run under `sh -c` with no parent-death signal, so the checker's death
    tells it nothing; it sees it through a pidfd and leaves to the next reader as a RELOAD.  Then a
    reload (RELOAD once more) and a stop: exactly one STOP, every event run once, in order."""
    c = real_cluster(checker=True, fifo_form=form)
    n1, _ = c.nodes
    c.start()
    c.wait_settled()
    reader = n1.current_reader()
    owner = "vrrp" if form == "vrrp+lvs" else "checker"
    assert n1.child_pid(owner) in [p.pid for p in reader.parents()], n1.diagnostics()
    checker = n1.child_pid("checker")
    os.kill(checker, signal.SIGKILL)
    _respawned_checker(n1, checker)
    if form == "vrrp+lvs":
        n1.wait_idle()
        assert n1.current_reader().pid == reader.pid and _reader_events(n1) == [], n1.diagnostics()
    else:
        n1.wait_for("the old reader to leave as a RELOAD", lambda: _reader_events(n1) == ["RELOAD"])
        n1.wait_for("the next reader", lambda: _reader_other_than(n1, reader.pid))
        # Reload once it is up: a SIGHUP while it was still starting (~0.4 s after the respawn) left
        # it running unsignalled and started no other in 2 of 5 runs (keepalived's side; not pursued).
        nxt = n1.current_reader().pid
        n1.wait_for("the next reader to start", lambda: f"reader[{nxt}] INFO  #- - | reader started" in n1.log_text())
        assert "which started this reader, is gone while keepalived" in n1.log_text(), n1.diagnostics()
    reloads = len(_reader_events(n1)) + 1
    before = n1.current_reader().pid
    n1.hup()
    n1.wait_for("the reader of the reload", lambda: _reader_other_than(n1, before))
    n1.wait_for("the old reader's RELOAD", lambda: len(_reader_events(n1)) == reloads)
    n1.wait_idle()
    stop = n1.term()
    assert stop.reader_gone_after is not None, n1.diagnostics()
    n1.wait_idle()
    assert _reader_events(n1) == ["RELOAD"] * reloads + ["STOP"], n1.diagnostics()
    assert n1.instance_states()[-1] == "STOP", n1.diagnostics()
    ran_in_journal_order(n1)
    check_run(n1.state, n1.dir, n1.log, stops=1)


def _edit_script_line_and_reload(node: Node) -> int:
    """The operator adds `--log-level debug` to notify_fifo_script's line in keepalived.conf and
    reloads: returns the old reader's pid once the next reader runs and the old one is gone."""
    before = node.current_reader().pid
    script = " ".join(node.script_argv())
    text = node.conf.read_text()
    assert script in text
    node.conf.write_text(text.replace(script, script + " --log-level debug"))
    node.hup()
    node.wait_for("the reader of the reload", lambda: _reader_other_than(node, before))
    node.wait_for("the old reader gone", lambda: not processes.running(before))
    node.wait_idle()
    return before


def test_a_reload_with_an_edited_script_line_is_not_a_stop_on_a_surviving_fifo(
        real_cluster: Callable[..., Cluster]) -> None:
    """The README's LVS form (vrrp_notify_fifo + lvs_notify_fifo on one path, made before keepalived:
    the same inode across reloads): after an edit of the script line and a reload, the old reader
    gets SIGTERM and no EOF, and must take the new one (other options) for its next reader: READER
    reader RELOAD, not STOP (red team: STOP, so stop_action would run while keepalived runs on)."""
    c = real_cluster(checker=True, fifo_form="vrrp+lvs")
    n1, _ = c.nodes
    c.start()
    c.wait_settled()
    before = _edit_script_line_and_reload(n1)
    events = _reader_events(n1)
    assert events == ["RELOAD"], (events, [line for line in n1.log_text().splitlines() if f"reader[{before}]" in line][-3:])


def test_a_reload_with_an_edited_script_line_after_a_restart_is_not_a_stop(real_cluster: Callable[..., Cluster]) -> None:
    """The same on a plain VRRP-only site (global notify_fifo): keepalived 2.2.7 leaves its FIFO
    behind at exit (docs/keepalived.md "Shutdown"), so after a restart the FIFO exists when it loads
    and every reload keeps it: one STOP for the restart, then RELOAD for the edited reload."""
    c = real_cluster()
    n1, _ = c.nodes
    c.start()
    c.wait_settled()
    n1.term()
    n1.wait_idle()
    assert n1.fifo.exists(), "keepalived unlinked its FIFO at exit"
    n1.start()
    c.wait_settled()
    assert _reader_events(n1) == ["STOP"], _reader_events(n1)
    before = _edit_script_line_and_reload(n1)
    events = _reader_events(n1)
    assert events == ["STOP", "RELOAD"], (events, [line for line in n1.log_text().splitlines()
                                                   if f"reader[{before}]" in line][-2:])


def test_a_reload_that_moves_the_script_to_the_vrrp_child_is_not_a_stop(real_cluster: Callable[..., Cluster]) -> None:
    """An LVS site (keepalived --all) on the global notify_fifo, made before keepalived (the reader is
    the checker's), follows docs/keepalived.md "Recommended for LVS sites": it rewrites the lines to
    vrrp_notify_fifo + vrrp_notify_fifo_script + lvs_notify_fifo on the same path, and reloads.  The
    checker SIGTERMs its reader (no EOF: the FIFO survives), the VRRP child starts the next one: a
    reload, not a stop (red team: the next reader's starter was not ours, READER reader STOP)."""
    c = real_cluster(checker=True, fifo_form="global")
    n1, _ = c.nodes
    c.start()
    c.wait_settled()
    script = " ".join(n1.script_argv())
    text = n1.conf.read_text()
    old = FIFO_LINES["global"].format(fifo=n1.fifo, script=script)
    assert old in text
    n1.conf.write_text(text.replace(old, FIFO_LINES["vrrp+lvs"].format(fifo=n1.fifo, script=script)))
    n1.hup()
    n1.wait_for("the old reader's end", lambda: n1.log_text().count("| reader exiting") >= 1, timeout=30)
    n1.wait_for("a second reader", lambda: n1.log_text().count("| reader started") >= 2, timeout=30)
    n1.wait_idle()
    assert _reader_events(n1) == ["RELOAD"], [line for line in n1.log_text().splitlines()
                                              if "exiting" in line or "READER" in line or "started" in line]


def test_the_first_reload_of_two_readers_on_one_fifo_is_not_a_stop(real_cluster: Callable[..., Cluster]) -> None:
    """vrrp_notify_fifo P + script and lvs_notify_fifo P + lvs_notify_fifo_script (docs/keepalived.md
    "LVS sites": both children start a reader at start; from the first reload on only the VRRP child
    does, the checker logs "ignoring LVS FIFO script").  At that first reload the checker's reader
    gets SIGTERM and no EOF, and the next reader is the VRRP child's: a reload, not a stop (red team:
    READER reader STOP while keepalived ran on).  check-config flags the line; keepalived runs it."""
    c = real_cluster(checker=True, fifo_form="vrrp+lvs")
    n1, _ = c.nodes
    script = " ".join(n1.script_argv())
    text = n1.conf.read_text()
    old = f"lvs_notify_fifo {n1.fifo} root\n"
    assert old in text
    n1.conf.write_text(text.replace(old, old + f'    lvs_notify_fifo_script "{script}" root\n'))
    c.start()
    c.wait_settled()
    n1.wait_for("two readers", lambda: n1.log_text().count("| reader started") >= 2, timeout=30)
    n1.hup()
    n1.wait_for("both old readers' ends", lambda: n1.log_text().count("| reader exiting") >= 2, timeout=30)
    n1.wait_idle()
    assert "STOP" not in _reader_events(n1), _reader_events(n1)
