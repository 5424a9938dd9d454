"""End to end through the keepalived stand-in: real FIFO, real signals, real detached workers."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from support import LAUNCHER, VI, processes, recorder
from support.launcher import Launcher
from support.recorder import check_order

from notify_launcher.actions import RELEASED
from notify_launcher.fifo import RECHECK


def test_events_run_in_order_with_their_fields(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    for line in ('GROUP "G1" BACKUP 0', VI.format("BACKUP"), VI.format("MASTER"),
                 "RS [192.168.1.11]:tcp:0 FWM 7 DOWN"):
        assert k.write(line)
    launcher.settle(4)
    k.stop([])
    assert [[r.seq, *r.args] for r in launcher.starts()] == [
        [1, "GROUP", "G1", "BACKUP", "0"],
        [2, "INSTANCE", "VI_1", "BACKUP", "100"],
        [3, "INSTANCE", "VI_1", "MASTER", "100"],
        [4, "RS", "[192.168.1.11]:tcp:0", "DOWN", "0", "FWM", "7"],
    ]
    log = launcher.log_text()
    assert re.search(r'worker\[\d+\] INFO  #3 INSTANCE "VI_1" MASTER 100 \| action ended: exit 0', log)


def test_slow_action_survives_keepalived_stop_and_stop_lines_run(launcher: Launcher) -> None:
    """A 3 s action started before the stop completes; STOP lines written after SIGTERM run."""
    k = launcher.keepalived()
    k.start()
    launcher.sleep_on("MASTER", 3)
    k.write(VI.format("MASTER"))
    launcher.wait_for("the MASTER action to start", launcher.records)
    report = k.stop([VI.format("STOP"), 'GROUP "G1" STOP 0'])
    assert not report.killed, "keepalived had to SIGKILL the reader"  # it left by itself, before +1 s
    launcher.settle(4)
    recs = launcher.records()
    started, problems = check_order(recs)
    assert started == [1, 2, 3] and problems == 0
    assert (recs[0].kind, recs[0].seq, recs[0].args[:3]) == ("start", 1, ["INSTANCE", "VI_1", "MASTER"])
    assert (recs[1].kind, recs[1].seq) == ("end", 1) and recs[1].time - recs[0].time >= 3.0
    assert [r.args[1:3] for r in recs if r.kind == "start"][1:] == [["VI_1", "STOP"], ["G1", "STOP"]]
    log = launcher.log_text()
    assert "SIGTERM: catching STOP lines" in log
    assert re.search(r"reader exiting \(SIGTERM: keepalived is stopping; \d+ lines read, \d+ ms after SIGTERM\)", log)


def test_reader_waits_full_grace_when_stop_lines_are_missing(launcher: Launcher) -> None:
    k = launcher.keepalived("--stop-grace", "0.3")
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    report = k.stop([])  # VI_1 never reports STOP: the reader waits its grace, then leaves
    assert not report.killed  # left by itself, before keepalived's SIGKILL (+1 s)
    assert report.exit_after >= 0.3
    m = re.search(r"reader exiting \(SIGTERM: keepalived is stopping; \d+ lines read, (\d+) ms after SIGTERM\)",
                  launcher.log_text())
    assert m and int(m.group(1)) >= 300, launcher.log_text()


def test_burst_of_2000_events_nothing_lost_in_order_no_overlap(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    lines = []
    for i in range(2000):
        state = "MASTER" if (i // 10) % 2 else "BACKUP"
        lines.append(f'INSTANCE "VI_{i % 10}" {state} {100 + i % 10}')
    counts: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            counts.append(len(launcher.launcher_processes()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for line in lines:
            k.write(line)
        assert k.dropped == 0
        launcher.settle(2000, timeout=300)
    finally:
        done.set()
        sampler.join()
    report = k.stop([])
    assert not report.killed
    launcher.settle(2001)  # + the reader's own STOP: `status` below counts it finished
    started, problems = check_order(launcher.records())
    assert problems == 0
    assert started == list(range(1, 2001))
    got = [" ".join(r.args[:4]) for r in launcher.starts()]
    assert got == [line.replace('"', "") for line in lines]
    assert 2 <= max(counts) <= 3, f"{max(counts)} launcher processes at the burst's peak"
    log = launcher.log_text()
    assert "journal compacted" in log and "progress compacted" in log  # /run is RAM: it must not grow
    status = subprocess.run([LAUNCHER, "status", "--state-dir", str(launcher.state)], capture_output=True, text=True)
    assert "2001 journaled, 2001 finished, 0 pending" in status.stdout, status.stdout
    assert (launcher.state).stat().st_mode & 0o777 == 0o700


def test_bad_line_is_logged_and_skipped_and_the_next_runs(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    k.write_raw(b'INSTANCE "VI_1\0" MASTER 100\n\xff\xfe garbage\n\0\0\n' + b"x" * 100_000 + b"\n")
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    k.stop([])
    assert [(r.seq, r.args[:3]) for r in launcher.starts()] == [(1, ["INSTANCE", "VI_1", "MASTER"])]
    log = launcher.log_text()
    assert "line 1 rejected (control character 0x00 at character 14" in log
    assert "line 2 rejected (not UTF-8 (byte 0))" in log
    assert "line 3 rejected (empty line)" in log
    assert "line 4 rejected (line longer than 4096 bytes)" in log


def test_timeout_ends_the_whole_tree_and_the_next_event_runs(launcher: Launcher, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pids = tmp_path / "pids"
    launcher.handler = recorder.install(tmp_path / "hang.sh", records=launcher.rec, then=f"""
if [ "$3" = MASTER ]; then
    sleep 300 & echo $! >> {pids}
    setsid sh -c 'sleep 301 & echo $! >> {pids}; sleep 302' &
    sh -c 'sleep 303 & echo $! >> {pids}' &
    sleep 304
fi""")
    k = launcher.keepalived("--timeout", "1")
    k.start()
    k.write(VI.format("MASTER"))
    k.write(VI.format("BACKUP"))
    launcher.settle(2)
    k.stop([])
    # MASTER (#1) hung until the timeout ended it; BACKUP (#2) ran to its end
    assert [(r.kind, r.seq) for r in launcher.records()] == [("start", 1), ("start", 2), ("end", 2)]
    spawned = [int(p) for p in pids.read_text().split()]
    assert len(spawned) == 3

    def alive() -> list[int]:
        return [p for p in spawned if processes.running(p)]

    launcher.wait_for("the timed-out action's whole tree to be gone", lambda: not alive())
    log = launcher.log_text()
    assert "timeout of 1s reached; ending the action's process tree" in log
    assert '#1 INSTANCE "VI_1" MASTER 100 | action ended: timed out, ' in log  # exit 143 or SIGTERM: sh's choice
    assert re.search(r"sent SIGTERM to \d+, .*\d+ \(sleep 30[0-4]\)", log)  # the action first, then the rest


def test_action_exit_codes_and_signals_are_logged(launcher: Launcher, tmp_path) -> None:  # type: ignore[no-untyped-def]
    act = tmp_path / "act.sh"
    act.write_text('#!/bin/sh\necho "to stderr" >&2\ncase "$3" in MASTER) exit 3;; BACKUP) kill -9 $$;; esac\n')
    act.chmod(0o755)
    launcher.handler = act
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    k.write(VI.format("BACKUP"))
    k.write(VI.format("FAULT"))
    launcher.settle(3)
    k.stop([])
    launcher.settle(4)  # + the reader's own STOP: `status` below counts it finished
    log = launcher.log_text()
    assert '#1 INSTANCE "VI_1" MASTER 100 | err: to stderr' in log
    assert "#1 INSTANCE \"VI_1\" MASTER 100 | action ended: exit 3" in log
    assert "#2 INSTANCE \"VI_1\" BACKUP 100 | action ended: killed by SIGKILL" in log
    assert "#3 INSTANCE \"VI_1\" FAULT 100 | action ended: exit 0" in log
    status = subprocess.run([LAUNCHER, "status", "--state-dir", str(launcher.state)], capture_output=True, text=True)
    assert status.returncode == 0
    assert re.search(r"INSTANCE VI_1\s+FAULT\s+\S+ \S+\s+3  exit 0", status.stdout), status.stdout
    assert "4 journaled, 4 finished, 0 pending" in status.stdout


def test_reload_two_readers_keep_numbering_and_order(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    launcher.sleep_on("MASTER", 2)
    k.write(VI.format("MASTER"))
    launcher.wait_for("the 2 s MASTER action to start", launcher.records)  # the reload comes while it runs
    old = k.proc
    killer = k.reload()
    k.write(VI.format("BACKUP"))
    killer.join()
    assert old is not None and old.returncode == 0, "the old reader was killed instead of leaving on EOF"
    launcher.settle(3)
    k.stop([VI.format("STOP")])
    launcher.settle(5)
    started, problems = check_order(launcher.records())
    assert problems == 0
    states = [r.state for r in launcher.starts()]
    assert states == ["MASTER", "BACKUP", "STOP"]
    recs = launcher.records()
    assert (recs[1].kind, recs[1].seq) == ("end", 1)  # the long action was not killed by the reload
    assert "SIGTERM then EOF: keepalived is reloading" in launcher.log_text()


def test_reload_on_the_same_fifo_the_old_reader_leaves_it_to_the_next(launcher: Launcher) -> None:
    """keepalived may hand the next reader the very FIFO the old one reads (it survived, and
    keepalived holds it open): no EOF.  The old reader leaves as soon as the next reader exists and
    the FIFO is quiet, not after its stop grace beside the new one."""
    k = launcher.keepalived("--stop-grace", "0.9")
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    old = k.proc
    killer = k.reload(same_fifo=True)
    killer.join()
    assert old is not None and old.returncode == 0, "the old reader was killed"
    k.write(VI.format("BACKUP"))
    launcher.settle(3)
    k.stop([VI.format("STOP")])
    launcher.settle(5)
    log = launcher.log_text()
    assert "a reload; leaving the FIFO to it" in log, log[-2000:]
    assert [r.state for r in launcher.starts()] == ["MASTER", "BACKUP", "STOP"]
    assert log.count("READER reader RELOAD | received") == 1 and log.count("READER reader STOP | received") == 1


def test_fifo_missing_or_not_a_fifo_is_a_clear_error(launcher: Launcher) -> None:
    res = subprocess.run(launcher.argv(str(launcher.dir / "nope.fifo")), capture_output=True, text=True)
    assert res.returncode == 3
    assert "nope.fifo: No such file or directory" in res.stderr
    plain = launcher.dir / "plain"
    plain.write_text("")
    res = subprocess.run(launcher.argv(str(plain)), capture_output=True, text=True)
    assert res.returncode == 3
    assert "is not a FIFO" in res.stderr
    assert "is not a FIFO" in launcher.log_text()


@contextmanager
def _serving(launcher: Launcher) -> Iterator[None]:
    """`notify-launcher serve --fifo` on the setup's FIFO path for the block; then SIGTERM, on which it
    must exit 0."""
    argv = launcher.argv()
    proc = subprocess.Popen([argv[0], "serve", *argv[1:], "--fifo", str(launcher.fifo)])
    try:
        yield
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_service_mode_follows_the_fifo_across_keepalived_restarts(launcher: Launcher) -> None:
    """`serve --fifo`: started before keepalived, survives its restart (a new FIFO inode), in order."""
    with _serving(launcher):
        launcher.wait_started()  # the service runs before keepalived makes its FIFO
        for round_ in range(2):  # keepalived starts, writes, exits (closing and removing its FIFO)
            os.mkfifo(launcher.fifo, 0o600)
            fd = os.open(launcher.fifo, os.O_RDWR | os.O_NONBLOCK)
            os.write(fd, f'INSTANCE "VI_1" BACKUP 100\nINSTANCE "VI_1" MASTER {100 + round_}\n'.encode())
            launcher.settle(2 + 2 * round_)
            os.close(fd)
            os.unlink(launcher.fifo)
            launcher.wait_for(f"the service to see keepalived's run {round_ + 1} end",
                              lambda round_=round_: launcher.log_text().count("following it (restart or reload)") > round_)
    started, problems = check_order(launcher.records())
    assert started == [1, 2, 3, 4] and problems == 0
    assert [r.priority for r in launcher.starts()] == ["100", "100", "100", "101"]
    log = launcher.log_text()
    assert log.count("following it (restart or reload)") == 2
    assert "service mode: SIGTERM, exiting (4 lines read)" in log


def test_service_mode_says_once_that_the_fifo_path_is_no_fifo_and_when_it_is_one_again(launcher: Launcher) -> None:
    """`serve` looks at the path every RECHECK s while keepalived is silent: a plain file there must
    not write a line each time: one complaint for as long as the file stays, then it reads the FIFO
    made there."""
    launcher.fifo.write_text("")
    with _serving(launcher):
        launcher.wait_for("the complaint", lambda: "is not a FIFO" in launcher.log_text())
        time.sleep(3 * RECHECK)  # rechecks that must stay silent (a slower machine makes fewer, never more lines)
        launcher.fifo.unlink()
        os.mkfifo(launcher.fifo, 0o600)
        fd = os.open(launcher.fifo, os.O_RDWR | os.O_NONBLOCK)
        try:
            os.write(fd, b'INSTANCE "VI_1" MASTER 100\n')
            launcher.settle(1)
        finally:
            os.close(fd)
    log = launcher.log_text()
    assert log.count("is not a FIFO") == 1, log
    assert f"is not a FIFO (keepalived passes its notify_fifo path as the last argument); looking at it again every {RECHECK:g}s" in log
    assert log.index("is not a FIFO") < log.index(f"reading {launcher.fifo} (inode")
    assert [r.priority for r in launcher.starts()] == ["100"]


def test_the_next_action_runs_beside_what_a_finished_action_released(launcher: Launcher) -> None:
    """A background child left by an action that exited 0 is released (logged with its pid, moved
    out of the action's containment, not killed): the next action starts beside it, and the
    invariants checker (the fixture's teardown) counts that no overlap, as docs/invariants.md §2 says."""
    launcher.handler = recorder.install(launcher.dir / "handler2.sh", records=launcher.rec,
                                        then='[ "$3" = MASTER ] && { sleep 4 & }; true')
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    k.write(VI.format("BACKUP"))
    launcher.settle(2)
    k.stop([])
    launcher.settle(3)
    assert f"#1 INSTANCE \"VI_1\" MASTER 100 | {RELEASED}: " in launcher.log_text()
    assert [r.kind for r in launcher.records()].count("overlap") == 1  # the recorder saw #2 beside it


def test_background_process_left_by_a_finished_action_is_reported_not_killed(launcher: Launcher, tmp_path) -> None:  # type: ignore[no-untyped-def]
    act = tmp_path / "bg.sh"
    pidfile = tmp_path / "bg.pid"
    act.write_text(f"#!/bin/sh\nsetsid sleep 30 >/dev/null 2>&1 &\necho $! > {pidfile}\nexit 0\n")
    act.chmod(0o755)
    launcher.handler = act
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    k.stop([])
    bg = int(pidfile.read_text())
    try:
        assert processes.running(bg)
        assert f"{RELEASED}: {bg} (" in launcher.log_text()  # name: fork or exec
        assert "action ended: exit 0" in launcher.log_text()
    finally:
        os.kill(bg, 9)
